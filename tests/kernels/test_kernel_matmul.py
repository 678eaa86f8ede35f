"""The Triton kernels against x @ dequant(W).T, in the Triton interpreter on CPU (on a GPU if present).

Scales are drawn so that every weight s * (q - z) is exact in fp16 and bf16 (synthetic_gptq
exact_in_half): then each algorithm's only error is fp32 summation plus rounding the output once, and
the tolerance is one output ulp. A single wrong code moves an output by |x_k| * s, far above that;
test_one_wrong_code_is_caught shows it.
"""
import dataclasses

import torch

import pytest

from vlmq_gptqmodel.kernels import dispatch, layout, reference
from vlmq_gptqmodel.kernels.gemm_tiled import gemm_tiled
from vlmq_gptqmodel.kernels.gemv_splitk import gemv_splitk
from vlmq_gptqmodel.kernels.linear import VLMQQuantLinear, kernels_unavailable_reason
from vlmq_gptqmodel.kernels.synthetic import synthetic_gptq

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if kernels_unavailable_reason(DEVICE) is not None:
    pytest.skip(f"kernels cannot run: {kernels_unavailable_reason(DEVICE)}", allow_module_level=True)

# (bits, in_features K, out_features N): odd sizes where the GPTQ format allows (3-bit: multiples of 32).
SHAPES = {2: (161, 97), 3: (160, 96), 4: (161, 33)}
DTYPES = [torch.float16, torch.bfloat16]
OUTPUT_ULP = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}  # relative, upper bound


def make_case(bits, group_size, desc_act, m, dtype, *, k=None, n=None, seed=0, bias=True):
    k_default, n_default = SHAPES[bits]
    k, n = k or k_default, n or n_default
    unpacked = synthetic_gptq(bits, k, n, group_size, desc_act, seed=seed, exact_in_half=True)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn((m, k), generator=gen).to(dtype)
    b = torch.randn(n, generator=gen).half() if bias else None
    weights = layout.repack_for_kernels(unpacked).to(DEVICE)
    return unpacked, weights, x.to(DEVICE), None if b is None else b.to(DEVICE)


def violations(out, unpacked, x, bias, ulps=1):
    """Output elements further from x @ W.T + b than `ulps` output ulps (plus fp32 summation slack)."""
    expected = reference.linear(x.cpu(), unpacked, None if bias is None else bias.cpu())
    magnitude = x.cpu().double().abs() @ reference.dequantize(unpacked).double().abs().t()
    tolerance = ulps * OUTPUT_ULP[x.dtype] * expected.abs() + 2.0 ** -20 * magnitude
    return ((out.cpu().double() - expected).abs() > tolerance).sum().item()


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("m", [1, 3, 16, 17])
@pytest.mark.parametrize("desc_act", [False, True], ids=["in_order", "act_order"])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_dispatch_matches_reference(bits, group_size, desc_act, m, dtype):
    unpacked, weights, x, bias = make_case(bits, group_size, desc_act, m, dtype, seed=bits * 100 + m)
    out = dispatch.quantized_matmul(x, weights, bias)
    assert out.dtype == dtype and out.shape == (m, weights.out_features)
    assert violations(out, unpacked, x, bias) == 0


@pytest.mark.parametrize("bits,group_size,k", [(3, 16, 160), (2, 256, 1100), (4, 1024, 1100)])
@pytest.mark.parametrize("m", [1, 33])
def test_other_group_sizes_gptqmodel_allows(bits, group_size, k, m):
    unpacked, weights, x, bias = make_case(bits, group_size, True, m, torch.float16, k=k, n=64, seed=group_size)
    assert violations(dispatch.quantized_matmul(x, weights, bias), unpacked, x, bias) == 0


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("m", [40, 70])
def test_every_architectures_prefill_tile_is_exact(bits, m):
    """The configurations prefill_config picks for sm_80 and for sm_90 (the interpreter runs the latter
    through quantized_matmul): both give x @ W.T to the output ulp, act-order and a ragged last tile."""
    unpacked, weights, x, bias = make_case(bits, 64, True, m, torch.float16, k=320, n=200, seed=bits + m)
    seen = set()
    for arch in (80, 90):
        c = dispatch.prefill_config(m, arch)
        seen.add(c)
        out = gemm_tiled(x, weights, bias, block_m=c.block_m, block_n=c.block_n, num_warps=c.num_warps,
                         num_stages=c.num_stages)
        assert violations(out, unpacked, x, bias) == 0, (arch, c)
    assert len(seen) == 2  # sm_80 gets its own tile above 32 rows
    assert dispatch.prefill_config(m, None) == dispatch.prefill_config(m, 90)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("m", [1, 5])
def test_split_k_sums_partials(bits, m):
    """K over two blocks, each split computing one: fp32 atomics, then bias and the cast."""
    k = layout.BLOCK_ROWS[bits] + 64
    unpacked, weights, x, bias = make_case(bits, 64, True, m, torch.float16, k=k, n=64, seed=bits)
    assert weights.n_blocks == 2
    out = gemv_splitk(x, weights, bias, block_n=32, split_k=2)
    assert violations(out, unpacked, x, bias) == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("bits", [2, 3])
def test_dequant_matmul_fallback(bits, dtype):
    """F.linear semantics: the bias is added in the activation dtype (rounded to it first), and the
    matmul may round once more than the fused kernels."""
    unpacked, weights, x, bias = make_case(bits, 128, True, 20, dtype, seed=5)
    out = dispatch.quantized_matmul(x, weights, bias, algorithm="dequant_matmul")
    assert violations(out, unpacked, x, bias.to(dtype), ulps=2) == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])  # fp16 too: the interpreter truncates to bf16
def test_general_fp16_scales_within_weight_rounding(dtype):
    """Scales with all 11 fp16 bits: the tiled GEMM rounds W to the activation dtype (as TorchLinear does), so
    the bound adds one unit roundoff of that dtype per |x_k * w_k|; the GEMV keeps W exact."""
    unit_roundoff = OUTPUT_ULP[dtype] / 2
    unpacked = synthetic_gptq(3, 160, 96, 32, True, seed=11)
    weights = layout.repack_for_kernels(unpacked).to(DEVICE)
    x = torch.randn((33, 160), generator=torch.Generator().manual_seed(0)).to(dtype)
    expected = reference.linear(x, unpacked)
    magnitude = x.double().abs() @ reference.dequantize(unpacked).double().abs().t()
    gemm = gemm_tiled(x.to(DEVICE), weights, block_m=32, block_n=32).cpu().double()
    assert ((gemm - expected).abs() <= OUTPUT_ULP[dtype] * expected.abs() + unit_roundoff * magnitude).all()
    gemv = gemv_splitk(x[:1].to(DEVICE), weights).cpu().double()
    assert ((gemv - expected[:1]).abs() <= OUTPUT_ULP[dtype] * expected[:1].abs() + 2.0 ** -20 * magnitude[:1]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("m", [1, 3, 17])
def test_one_wrong_code_is_caught(m, dtype):
    """Flip one code by one step in the kernel's words: the comparison above must fail."""
    unpacked, weights, x, bias = make_case(3, 32, False, m, dtype, seed=2)
    k_row = int(x[0].abs().argmax())  # a row whose activation is not negligible
    word_row, bit = layout.code_location(k_row, 3, weights.pair_rows)
    words = weights.words.clone()
    code = (words[word_row, 5] >> bit) & 7
    step = 1 if code < 7 else -1
    words[word_row, 5] += step << bit
    corrupted = dataclasses.replace(weights, words=words)
    assert violations(dispatch.quantized_matmul(x, weights, bias), unpacked, x, bias) == 0
    assert violations(dispatch.quantized_matmul(x, corrupted, bias), unpacked, x, bias) > 0


def test_choose_algorithm_by_m(monkeypatch):
    monkeypatch.delenv(dispatch.FUSED_GEMM_MAX_M_ENV, raising=False)
    assert [dispatch.choose_algorithm(m) for m in (1, 16, 17, 32, 33, 256)] == \
        ["gemv_splitk", "gemv_splitk", "gemm_tiled", "gemm_tiled", "dequant_matmul", "dequant_matmul"]
    monkeypatch.setenv(dispatch.FUSED_GEMM_MAX_M_ENV, "64")
    assert [dispatch.choose_algorithm(m) for m in (64, 65)] == ["gemm_tiled", "dequant_matmul"]
    dispatch.set_fused_gemm_max_m(1024)
    try:
        assert dispatch.choose_algorithm(1024) == "gemm_tiled"
    finally:
        dispatch.set_fused_gemm_max_m(None)
    monkeypatch.setenv(dispatch.FUSED_GEMM_MAX_M_ENV, "8")
    with pytest.raises(ValueError, match="must be an integer >= 16"):
        dispatch.choose_algorithm(20)
    with pytest.raises(ValueError, match="at least one activation row"):
        dispatch.choose_algorithm(0)


def test_split_k_only_when_columns_cannot_fill_the_gpu():
    assert dispatch.decode_config(4608, n_blocks=6, sm_count=132).split_k == 6   # 36 column tiles
    assert dispatch.decode_config(37888, n_blocks=6, sm_count=132).split_k == 1  # 296 column tiles
    assert dispatch.decode_config(128, n_blocks=1, sm_count=132).split_k == 1    # one block: nothing to split
    weights = layout.repack_for_kernels(synthetic_gptq(2, 512, 64, 128, False))
    with pytest.raises(ValueError, match="unknown algorithm"):
        dispatch.quantized_matmul(torch.zeros(1, 512, dtype=torch.float16), weights, algorithm="marlin")


def test_module_serves_any_leading_shape_and_checks_inputs():
    unpacked = synthetic_gptq(4, 161, 33, 32, True, seed=4, exact_in_half=True)
    packed = layout.pack_gptq(unpacked)
    bias = torch.randn(33).half()
    module = VLMQQuantLinear.from_gptq(**packed, bias=bias, bits=4, group_size=32, in_features=161,
                                       out_features=33).to(DEVICE)
    x = torch.randn(2, 3, 161).half().to(DEVICE)
    out = module(x)
    assert out.shape == (2, 3, 33)
    assert violations(out.reshape(6, 33), unpacked, x.reshape(6, 161), bias) == 0
    assert module(x[:, :0]).shape == (2, 0, 33)
    with pytest.raises(TypeError, match="fp16 or bf16"):
        module(x.float())
    with pytest.raises(ValueError, match="expected last dimension 161"):
        module(x[..., :160])
