"""Decode the two codes of a word's halves (layout.py) into a packed f16x2 / bf16x2 pair of q - z.

The exponent-bias trick: OR-ing a code q, at bit POS of a half word with POS + b <= MANT, into the bits
of 2**MANT (fp16: 0x6400 = 1024, MANT = 10; bf16: 0x4300 = 128, MANT = 7) gives the float
2**MANT + q * 2**POS with no int->float conversion, and one fused multiply-add,
    (2**MANT + q * 2**POS) * 2**-POS - (2**(MANT - POS) + z) = q - z,
gives the centered code exactly (a small integer). On the GPU both halves take one LOP3 and one
HFMA2 (inline PTX: on by default since an H200 run matched it to the twin bit for bit; VLMQ_KERNELS_ASM=0
turns it off). The
twin does the same bit operations in plain Triton and the FMA in fp32, where it is exact as well, so
both give the same bits; it is what the Triton interpreter runs. bf16 uses its own magic number rather
than decoding in fp16 and converting: that would cost an instruction per pair, the bf16 magic only a
few more shifts per word (7 mantissa bits hold fewer codes than 10).
"""
import os

import triton
import triton.language as tl


ASM_ENV = "VLMQ_KERNELS_ASM"
INTERPRETING = bool(triton.knobs.runtime.interpret)
# Fixed at import, like TRITON_INTERPRET: inline PTX cannot run in the interpreter. Checked against the twin,
# compiled, on an H200 (benchmarks/results/gpu/kernel_tests_asm.txt), so on unless the environment says "0".
USE_ASM = os.environ.get(ASM_ENV, "1") != "0" and not INTERPRETING


@triton.constexpr_function
def mantissa_bits(is_bf16):
    return 7 if is_bf16 else 10


@triton.constexpr_function
def exponent_bias(is_bf16):
    return 127 if is_bf16 else 15


@triton.constexpr_function
def field_shift(bits, field, is_bf16):
    """Right shift that brings field `field` of each half to bit field_pos: the codes that fit below the
    mantissa's top share one shift."""
    per_shift = mantissa_bits(is_bf16) // bits
    return bits * per_shift * (field // per_shift)


@triton.constexpr_function
def field_pos(bits, field, is_bf16):
    return bits * (field % (mantissa_bits(is_bf16) // bits))


@triton.constexpr_function
def both_halves(half):
    return half * 0x10001


@triton.constexpr_function
def magic(is_bf16):
    return both_halves((exponent_bias(is_bf16) + mantissa_bits(is_bf16)) << mantissa_bits(is_bf16))


@triton.constexpr_function
def power_of_two_bits(exponent, is_bf16):
    return (exponent_bias(is_bf16) + exponent) << mantissa_bits(is_bf16)


@triton.constexpr_function
def decode_asm(bits, field, is_bf16):
    """PTX for one word: t = (w & mask) | magic in one LOP3 (0xEA: a & b | c), then q - z = t * 2**-POS + c2."""
    pos = field_pos(bits, field, is_bf16)
    mask = both_halves(((1 << bits) - 1) << pos)
    scale = both_halves(power_of_two_bits(-pos, is_bf16))
    kind = "bf16x2" if is_bf16 else "f16x2"
    return ("{ .reg .b32 t, c; lop3.b32 t, $1, %d, %d, 0xea; mov.b32 c, %d; fma.rn.%s $0, t, c, $2; }"
            % (mask, magic(is_bf16), scale, kind))


@triton.jit
def half_to_float(half, IS_BF16: tl.constexpr):
    """fp32 value of the fp16/bf16 bit pattern in the low 16 bits of a uint32."""
    if IS_BF16:
        return (half << 16).to(tl.float32, bitcast=True)
    else:
        return half.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def float_to_half(value, IS_BF16: tl.constexpr):
    """uint32 holding the fp16/bf16 bits of `value` (fp32, exact in that type)."""
    if IS_BF16:
        return value.to(tl.uint32, bitcast=True) >> 16
    else:
        return value.to(tl.float16).to(tl.uint16, bitcast=True).to(tl.uint32)


@triton.jit
def zero_terms(zero, FIELD: tl.constexpr, BITS: tl.constexpr, IS_BF16: tl.constexpr):
    """-(2**(MANT - POS) + z) in both halves, built from integers: the exponent of 2**(MANT - POS), z at
    mantissa bit POS, the sign bit. zero: uint32."""
    POS: tl.constexpr = field_pos(BITS, FIELD, IS_BF16)
    TOP: tl.constexpr = power_of_two_bits(mantissa_bits(IS_BF16) - POS, IS_BF16) | 0x8000
    return zero * both_halves(1 << POS) + both_halves(TOP)


@triton.jit
def centered_pairs(words, c2, FIELD: tl.constexpr, BITS: tl.constexpr, IS_BF16: tl.constexpr, ASM: tl.constexpr):
    """q - z of field FIELD of both halves of every word (uint32), as f16x2/bf16x2 bits (uint32);
    c2 = zero_terms(...) broadcast to the words' shape."""
    SHIFT: tl.constexpr = field_shift(BITS, FIELD, IS_BF16)
    POS: tl.constexpr = field_pos(BITS, FIELD, IS_BF16)
    if SHIFT > 0:
        words = words >> SHIFT
    if ASM:
        return tl.inline_asm_elementwise(decode_asm(BITS, FIELD, IS_BF16), "=r,r,r", [words, c2], dtype=tl.uint32,
                                         is_pure=True, pack=1)
    else:
        MASK: tl.constexpr = both_halves(((1 << BITS) - 1) << POS)
        biased = (words & MASK) | magic(IS_BF16)
        lo = half_to_float(biased & 0xFFFF, IS_BF16) * (1.0 / (1 << POS)) + half_to_float(c2 & 0xFFFF, IS_BF16)
        hi = half_to_float(biased >> 16, IS_BF16) * (1.0 / (1 << POS)) + half_to_float(c2 >> 16, IS_BF16)
        return float_to_half(lo, IS_BF16) | (float_to_half(hi, IS_BF16) << 16)


@triton.jit
def interleave_halves(lo, hi):
    """[P, BLOCK_N] low and high halves -> [2P, BLOCK_N], word row p giving rows 2p and 2p + 1."""
    P: tl.constexpr = lo.shape[0]
    return tl.reshape(tl.permute(tl.join(lo, hi), (0, 2, 1)), (2 * P, lo.shape[1]))


@triton.jit
def pair_tile(pairs, IS_BF16: tl.constexpr, AS_FLOAT: tl.constexpr):
    """[2P, BLOCK_N] values of the [P, BLOCK_N] pairs: fp16/bf16, or fp32 with AS_FLOAT."""
    if AS_FLOAT:
        return interleave_halves(half_to_float(pairs & 0xFFFF, IS_BF16), half_to_float(pairs >> 16, IS_BF16))
    else:
        DTYPE: tl.constexpr = tl.bfloat16 if IS_BF16 else tl.float16
        return interleave_halves(pairs.to(tl.uint16).to(DTYPE, bitcast=True),
                                 (pairs >> 16).to(tl.uint16).to(DTYPE, bitcast=True))
