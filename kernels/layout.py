"""GPTQ packed tensors <-> plain codes <-> the kernels' repacked layout (plain torch, any device).

GPTQ layout (GPTQModel, `format="gptq"`, int32 words) for every bit width b in {2, 3, 4}:
the codes of one output column form a little-endian bitstream along the input dimension, code k at
bit b*k. For b=2/4 no code crosses a word; for b=3 every 32 codes use three words and codes 10 and 21
straddle a word boundary. `qzeros` packs the zero points of one group the same way along the output
dimension. GPTQModel keeps the true zero points in memory ("v2"); the saved "v1" checkpoint stores
zero-1, which GPTQModel's loader undoes. Everything here takes true zero points.

Kernel layout (`KernelWeights`): every int32 word holds F = floor(32 / b) codes (16, 10, 8 for b = 2,
3, 4; 3-bit leaves two bits unused so that no code crosses a word), F / 2 in each 16-bit half, and the
two halves hold two consecutive rows of one column, so that the kernels decode both with one
instruction into a packed f16x2/bf16x2 pair (pair_decode.py). The input dimension is padded to blocks
of BLOCK_ROWS[b] rows (512, 640, 512), each made of pieces of P word rows (P = pair_rows(group size):
32, or 16/8 for groups of 32/16 rows) that hold P * F rows. Row r = 2P*f + 2p + h of a piece (field f
in 0..F/2-1, word row p in 0..P-1, half h in 0..1) is at bit 16*h + b*f of word row p of the piece
(`code_location`). So a [P, BLOCK_N] tile of words, loaded once, yields F / 2 sub-tiles of 2P
consecutive rows; a sub-tile lies in one quantization group (2P divides the group size, and groups
divide the block or are multiples of it), so it needs one row of scales and zero points. Rows are
sorted by group (`perm`) so that act-order (`desc_act`) checkpoints get contiguous groups.
"""
from dataclasses import dataclass, replace
from typing import Optional

import torch

SUPPORTED_BITS = (2, 3, 4)
MIN_GROUP_ROWS = 16  # one tensor-core K step: the smallest sub-tile
WORD_BITS = 32
HALF_BITS = 16
# Rows per block: a whole number of pieces (P * F rows each, P <= 32) and of 128-row groups.
BLOCK_ROWS = {2: 512, 3: 640, 4: 512}
# 32 word rows per piece (64-row sub-tiles): the fewest SASS instructions per weight in compile_check.
MAX_PAIR_ROWS = 32


def fields_per_word(bits: int) -> int:
    return WORD_BITS // bits


def pair_rows(rows_per_group: int) -> int:
    """Word rows P of a piece: sub-tiles of 2P rows must not straddle a group."""
    return min(MAX_PAIR_ROWS, (rows_per_group & -rows_per_group) // 2)


def pieces_per_block(bits: int, pairs: int) -> int:
    return BLOCK_ROWS[bits] // (pairs * fields_per_word(bits))


def code_location(row: int, bits: int, pairs: int) -> tuple:
    """(word row, bit) of sorted row `row` in the kernel layout: the layout's definition, row by row."""
    block, within = divmod(row, BLOCK_ROWS[bits])
    piece, in_piece = divmod(within, pairs * fields_per_word(bits))
    field, pair = divmod(in_piece, 2 * pairs)
    word_row, half = divmod(pair, 2)
    word_row += (block * pieces_per_block(bits, pairs) + piece) * pairs
    return word_row, HALF_BITS * half + bits * field


def check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits} is not supported by the VLMQ kernels; supported: {SUPPORTED_BITS}. "
                         "Serve other widths with GPTQModel's own kernels.")


def _as_unsigned_words(packed: torch.Tensor) -> torch.Tensor:
    if packed.dtype != torch.int32:
        raise ValueError(f"packed GPTQ tensors must be int32 (pack_dtype=int32), got {packed.dtype}. "
                         "Re-quantize with the default pack_dtype.")
    return packed.to(torch.int64) & 0xFFFFFFFF


def _to_int32_words(words: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2**32) -> the int32 with the same bits."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_bitstream(packed: torch.Tensor, bits: int, count: int, dim: int) -> torch.Tensor:
    """Codes 0..count-1 of the little-endian bitstream that runs along `dim` of `packed` (int32)."""
    check_bits(bits)
    words = _as_unsigned_words(packed.movedim(dim, 0))
    needed_words = -(-count * bits // WORD_BITS)
    if words.shape[0] < needed_words:
        raise ValueError(f"packed tensor has {words.shape[0]} words along dim {dim}, "
                         f"{count} codes of {bits} bits need {needed_words}")
    bit_pos = torch.arange(count, device=packed.device) * bits
    lo_word = bit_pos // WORD_BITS
    hi_word = torch.clamp(lo_word + 1, max=words.shape[0] - 1)
    shift = (bit_pos % WORD_BITS).view(-1, *([1] * (words.dim() - 1)))
    # 64-bit window over two adjacent words, so codes that straddle a word boundary come out whole.
    window = words[lo_word] | (words[hi_word] << WORD_BITS)
    codes = (window >> shift) & ((1 << bits) - 1)
    return codes.to(torch.uint8).movedim(0, dim)


def pack_bitstream(codes: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of `unpack_bitstream`: int32 words, zero-filled past the last code."""
    check_bits(bits)
    values = codes.movedim(dim, 0).to(torch.int64)
    if values.numel() and (values.min() < 0 or values.max() >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {(1 << bits) - 1}] for {bits} bits")
    count = values.shape[0]
    n_words = -(-count * bits // WORD_BITS)
    words = torch.zeros((n_words + 1, *values.shape[1:]), dtype=torch.int64, device=codes.device)
    bit_pos = torch.arange(count, device=codes.device) * bits
    shift = (bit_pos % WORD_BITS).view(-1, *([1] * (values.dim() - 1)))
    shifted = values << shift
    words.index_add_(0, bit_pos // WORD_BITS, shifted & 0xFFFFFFFF)
    words.index_add_(0, bit_pos // WORD_BITS + 1, shifted >> WORD_BITS)
    return _to_int32_words(words[:n_words]).movedim(0, dim).contiguous()


@dataclass(frozen=True)
class GPTQCodes:
    """An unpacked GPTQ linear: codes [K, N], zero points and scales [G, N], g_idx [K]."""
    codes: torch.Tensor
    zeros: torch.Tensor
    scales: torch.Tensor
    g_idx: torch.Tensor
    bits: int
    group_size: int


def unpack_gptq(qweight, qzeros, scales, g_idx, bits: int, group_size: int,
                in_features: int, out_features: int) -> GPTQCodes:
    """Unpack GPTQModel's tensors (true zero points) into plain codes."""
    check_bits(bits)
    n_groups = scales.shape[0]
    if not scales.is_floating_point():
        raise ValueError(f"scales must be a float tensor, got {scales.dtype}")
    if tuple(scales.shape) != (n_groups, out_features) or g_idx.numel() != in_features:
        raise ValueError(f"inconsistent GPTQ tensors: scales {tuple(scales.shape)}, g_idx {tuple(g_idx.shape)} "
                         f"for in_features={in_features}, out_features={out_features}")
    g_idx = g_idx.to(torch.int64)
    if g_idx.numel() and (g_idx.min() < 0 or g_idx.max() >= n_groups):
        raise ValueError(f"g_idx points outside the {n_groups} groups of scales")
    return GPTQCodes(
        codes=unpack_bitstream(qweight, bits, in_features, dim=0),
        zeros=unpack_bitstream(qzeros, bits, out_features, dim=1),
        scales=scales,
        g_idx=g_idx,
        bits=bits,
        group_size=group_size,
    )


# GPTQModel's v1 (`format="gptq"`) export stores zero - 1. For 2, 4 and 8 bits it subtracts a word of ones
# from each whole packed int32 word, so a zero point of 0 borrows from the next field; its reader adds the
# same word back. For 3 bits, whose fields straddle words, it shifts field by field.
V1_WORD_OF_ONES = {2: 0x55555555, 4: 0x11111111, 8: 0x01010101}


def from_saved_qzeros(qzeros: torch.Tensor, bits: int) -> torch.Tensor:
    """Packed true zero points from a saved `format="gptq"` checkpoint's packed qzeros (int32 words), undoing
    the export exactly as GPTQModel does: whole-word arithmetic with carries for 2/4/8 bits, field by field
    for 3 bits."""
    check_bits(bits)
    if bits in V1_WORD_OF_ONES:
        return _to_int32_words((_as_unsigned_words(qzeros) + V1_WORD_OF_ONES[bits]) & 0xFFFFFFFF)
    fields = qzeros.shape[1] * 32 // bits
    true = (unpack_bitstream(qzeros, bits, fields, dim=1).long() + 1) % 2**bits
    return pack_bitstream(true, bits, dim=1)


def pack_gptq(unpacked: GPTQCodes) -> dict:
    """GPTQModel's packed tensors for `unpacked` (for tests and tools; not used when serving)."""
    return {
        "qweight": pack_bitstream(unpacked.codes, unpacked.bits, dim=0),
        "qzeros": pack_bitstream(unpacked.zeros, unpacked.bits, dim=1),
        "scales": unpacked.scales,
        "g_idx": unpacked.g_idx.to(torch.int32),
    }


@dataclass(frozen=True)
class KernelWeights:
    """One linear layer in the kernels' layout (see module docstring)."""
    bits: int
    in_features: int
    out_features: int
    group_size: int          # rows per group in sorted order; padded_in_features for per-channel (-1)
    words: torch.Tensor      # int32 [K_pad / F, N]
    scales: torch.Tensor     # [G, N], the checkpoint's float dtype (the kernels read it as fp32)
    zeros: torch.Tensor      # uint8 [G, N]
    perm: Optional[torch.Tensor]  # int32 [K]: sorted row -> original input index; None if identity

    @property
    def padded_in_features(self) -> int:
        return self.words.shape[0] * fields_per_word(self.bits)

    @property
    def pair_rows(self) -> int:
        return pair_rows(self.group_size)

    @property
    def n_blocks(self) -> int:
        return self.padded_in_features // BLOCK_ROWS[self.bits]

    @property
    def n_groups(self) -> int:
        return self.scales.shape[0]

    def tensors(self) -> dict:
        names = ("words", "scales", "zeros", "perm")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def to(self, device) -> "KernelWeights":
        return replace(self, **{name: t.to(device) for name, t in self.tensors().items()})

    def kernel_operands(self, bias: Optional[torch.Tensor]) -> tuple:
        """(words, scales, zeros, perm, bias) pointers for a kernel launch. Absent tensors are replaced by
        a real tensor the kernel never reads (its HAS_PERM / HAS_BIAS flag is off)."""
        return (self.words, self.scales, self.zeros, self.perm if self.perm is not None else self.zeros,
                bias if bias is not None else self.scales)

    def nbytes(self) -> int:
        """Bytes a kernel streams for the weight (words, scales, zeros; not the tiny perm)."""
        return sum(t.numel() * t.element_size() for name, t in self.tensors().items() if name != "perm")


def group_sort_permutation(g_idx: torch.Tensor, group_size: int) -> Optional[torch.Tensor]:
    """Rows sorted by group, or None when g_idx is already in order.

    The kernels need group g to be rows [g*group_size, (g+1)*group_size) after sorting. GPTQ's act-order
    and static-group checkpoints satisfy this; anything else is refused rather than served wrongly.
    """
    in_features = g_idx.numel()
    rows_per_group = in_features if group_size == -1 else group_size
    expected = torch.arange(in_features, device=g_idx.device) // rows_per_group
    if torch.equal(g_idx.to(torch.int64), expected):
        return None
    perm = torch.argsort(g_idx.to(torch.int64), stable=True)
    if not torch.equal(g_idx.to(torch.int64)[perm], expected):
        raise ValueError(
            f"g_idx does not describe groups of {rows_per_group} rows (after sorting by group, row r must be "
            f"in group r // {rows_per_group}). This checkpoint cannot use the VLMQ kernels; serve it with "
            "GPTQModel's TorchLinear.")
    return perm.to(torch.int32)


def _block_view_shape(k_pad: int, n: int, bits: int, pairs: int) -> tuple:
    """[block, piece, field, word row, half, column] view of a [k_pad, n] code matrix."""
    return (k_pad // BLOCK_ROWS[bits], pieces_per_block(bits, pairs), fields_per_word(bits) // 2, pairs, 2, n)


def _field_shifts(bits: int, device) -> torch.Tensor:
    """Bit 16*h + b*f of field f in half h, shaped to broadcast over `_block_view_shape`."""
    fields = torch.arange(fields_per_word(bits) // 2, device=device).view(-1, 1) * bits
    halves = torch.arange(2, device=device).view(1, -1) * HALF_BITS
    return (fields + halves).view(1, 1, -1, 1, 2, 1)


def repack_for_kernels(unpacked: GPTQCodes) -> KernelWeights:
    """One-time conversion at load time: sort rows by group, pad K to whole blocks, pack F codes/word
    (F / 2 per half word, the two halves two consecutive rows)."""
    bits = unpacked.bits
    check_bits(bits)
    codes = unpacked.codes
    in_features, out_features = codes.shape
    block_rows = BLOCK_ROWS[bits]
    k_pad = -(-in_features // block_rows) * block_rows
    # One group spanning the padded rows is the same per-channel group, and a whole number of blocks. GPTQModel
    # loads a group_size=-1 checkpoint with group_size set to the input width: that is per-channel too.
    per_channel = unpacked.group_size == -1 or unpacked.group_size >= in_features
    rows_per_group = k_pad if per_channel else unpacked.group_size
    # Group boundaries must fall on sub-tile edges at positions known at compile time.
    if rows_per_group % MIN_GROUP_ROWS or (block_rows % rows_per_group and rows_per_group % block_rows):
        raise ValueError(f"group_size={unpacked.group_size} is not supported by the VLMQ kernels at {bits} bits: it "
                         f"must be -1 or a multiple of {MIN_GROUP_ROWS} that divides {block_rows} or is a multiple of "
                         "it. Serve this checkpoint with GPTQModel's TorchLinear.")
    perm = group_sort_permutation(unpacked.g_idx, -1 if per_channel else unpacked.group_size)
    if perm is not None:
        codes = codes[perm.long()]
    padded = torch.zeros((k_pad, out_features), dtype=torch.int64, device=codes.device)
    padded[:in_features] = codes.to(torch.int64)
    fields = padded.view(_block_view_shape(k_pad, out_features, bits, pair_rows(rows_per_group)))
    words = (fields << _field_shifts(bits, codes.device)).sum(dim=(2, 4))
    return KernelWeights(
        bits=bits,
        in_features=in_features,
        out_features=out_features,
        group_size=rows_per_group,
        words=_to_int32_words(words.reshape(-1, out_features)).contiguous(),
        scales=unpacked.scales.contiguous(),
        zeros=unpacked.zeros.to(torch.uint8).contiguous(),
        perm=perm,
    )


def unrepack(weights: KernelWeights) -> GPTQCodes:
    """Inverse of `repack_for_kernels` (codes back in the original row order), for tests and tools."""
    bits, k_pad, n = weights.bits, weights.padded_in_features, weights.out_features
    shape = list(_block_view_shape(k_pad, n, bits, weights.pair_rows))
    shape[2] = shape[4] = 1
    words = (weights.words.to(torch.int64) & 0xFFFFFFFF).view(shape)
    fields = (words >> _field_shifts(bits, words.device)) & ((1 << bits) - 1)
    codes = fields.reshape(k_pad, n)[:weights.in_features]
    g_idx = torch.arange(weights.in_features, device=codes.device) // weights.group_size
    if weights.perm is not None:
        inverse = torch.argsort(weights.perm.long())
        codes, g_idx = codes[inverse], g_idx[inverse]
    return GPTQCodes(codes=codes.to(torch.uint8), zeros=weights.zeros, scales=weights.scales, g_idx=g_idx,
                     bits=bits, group_size=weights.group_size)
