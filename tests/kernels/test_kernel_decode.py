"""The pair decode (pair_decode.py) gives q - z bit for bit: its pure-Triton twin everywhere (the Triton
interpreter on CPU), and on a CUDA GPU the inline-PTX path too, against the same plain-torch truth."""
import pytest
import torch
import triton
import triton.language as tl

from vlmq_gptqmodel.kernels import layout
from vlmq_gptqmodel.kernels.linear import kernels_unavailable_reason
from vlmq_gptqmodel.kernels.pair_decode import centered_pairs, zero_terms

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if kernels_unavailable_reason(DEVICE) is not None:
    pytest.skip(f"kernels cannot run: {kernels_unavailable_reason(DEVICE)}", allow_module_level=True)
WORDS = 256


@triton.jit
def _decode_kernel(words_ptr, zeros_ptr, out_ptr, FIELD: tl.constexpr, BITS: tl.constexpr, IS_BF16: tl.constexpr,
                   ASM: tl.constexpr, N: tl.constexpr):
    offs = tl.arange(0, N)
    words = tl.load(words_ptr + offs).to(tl.uint32, bitcast=True)
    zero = tl.load(zeros_ptr + offs).to(tl.uint32)
    pairs = centered_pairs(words, zero_terms(zero, FIELD, BITS, IS_BF16), FIELD, BITS, IS_BF16, ASM)
    tl.store(out_ptr + offs, pairs.to(tl.int32, bitcast=True))


def decoded(words, zeros, field, bits, dtype, asm):
    out = torch.empty_like(words)
    _decode_kernel[(1,)](words, zeros, out, FIELD=field, BITS=bits, IS_BF16=dtype == torch.bfloat16, ASM=asm, N=WORDS)
    return out.cpu()


def expected(words, zeros, field, bits, dtype):
    """code - zero of field `field` of each half word, as the int32 of the two fp16/bf16 bit patterns."""
    unsigned = words.cpu().to(torch.int64) & 0xFFFFFFFF
    halves = [(((unsigned >> (layout.HALF_BITS * h + bits * field)) & ((1 << bits) - 1)) - zeros.cpu().long())
              .to(dtype).view(torch.int16).to(torch.int64) & 0xFFFF for h in (0, 1)]
    words = halves[0] | (halves[1] << 16)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def random_case(bits, seed):
    gen = torch.Generator().manual_seed(seed)
    words = torch.randint(-2**31, 2**31, (WORDS,), generator=gen, dtype=torch.int64).to(torch.int32)  # every bit set somewhere
    zeros = torch.randint(0, 1 << bits, (WORDS,), generator=gen, dtype=torch.uint8)
    return words.to(DEVICE), zeros.to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("bits", layout.SUPPORTED_BITS)
def test_twin_decodes_every_field_exactly(bits, dtype):
    words, zeros = random_case(bits, bits)
    for field in range(layout.fields_per_word(bits) // 2):
        assert torch.equal(decoded(words, zeros, field, bits, dtype, asm=False),
                           expected(words, zeros, field, bits, dtype)), field


@pytest.mark.skipif(DEVICE.type != "cuda", reason="inline PTX runs only compiled, on a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("bits", layout.SUPPORTED_BITS)
def test_inline_ptx_matches_its_twin_bit_for_bit(bits, dtype):
    words, zeros = random_case(bits, 10 + bits)
    for field in range(layout.fields_per_word(bits) // 2):
        twin = decoded(words, zeros, field, bits, dtype, asm=False)
        assert torch.equal(decoded(words, zeros, field, bits, dtype, asm=True), twin), field
        assert torch.equal(twin, expected(words, zeros, field, bits, dtype)), field
