"""Triton device functions shared by the kernels: read one block of the kernel layout (layout.py).

A block is read piece by piece: a [P, BLOCK_N] tile of words, loaded once, holds F / 2 sub-tiles of 2P
consecutive rows, and each sub-tile decodes with one instruction pair per two weights into the exact
centered codes q - z (pair_decode.py). The scale stays out of the decode: the GEMV applies it once
per group to its fp32 accumulator, the tiled GEMM and the dequant kernel multiply in fp32, where
s * (q - z) is exact, and round once to the activation dtype.

Two Triton-interpreter (TRITON_INTERPRET=1) bugs are worked around: int32 -> bf16 bit-casts instead
of converting (codes become floats only through bit patterns here), and tl.dot multiplies bf16
operands as raw uint16 (`dot` upcasts to fp32 when interpreting; fp16/bf16 products are exact in fp32,
so the result equals a tensor-core dot with fp32 accumulation).
"""
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from . import layout
from .pair_decode import INTERPRETING, centered_pairs, pair_tile, zero_terms

if INTERPRETING and not isinstance(tl.zeros, InterpretedFunction):
    raise ImportError("TRITON_INTERPRET=1 was set after triton was imported, so triton.language itself is not "
                      "interpreted. Set it before importing torch-based packages that import triton (gptqmodel, "
                      "vlmq_gptqmodel), e.g. in the shell or at the top of conftest.py.")


@triton.constexpr_function
def block_rows(bits):
    return layout.BLOCK_ROWS[bits]


@triton.constexpr_function
def fields(bits):
    return layout.WORD_BITS // bits


pair_rows = triton.constexpr_function(layout.pair_rows)


@triton.constexpr_function
def subtiles_per_block(bits, group_size):
    return layout.BLOCK_ROWS[bits] // (2 * pair_rows(group_size))


@triton.constexpr_function
def group_span(group_size, bits):
    """Rows of one block that share a scale row: groups divide the block or cover whole blocks."""
    return min(group_size, layout.BLOCK_ROWS[bits])


@triton.jit
def load_piece(words_ptr, block, PIECE: tl.constexpr, offs_n, n_mask, N, K, BITS: tl.constexpr, P: tl.constexpr):
    """The [P, BLOCK_N] words of piece PIECE of `block`, read once; a piece holding only padding is not read."""
    rows = (block * (block_rows(BITS) // (P * fields(BITS))) + PIECE) * P + tl.arange(0, P)
    has_data = block * block_rows(BITS) + PIECE * P * fields(BITS) < K
    words = tl.load(words_ptr + rows[:, None] * N + offs_n[None, :], mask=n_mask[None, :] & has_data, other=0)
    return words.to(tl.uint32, bitcast=True)  # logical shifts from here on


@triton.jit
def load_group_params(scales_ptr, zeros_ptr, sorted_row, n_groups, offs_n, n_mask, N, GROUP_SIZE: tl.constexpr):
    """Scale s (fp32) and zero point z (uint32), [BLOCK_N] each, of the group holding `sorted_row`
    (padding rows clamp to the last group; their activations are zero)."""
    group = tl.minimum(sorted_row // GROUP_SIZE, n_groups - 1)
    scale = tl.load(scales_ptr + group * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    zero = tl.load(zeros_ptr + group * N + offs_n, mask=n_mask, other=0).to(tl.uint32)
    return scale, zero


@triton.jit
def next_subtile(words_ptr, scales_ptr, zeros_ptr, block, words, scale, zero, offs_n, n_mask, N, K, n_groups,
                 J: tl.constexpr, BITS: tl.constexpr, GROUP_SIZE: tl.constexpr):
    """First sorted row of sub-tile J of `block`, with the piece of words and the group's scale and zero
    point it needs: the piece is read at its first sub-tile and the group's row at its first, otherwise
    the values passed in are returned (so every word and scale is loaded once per block)."""
    P: tl.constexpr = pair_rows(GROUP_SIZE)
    PER_PIECE: tl.constexpr = fields(BITS) // 2
    row0 = block * block_rows(BITS) + J * 2 * P
    if J % PER_PIECE == 0:
        words = load_piece(words_ptr, block, J // PER_PIECE, offs_n, n_mask, N, K, BITS, P)
    if (J * 2 * P) % group_span(GROUP_SIZE, BITS) == 0:
        scale, zero = load_group_params(scales_ptr, zeros_ptr, row0, n_groups, offs_n, n_mask, N, GROUP_SIZE)
    return row0, words, scale, zero


@triton.jit
def empty_subtile_state(BLOCK_N: tl.constexpr, GROUP_SIZE: tl.constexpr):
    """Placeholders for next_subtile's carried values; sub-tile 0 always replaces them."""
    return (tl.zeros([pair_rows(GROUP_SIZE), BLOCK_N], dtype=tl.uint32), tl.zeros([BLOCK_N], dtype=tl.float32),
            tl.zeros([BLOCK_N], dtype=tl.uint32))


@triton.jit
def subtile_pairs(words, zero, J: tl.constexpr, BITS: tl.constexpr, IS_BF16: tl.constexpr, ASM: tl.constexpr):
    """q - z of sub-tile J (field J % (F / 2) of its piece's words) as [P, BLOCK_N] f16x2/bf16x2 pairs."""
    FIELD: tl.constexpr = J % (fields(BITS) // 2)
    return centered_pairs(words, zero_terms(zero, FIELD, BITS, IS_BF16)[None, :], FIELD, BITS, IS_BF16, ASM)


@triton.jit
def dequantized_subtile(words, scale, zero, J: tl.constexpr, BITS: tl.constexpr, ASM: tl.constexpr):
    """W.T sub-tile J, s * (q - z), exact in fp32 [2P, BLOCK_N] (decoded through fp16 pairs, whose
    7 mantissa bits more than bf16 take fewer shifts)."""
    centered = pair_tile(subtile_pairs(words, zero, J, BITS, False, ASM), False, True)
    return centered * scale[None, :]


@triton.jit
def _x_columns(perm_ptr, sorted_row0, K, ROWS: tl.constexpr, HAS_PERM: tl.constexpr):
    rows = sorted_row0 + tl.arange(0, ROWS)
    k_mask = rows < K
    if HAS_PERM:
        cols = tl.load(perm_ptr + rows, mask=k_mask, other=0)
    else:
        cols = rows
    return cols, k_mask


@triton.jit
def load_x_subtile(x_ptr, perm_ptr, offs_m, m_mask, sorted_row0, K, stride_xm, ROWS: tl.constexpr,
                   HAS_PERM: tl.constexpr):
    """Activations [BLOCK_M, ROWS] for ROWS sorted rows, in x's dtype; zero past K (the padding)."""
    cols, k_mask = _x_columns(perm_ptr, sorted_row0, K, ROWS, HAS_PERM)
    ptrs = x_ptr + offs_m[:, None] * stride_xm + cols[None, :]
    return tl.load(ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)


@triton.jit
def dot(a, b, acc, UPCAST: tl.constexpr):
    """acc + a @ b with fp32 accumulation; UPCAST (interpreter only) multiplies in fp32."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)
