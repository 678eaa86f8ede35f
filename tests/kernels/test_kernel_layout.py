"""GPTQ unpack/pack and the kernels' repacked layout are exact (plain torch, no kernels run)."""
import pytest
import torch

from vlmq_gptqmodel.kernels import layout, reference
from vlmq_gptqmodel.kernels.synthetic import synthetic_gptq

# (bits, in_features, out_features): odd sizes where GPTQ's format allows them (3-bit packs 32 codes
# into 3 words along both dimensions, so both must be multiples of 32).
SHAPES = [(2, 161, 97), (3, 160, 96), (4, 161, 33)]


def gptqmodel_packed(unpacked, desc_act):
    """A TorchLinear packed by GPTQModel itself from the dense weight of `unpacked`."""
    TorchLinear = pytest.importorskip("gptqmodel.nn_modules.qlinear.torch").TorchLinear  # the kernels alone need none
    k, n = unpacked.codes.shape
    dense = torch.nn.Linear(k, n, bias=False)
    dense.weight.data = reference.dequantize(unpacked)
    module = TorchLinear(bits=unpacked.bits, group_size=unpacked.group_size, sym=False, desc_act=desc_act,
                         in_features=k, out_features=n, bias=False, pack_dtype=torch.int32)
    module.pack_original(dense, unpacked.scales.float().t(), unpacked.zeros.float().t(),
                         unpacked.g_idx.to(torch.int32))
    module.post_init()
    return module.eval()


@pytest.mark.parametrize("bits,k,n", SHAPES)
@pytest.mark.parametrize("group_size,desc_act", [(32, True), (64, False), (-1, False), (128, True)])
def test_unpack_and_pack_match_gptqmodel(bits, k, n, group_size, desc_act):
    truth = synthetic_gptq(bits, k, n, group_size, desc_act, seed=bits)
    module = gptqmodel_packed(truth, desc_act)
    unpacked = layout.unpack_gptq(module.qweight, module.qzeros, module.scales, module.g_idx, bits, group_size, k, n)
    assert torch.equal(unpacked.codes, truth.codes)
    assert torch.equal(unpacked.zeros, truth.zeros)
    # GPTQModel's own dequantization is what a checkpoint means.
    assert torch.equal(reference.dequantize(unpacked).to(module.scales.dtype), module.dequantize_weight().t())
    packed = layout.pack_gptq(truth)
    assert torch.equal(packed["qweight"], module.qweight)
    assert torch.equal(packed["qzeros"], module.qzeros)


@pytest.mark.parametrize("bits", layout.SUPPORTED_BITS)
def test_three_bit_straddling_codes_unpack(bits):
    """Every code position of a 32-code run, including the two that straddle words at 3 bits."""
    codes = torch.arange(64).remainder(1 << bits).to(torch.uint8).view(64, 1)
    words = layout.pack_bitstream(codes, bits, dim=0)
    assert words.shape == (64 * bits // 32, 1)
    assert torch.equal(layout.unpack_bitstream(words, bits, 64, dim=0), codes)


@pytest.mark.parametrize("bits,k,n", SHAPES + [(3, 704, 32), (2, 1100, 5)])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("desc_act", [False, True])
def test_repack_round_trip(bits, k, n, group_size, desc_act):
    unpacked = synthetic_gptq(bits, k, n, group_size, desc_act, seed=7)
    weights = layout.repack_for_kernels(unpacked)
    assert weights.padded_in_features % layout.BLOCK_ROWS[bits] == 0
    assert weights.padded_in_features - k < layout.BLOCK_ROWS[bits]
    assert (weights.perm is not None) == (desc_act and group_size != -1)  # one group needs no sorting
    back = layout.unrepack(weights)
    assert torch.equal(back.codes, unpacked.codes)
    assert torch.equal(back.g_idx, unpacked.g_idx)
    assert torch.equal(back.zeros, unpacked.zeros) and torch.equal(back.scales, unpacked.scales)


@pytest.mark.parametrize("bits", layout.SUPPORTED_BITS)
@pytest.mark.parametrize("group_size,pairs", [(16, 8), (32, 16), (128, 32), (-1, 32)])
def test_kernel_layout_matches_its_description(bits, group_size, pairs):
    """Row 2P*f + 2p + h of a piece is at bit 16*h + b*f of its word row p; every code has its own bits."""
    k = 2 * layout.BLOCK_ROWS[bits]
    unpacked = synthetic_gptq(bits, k, 8, group_size, False, seed=1)
    weights = layout.repack_for_kernels(unpacked)
    assert weights.pair_rows == pairs
    words = weights.words.to(torch.int64) & 0xFFFFFFFF
    seen = set()
    for row in range(k):
        word_row, bit = layout.code_location(row, bits, pairs)
        assert bit % 16 + bits <= 16  # no code crosses a half word
        seen.add((word_row, bit))
        field = (words[word_row] >> bit) & ((1 << bits) - 1)
        assert torch.equal(field, unpacked.codes[row].long()), row
    assert len(seen) == k and max(w for w, _ in seen) == words.shape[0] - 1
    # the two halves of a word are consecutive rows
    assert layout.code_location(2 * pairs + 1, bits, pairs) == (0, 16 + bits)


def test_bytes_per_weight_of_the_kernel_layout():
    """words + fp16 scales + uint8 zeros; 3-bit pays 32 bits per 10 codes so no code crosses a word."""
    for bits, expected in ((2, 2 / 8 + 3 / 128), (3, 3.2 / 8 + 3 / 128), (4, 4 / 8 + 3 / 128)):
        k = 2560  # whole blocks at every width
        weights = layout.repack_for_kernels(synthetic_gptq(bits, k, 64, 128, False))
        assert weights.nbytes() / (k * 64) == pytest.approx(expected)


def test_act_order_rows_are_sorted_by_group():
    unpacked = synthetic_gptq(3, 160, 32, 32, True, seed=3)
    weights = layout.repack_for_kernels(unpacked)
    assert torch.equal(unpacked.g_idx[weights.perm.long()], torch.arange(160) // 32)


@pytest.mark.parametrize("bits,group_size", [(3, 256), (2, 24), (4, 48)])
def test_unsupported_group_sizes_are_refused(bits, group_size):
    unpacked = synthetic_gptq(bits, 768, 32, group_size, False)
    with pytest.raises(ValueError, match="TorchLinear"):
        layout.repack_for_kernels(unpacked)


def test_group_index_that_is_not_gptq_act_order_is_refused():
    unpacked = synthetic_gptq(4, 64, 8, 32, False)
    skewed = layout.GPTQCodes(unpacked.codes, unpacked.zeros, unpacked.scales,
                              torch.cat([torch.zeros(40), torch.ones(24)]).long(), 4, 32)
    with pytest.raises(ValueError, match="g_idx does not describe groups of 32 rows"):
        layout.repack_for_kernels(skewed)


def test_bad_inputs_are_refused_with_the_fix():
    unpacked = synthetic_gptq(2, 64, 16, 32, False)
    packed = layout.pack_gptq(unpacked)
    with pytest.raises(ValueError, match="supported: "):
        layout.check_bits(5)
    with pytest.raises(ValueError, match="must be int32"):
        layout.unpack_gptq(packed["qweight"].long(), packed["qzeros"], unpacked.scales, unpacked.g_idx, 2, 32, 64, 16)
    with pytest.raises(ValueError, match="inconsistent GPTQ tensors"):
        layout.unpack_gptq(packed["qweight"], packed["qzeros"], unpacked.scales, unpacked.g_idx, 2, 32, 64, 17)
    with pytest.raises(ValueError, match="words along dim 0"):
        layout.unpack_gptq(packed["qweight"][:-1], packed["qzeros"], unpacked.scales, unpacked.g_idx, 2, 32, 64, 16)


@pytest.mark.parametrize("bits", layout.SUPPORTED_BITS)
@pytest.mark.parametrize("in_features", [200, 256])  # 200: not a multiple of 16
def test_a_group_as_wide_as_the_input_is_per_channel(bits, in_features):
    """GPTQModel loads a group_size=-1 checkpoint with group_size = in_features: the same single group."""
    unpacked = synthetic_gptq(bits, in_features, 8, -1, False, seed=3)
    as_loaded = layout.GPTQCodes(unpacked.codes, unpacked.zeros, unpacked.scales, unpacked.g_idx, bits, in_features)
    expected, got = layout.repack_for_kernels(unpacked), layout.repack_for_kernels(as_loaded)
    assert got.group_size == expected.group_size and got.perm is None
    assert torch.equal(got.words, expected.words) and torch.equal(got.zeros, expected.zeros)
    assert torch.equal(reference.dequantize(layout.unrepack(got)), reference.dequantize(unpacked))
