"""The humming-rule reader (vlmq_gptqmodel.humming_reader) on known answers, independent of GPTQModel."""
import pytest
import torch

from vlmq_gptqmodel.humming_reader import decode_linear, unpack_runs
from vlmq_gptqmodel.kernels.layout import pack_bitstream


def pack_as_bit_string(values, bits):
    """The little-endian bit string of `values` (bits each, value 0 first) cut into int32 words."""
    stream = 0
    for i, v in enumerate(values):
        stream |= int(v) << (i * bits)
    words = [(stream >> (32 * w)) & 0xFFFFFFFF for w in range(len(values) * bits // 32)]
    return torch.tensor([w - (1 << 32) if w >= 1 << 31 else w for w in words], dtype=torch.int32)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_unpack_runs_reads_the_little_endian_bit_string(bits):
    values = torch.randint(0, 1 << bits, (64,), generator=torch.Generator().manual_seed(bits))
    assert torch.equal(unpack_runs(pack_as_bit_string(values.tolist(), bits), bits), values)


def test_a_3_bit_value_straddles_two_words_low_bits_first():
    # value 10 starts at bit 30: its two low bits end word 0, its high bit starts word 1
    values = [0] * 32
    values[10] = 0b101
    words = unpack_runs(torch.tensor([1 << 30, 1, 0], dtype=torch.int32), 3)
    assert words.tolist() == values
    assert pack_as_bit_string(values, 3).tolist() == [1 << 30, 1, 0]


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_agrees_with_the_kernels_packer_along_either_dimension(bits):
    """Two implementations written apart (kernels/layout.py and this reader) read the same codes."""
    codes = torch.randint(0, 1 << bits, (64, 96), generator=torch.Generator().manual_seed(0))
    along_rows = pack_bitstream(codes, bits, dim=0)         # [64 * bits / 32, 96], like qweight
    assert torch.equal(unpack_runs(along_rows.t().contiguous(), bits), codes.t())
    along_columns = pack_bitstream(codes, bits, dim=1)      # [64, 96 * bits / 32], like qzeros
    assert torch.equal(unpack_runs(along_columns, bits), codes)


def test_decode_linear_dequantizes_with_true_zeros_and_groups_of_consecutive_inputs():
    bits, group_size = 4, 32
    codes = torch.randint(0, 16, (64, 8), generator=torch.Generator().manual_seed(1))  # [K, N]
    zeros = torch.randint(0, 16, (2, 8), generator=torch.Generator().manual_seed(2))   # [G, N]
    scales = torch.rand(2, 8, generator=torch.Generator().manual_seed(3)).half() + 0.5
    decoded = decode_linear(pack_bitstream(codes, bits, dim=0), pack_bitstream(zeros, bits, dim=1), scales,
                            bits=bits, group_size=group_size, sym=False)
    expected = (codes - zeros.repeat_interleave(group_size, dim=0)).float() * scales.float().repeat_interleave(group_size, dim=0)
    assert torch.equal(decoded.weight(), expected.t())
    assert torch.equal(decoded.zeros, zeros.t())


def test_symmetric_weights_are_centred_on_the_midpoint_whatever_qzeros_holds():
    codes = torch.full((32, 8), 6)
    garbage = torch.full((1, 1), -1, dtype=torch.int32)
    decoded = decode_linear(pack_bitstream(codes, 3, dim=0), garbage, torch.ones(1, 8).half(), bits=3,
                            group_size=-1, sym=True)
    assert torch.equal(decoded.weight(), torch.full((8, 32), 2.0))  # 6 - 2^(3-1)
