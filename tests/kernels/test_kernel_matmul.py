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
@pytest.mark.parametrize("desc_act", [False, True], ids=["in_order", "act_order"])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_fused_tile_matches_reference(bits, group_size, desc_act, dtype):
    """The tiled GEMM, off by default (dispatch.py) but what VLMQ_FUSED_GEMM_MAX_M brings back: its 32-row tile
    at a ragged M = 17."""
    unpacked, weights, x, bias = make_case(bits, group_size, desc_act, 17, dtype, seed=bits * 100 + 17)
    assert violations(dispatch.quantized_matmul(x, weights, bias, algorithm="gemm_tiled"), unpacked, x, bias) == 0


def path_violations(out, unpacked, x, bias, algorithm):
    """violations() at the algorithm's rounding: dequantize + cuBLAS has F.linear's (test_dequant_matmul_fallback)."""
    if algorithm == "dequant_matmul":
        return violations(out, unpacked, x, None if bias is None else bias.to(x.dtype), ulps=2)
    return violations(out, unpacked, x, bias)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("m", [1, 3, 16, 17])
@pytest.mark.parametrize("desc_act", [False, True], ids=["in_order", "act_order"])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_dispatch_matches_reference(bits, group_size, desc_act, m, dtype):
    unpacked, weights, x, bias = make_case(bits, group_size, desc_act, m, dtype, seed=bits * 100 + m)
    out = dispatch.quantized_matmul(x, weights, bias)
    assert out.dtype == dtype and out.shape == (m, weights.out_features)
    assert path_violations(out, unpacked, x, bias, dispatch.choose_algorithm(m, weights)) == 0


OTHER_GROUP_SIZES = [(3, 16, 160), (3, 80, 640), (2, 256, 1100), (4, 1024, 1100)]  # (bits, group, K)


@pytest.mark.parametrize("bits,group_size,k", OTHER_GROUP_SIZES)
def test_dequant_kernel_is_exact_for_other_group_sizes(bits, group_size, k):
    """W.T from the dequant kernel equals the reference bit for bit (s * (q - z) is exact in fp16 here): what the
    dequantize + cuBLAS path multiplies. Compared exactly rather than through a matmul: cuBLAS may reduce K in
    fp16 on a GPU, which moves outputs by more than an ulp at K = 1100 (on the H200, 185 of 2,112 outputs)."""
    from vlmq_gptqmodel.kernels.dequant import dequantize_transposed

    unpacked, weights, _, _ = make_case(bits, group_size, True, 1, torch.float16, k=k, n=64, seed=group_size)
    expected = reference.dequantize(unpacked).t().half()
    assert torch.equal(dequantize_transposed(weights, torch.float16).cpu(), expected)


@pytest.mark.parametrize("bits,group_size,k", OTHER_GROUP_SIZES)
@pytest.mark.parametrize("algorithm,m", [("gemv_splitk", 1), ("gemv_splitk", 16), ("gemm_tiled", 33)])
def test_fused_kernels_for_other_group_sizes(bits, group_size, k, algorithm, m):
    """Each fused kernel where the dispatch lets it take the weight; the rest must go to dequantize + cuBLAS."""
    unpacked, weights, x, bias = make_case(bits, group_size, True, m, torch.float16, k=k, n=64, seed=group_size)
    if not dispatch.fused_kernels_take(weights):
        assert dispatch.choose_algorithm(m, weights) == "dequant_matmul"
        if DEVICE.type == "cuda":
            pytest.skip("16-row sub-tiles: the compiled fused kernels were wrong on an H200 (dispatch.py)")
    assert violations(dispatch.quantized_matmul(x, weights, bias, algorithm=algorithm), unpacked, x, bias) == 0


def test_sixteen_row_subtiles_never_reach_the_fused_kernels():
    """Group size 16 (and 80 at 3 bits) gives 16-row sub-tiles, wrong in the compiled fused kernels on an H200:
    every M goes to dequantize + cuBLAS; 32-row sub-tiles and up keep the M-based choice."""
    for group_size, fused in ((16, False), (80, False), (32, True), (160, True), (128, True), (-1, True)):
        weights = layout.repack_for_kernels(synthetic_gptq(3, 640, 32, group_size, False))
        assert dispatch.fused_kernels_take(weights) == fused, group_size
        expected = ["gemv_splitk", "gemv_splitk", "dequant_matmul"] if fused else ["dequant_matmul"] * 3
        assert [dispatch.choose_algorithm(m, weights) for m in (1, 16, 17)] == expected, group_size


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
@pytest.mark.parametrize("algorithm,m", [("gemv_splitk", 1), ("gemv_splitk", 3), ("gemm_tiled", 17),
                                         ("dequant_matmul", 17)])
def test_one_wrong_code_is_caught(algorithm, m, dtype):
    """Flip one code by one step in the kernel's words: the comparison above must fail, on every path."""
    if algorithm == "dequant_matmul" and dtype == torch.bfloat16:
        pytest.skip("F.linear's two bf16 ulps can hide one code step; test_dequant_kernel_is_exact_* compares W.T")
    unpacked, weights, x, bias = make_case(3, 32, False, m, dtype, seed=2)
    k_row = int(x[0].abs().argmax())  # a row whose activation is not negligible
    word_row, bit = layout.code_location(k_row, 3, weights.pair_rows)
    words = weights.words.clone()
    code = (words[word_row, 5] >> bit) & 7
    step = 1 if code < 7 else -1
    words[word_row, 5] += step << bit
    corrupted = dataclasses.replace(weights, words=words)
    for tested, wrong in ((weights, 0), (corrupted, 1)):
        out = dispatch.quantized_matmul(x, tested, bias, algorithm=algorithm)
        assert (path_violations(out, unpacked, x, bias, algorithm) > 0) == wrong


def test_choose_algorithm_by_m(monkeypatch):
    monkeypatch.delenv(dispatch.FUSED_GEMM_MAX_M_ENV, raising=False)
    assert [dispatch.choose_algorithm(m) for m in (1, 16, 17, 32, 33, 256)] == \
        ["gemv_splitk", "gemv_splitk", "dequant_matmul", "dequant_matmul", "dequant_matmul", "dequant_matmul"]
    monkeypatch.setenv(dispatch.FUSED_GEMM_MAX_M_ENV, "64")
    assert [dispatch.choose_algorithm(m) for m in (16, 17, 64, 65)] == \
        ["gemv_splitk", "gemm_tiled", "gemm_tiled", "dequant_matmul"]
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


@pytest.mark.parametrize("bits,out_features,n_blocks,m,expected", [
    # (block_n, split_k, num_stages) the H200 sweep timed fastest (or within 12 %) on Qwen2-VL-7B's shapes
    (2, 4608, 7, 1, (64, 7, 1)),     # q/k/v: 72 column tiles, every K block its own split
    (4, 4608, 7, 1, (128, 7, 1)),    # 4 bits: 128 columns
    (3, 37888, 6, 1, (64, 3, 1)),    # gate/up: the columns fill the SMs, still split (4 asked: 3 of 2 blocks run)
    (2, 3584, 37, 1, (64, 10, 1)),   # down: splits to ~256 columns in flight per SM
    (2, 37888, 7, 16, (64, 1, 3)),   # 16 rows: three stages, no split over a short K
    (3, 3584, 30, 16, (64, 6, 3)),   # ... a long K split, each split at least four blocks (7 asked: 6 of 5)
    (2, 128, 1, 1, (64, 1, 1)),      # one block: nothing to split
])
def test_decode_config_follows_the_measured_launches(bits, out_features, n_blocks, m, expected):
    config = dispatch.decode_config(m, bits, out_features, n_blocks, sm_count=132)
    assert (config.block_n, config.split_k, config.num_stages) == expected
    assert dispatch.decode_config(m, bits, out_features, n_blocks, 132, arch=90) == config  # None: Hopper's
    for rows in range(1, 17):  # the same launch within each padded-row bucket (block_m_for)
        same = dispatch.decode_config(rows, bits, out_features, n_blocks, 132)
        assert (same == config) == ((rows <= 8) == (m <= 8))


@pytest.mark.parametrize("out_features,n_blocks,m,split_k", [
    (4608, 7, 1, 4),    # 6 asked (256 columns x 108 SMs / 4608), 4 of 2 blocks run
    (3584, 37, 16, 8),  # 8 asked, 8 of 5 blocks
    (37888, 7, 1, 1),   # the columns alone fill the SMs
])
def test_before_hopper_the_gemv_keeps_its_earlier_launch(out_features, n_blocks, m, split_k):
    """Not timed before sm_90: 128 columns, one stage, split by columns in flight only, at every M."""
    config = dispatch.decode_config(m, 2, out_features, n_blocks, 108, arch=80)
    assert (config.block_n, config.split_k, config.num_stages) == (128, split_k, 1)


def test_split_counts_are_the_ones_that_run():
    """gemv_splitk gives every split the same whole number of blocks: the dispatch reports what runs."""
    from vlmq_gptqmodel.kernels.gemv_splitk import effective_splits

    assert [effective_splits(37, s) for s in (1, 8, 9, 10, 37, 50)] == [1, 8, 8, 10, 37, 37]
    assert [effective_splits(6, s) for s in (0, 3, 4, 6)] == [1, 3, 3, 6]


def test_unknown_algorithm_is_refused():
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
