"""Triton device functions shared by the kernels: read one block of the kernel layout (layout.py).

Decoding (see layout.py for the layout): a code q of b bits is moved, with one shift and one mask|or
(a single LOP3), to the top b bits of the mantissa of 1.0f, which gives the exact float
v = 1 + q / 2**b with no int->float conversion (that runs at a quarter of the FMA rate). Then
    q - z = 2**b * v - (2**b + z)            and            s * (q - z) = (s * 2**b) * v - s * (2**b + z)
are exact in one FMA each (all operands have few significant bits), and x * v is exact in fp32, so a
running sum of x * v only carries fp32 accumulation error.

Two Triton-interpreter (TRITON_INTERPRET=1) bugs are worked around: int32 -> bf16 bit-casts instead
of converting (codes become floats only through fp32 bit patterns here), and tl.dot multiplies bf16
operands as raw uint16 (`dot` upcasts to fp32 when interpreting; fp16/bf16 products are exact in fp32,
so the result equals a tensor-core dot with fp32 accumulation).
"""
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from . import layout

# Fixed when the kernels are decorated, like triton.jit itself.
INTERPRETING = bool(triton.knobs.runtime.interpret)
if INTERPRETING and not isinstance(tl.zeros, InterpretedFunction):
    raise ImportError("TRITON_INTERPRET=1 was set after triton was imported, so triton.language itself is not "
                      "interpreted. Set it before importing torch-based packages that import triton (gptqmodel, "
                      "vlmq_gptqmodel), e.g. in the shell or at the top of conftest.py.")

SUBTILE_ROWS = tl.constexpr(layout.SUBTILE_ROWS)
ONE_F32_BITS = 0x3F800000


@triton.constexpr_function
def block_rows(bits):
    return layout.BLOCK_ROWS[bits]


@triton.constexpr_function
def subtiles_per_block(bits):
    return layout.BLOCK_ROWS[bits] // layout.SUBTILE_ROWS


@triton.constexpr_function
def fields(bits):
    return layout.WORD_BITS // bits


@triton.constexpr_function
def word_tiles(bits):
    return layout.BLOCK_ROWS[bits] // (layout.SUBTILE_ROWS * (layout.WORD_BITS // bits))


@triton.constexpr_function
def group_span(group_size, bits):
    """Rows of one block that share a scale row: groups divide the block or cover whole blocks."""
    return min(group_size, layout.BLOCK_ROWS[bits])


@triton.jit
def load_word_tile(words_ptr, block, J: tl.constexpr, offs_n, n_mask, N, K, BITS: tl.constexpr):
    """The [16, BLOCK_N] tile of words holding sub-tile J of `block` (and the next F - 1 sub-tiles), read
    once; a tile holding only padding rows is not read."""
    FIELDS: tl.constexpr = fields(BITS)
    TILE: tl.constexpr = J // FIELDS
    rows = (block * word_tiles(BITS) + TILE) * SUBTILE_ROWS + tl.arange(0, SUBTILE_ROWS)
    has_data = block * block_rows(BITS) + TILE * FIELDS * SUBTILE_ROWS < K
    words = tl.load(words_ptr + rows[:, None] * N + offs_n[None, :], mask=n_mask[None, :] & has_data, other=0)
    return words.to(tl.uint32, bitcast=True)  # logical shifts from here on


@triton.jit
def subtile_values(words, one_bits, J: tl.constexpr, BITS: tl.constexpr):
    """v = 1 + q / 2**BITS as exact fp32 [16, BLOCK_N] for the codes q of sub-tile J (rows J*16 ..
    J*16+15 of its block) in its word tile: one shift by a compile-time constant and one mask|or.
    `one_bits` is the bit pattern of 1.0f passed at run time so that it sits in a register: with two
    immediates the mask and the or would take two LOP3 instructions instead of one."""
    FROM: tl.constexpr = BITS * (J % fields(BITS))
    TO: tl.constexpr = 23 - BITS  # the code becomes the top BITS bits of the mantissa
    if TO >= FROM:
        moved = words << (TO - FROM)
    else:
        moved = words >> (FROM - TO)
    return ((moved & (((1 << BITS) - 1) << TO)) | one_bits).to(tl.float32, bitcast=True)


@triton.jit
def dequantized_subtile(words, one_bits, scale, shifted_zero, J: tl.constexpr, BITS: tl.constexpr):
    """W.T sub-tile J, s * (q - z) = (s * 2**BITS) * v - s * (2**BITS + z), exact in fp32 [16, BLOCK_N].
    The per-column factors repeat for every sub-tile of a group; the compiler computes them once."""
    v = subtile_values(words, one_bits, J, BITS)
    return v * (scale * (1 << BITS))[None, :] - (scale * shifted_zero)[None, :]


@triton.jit
def load_group_params(scales_ptr, zeros_ptr, sorted_row, n_groups, offs_n, n_mask, N,
                      GROUP_SIZE: tl.constexpr, BITS: tl.constexpr):
    """Scale s and 2**BITS + z (fp32 [BLOCK_N] each) of the group holding `sorted_row`
    (padding rows clamp to the last group; their activations are zero)."""
    group = tl.minimum(sorted_row // GROUP_SIZE, n_groups - 1)
    scale = tl.load(scales_ptr + group * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    zero = tl.load(zeros_ptr + group * N + offs_n, mask=n_mask, other=0).to(tl.float32)
    return scale, zero + (1 << BITS)


@triton.jit
def next_subtile(words_ptr, scales_ptr, zeros_ptr, block, words, scale, shifted_zero, offs_n, n_mask, N, K,
                 n_groups, J: tl.constexpr, BITS: tl.constexpr, GROUP_SIZE: tl.constexpr):
    """First sorted row of sub-tile J of `block`, with the word tile and the group's scale and 2**BITS + z
    it needs: the tile is read at its first sub-tile and the group's row at its first, otherwise the
    values passed in are returned (so every word and scale is loaded once per block)."""
    row0 = block * block_rows(BITS) + J * SUBTILE_ROWS
    if J % fields(BITS) == 0:
        words = load_word_tile(words_ptr, block, J, offs_n, n_mask, N, K, BITS)
    if (J * SUBTILE_ROWS) % group_span(GROUP_SIZE, BITS) == 0:
        scale, shifted_zero = load_group_params(scales_ptr, zeros_ptr, row0, n_groups, offs_n, n_mask, N,
                                                GROUP_SIZE, BITS)
    return row0, words, scale, shifted_zero


@triton.jit
def empty_subtile_state(BLOCK_N: tl.constexpr):
    """Placeholders for next_subtile's carried values; sub-tile 0 always replaces them."""
    return (tl.zeros([SUBTILE_ROWS, BLOCK_N], dtype=tl.uint32), tl.zeros([BLOCK_N], dtype=tl.float32),
            tl.zeros([BLOCK_N], dtype=tl.float32))


@triton.jit
def _x_columns(perm_ptr, sorted_row0, K, HAS_PERM: tl.constexpr):
    rows = sorted_row0 + tl.arange(0, SUBTILE_ROWS)
    k_mask = rows < K
    if HAS_PERM:
        cols = tl.load(perm_ptr + rows, mask=k_mask, other=0)
    else:
        cols = rows
    return cols, k_mask


@triton.jit
def load_x_subtile(x_ptr, perm_ptr, offs_m, m_mask, sorted_row0, K, stride_xm, HAS_PERM: tl.constexpr):
    """Activations [BLOCK_M, 16] for 16 sorted rows, in x's dtype; zero past K (the padding)."""
    cols, k_mask = _x_columns(perm_ptr, sorted_row0, K, HAS_PERM)
    ptrs = x_ptr + offs_m[:, None] * stride_xm + cols[None, :]
    return tl.load(ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)


@triton.jit
def load_x_vector(x_ptr, perm_ptr, sorted_row0, K, HAS_PERM: tl.constexpr):
    """Activations [16] of the single row of x for 16 sorted rows, as fp32; zero past K."""
    cols, k_mask = _x_columns(perm_ptr, sorted_row0, K, HAS_PERM)
    return tl.load(x_ptr + cols, mask=k_mask, other=0.0).to(tl.float32)


@triton.jit
def dot(a, b, acc, UPCAST: tl.constexpr):
    """acc + a @ b with fp32 accumulation; UPCAST (interpreter only) multiplies in fp32."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)
