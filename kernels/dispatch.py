"""The one place that picks an algorithm and its launch configuration from the number of rows M.

    M <= 16                      gemv_splitk     weights streamed once, K split over programs (decode_config)
    16 < M <= fused_gemm_max_m() gemm_tiled      fused dequant + tensor-core GEMM (off by default: see below)
    M > fused_gemm_max_m()       dequant_matmul  dequantize once into the activation dtype, then torch.matmul

Every choice here was timed on an H200 (benchmarks/results/gpu/, the only GPU measured so far; run 2 swept
the GEMV's launches):
- dequantize + cuBLAS beat the fused tile at M = 32, 64, 256 and 1024 for every Table-11 shape at 2, 3 and
  4 bits but gate/up at one M each (W2 and W3 at M = 32, W4 at 64: 1-22 % faster fused; down W2 M=32:
  303 µs fused, 89 µs dequantize + cuBLAS), so by default nothing takes the fused tile. VLMQ_FUSED_GEMM_MAX_M (or
  `set_fused_gemm_max_m`) sets another crossover for a GPU where it wins.
- Weights whose groups split a block into 16-row sub-tiles (group size 16, and 80 at 3 bits) go to
  dequantize + cuBLAS at every M: compiled for the H200, the 16-row tensor-core dot gave wrong outputs in
  the GEMV at M <= 8 and in the 32-row tile (with the inline PTX on and off; the Triton interpreter, which
  CI runs, computes them right), while the dequant kernel was exact.
"""
import os
from dataclasses import dataclass
from typing import Optional

import torch
import triton

from .dequant import dequantize_transposed
from .gemm_tiled import gemm_tiled
from .gemv_splitk import effective_splits, gemv_splitk
from .layout import KernelWeights

DECODE_MAX_M = 16
FUSED_GEMM_MAX_M_ENV = "VLMQ_FUSED_GEMM_MAX_M"
DEFAULT_FUSED_GEMM_MAX_M = DECODE_MAX_M  # no M takes the fused tile unless asked (module docstring)
# Sub-tiles of 2P rows (layout.pair_rows) that the fused kernels' dots handle correctly when compiled
MIN_FUSED_SUBTILE_ROWS = 32
# Weight columns each SM should stream at once in the GEMV (output columns x K splits per SM): 256 reproduces
# the split counts that timed fastest on the H200 at 64- and at 128-column tiles
COLUMNS_IN_FLIGHT_PER_SM = 256
MIN_DECODE_SPLITS = 4
ALGORITHMS = ("gemv_splitk", "gemm_tiled", "dequant_matmul")

_fused_gemm_max_m: Optional[int] = None


def _parse_max_m(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < DECODE_MAX_M:
        raise ValueError(f"{FUSED_GEMM_MAX_M_ENV}={text!r} must be an integer >= {DECODE_MAX_M}")
    return value


def set_fused_gemm_max_m(value: Optional[int]) -> None:
    """Largest M served by the fused GEMM; None restores the environment/default value."""
    global _fused_gemm_max_m
    _fused_gemm_max_m = None if value is None else _parse_max_m(str(value))


def fused_gemm_max_m() -> int:
    if _fused_gemm_max_m is not None:
        return _fused_gemm_max_m
    return _parse_max_m(os.environ.get(FUSED_GEMM_MAX_M_ENV, str(DEFAULT_FUSED_GEMM_MAX_M)))


def fused_kernels_take(weights: KernelWeights) -> bool:
    """Whether the fused kernels are trusted with this weight's group layout (module docstring)."""
    return 2 * weights.pair_rows >= MIN_FUSED_SUBTILE_ROWS


def choose_algorithm(m: int, weights: Optional[KernelWeights] = None) -> str:
    if m < 1:
        raise ValueError(f"need at least one activation row, got M={m}")
    if weights is not None and not fused_kernels_take(weights):
        return "dequant_matmul"
    if m <= DECODE_MAX_M:
        return "gemv_splitk"
    if m <= fused_gemm_max_m():
        return "gemm_tiled"
    return "dequant_matmul"


@dataclass(frozen=True)
class DecodeConfig:
    block_n: int
    split_k: int
    num_warps: int
    num_stages: int  # always named: Triton's default (3) is not what compile_check would count otherwise


@dataclass(frozen=True)
class PrefillConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def streaming_multiprocessors(device: torch.device) -> int:
    """SMs of a CUDA device; 1 elsewhere (the Triton interpreter runs programs one after another)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def decode_config(m: int, bits: int, out_features: int, n_blocks: int, sm_count: int,
                  arch: Optional[int] = None) -> DecodeConfig:
    """The GEMV launch for M rows on `arch` (compute_capability), chosen from the H200 sweep (linear_latency.py
    --decode-sweep): the fastest swept launch at M = 16, within 12 % of it at M = 1. split_k is the number of
    splits that run (gemv_splitk.effective_splits)."""
    split_k = triton.cdiv(COLUMNS_IN_FLIGHT_PER_SM * sm_count, out_features)
    if arch is not None and arch < 90:
        # Not timed before Hopper: the launch used before the H200 sweep (128 columns, one stage), which
        # compile_check finds spill-free with 128-bit weight loads on sm_80 (64 columns spill at 16 rows)
        return DecodeConfig(128, effective_splits(n_blocks, split_k), num_warps=4, num_stages=1)
    if m <= 8:
        # One stage, so a program has one block's loads in flight: at least MIN_DECODE_SPLITS splits even where
        # the columns alone fill the SMs (gate/up: 1.05-1.33x faster than one split). 64 columns at 2 and 3 bits
        # (down W2 31.5 vs 39.3 µs at 128), 128 at 4 bits, where 4-bit words hold fewer weights (q/k/v 18.3 vs
        # 21.9, down 44.5 vs 58.5; but o and gate/up were 10 % and 4 % faster at 64). Against the launch before
        # the sweep: up to 1.4x faster (gate/up W3/W4, down W2/W3), 1-10 % slower on q/k/v W3/W4 and gate/up W2.
        block_n = 128 if bits == 4 else 64
        return DecodeConfig(block_n, effective_splits(n_blocks, max(split_k, MIN_DECODE_SPLITS)), num_warps=4,
                            num_stages=1)
    # 16 padded rows: three stages overlap the next block's loads with this one's MMAs (at M = 16, 1.4-3.2x faster
    # than the one-stage 128-column launch dispatched before, every shape and width, although the staged copies
    # of the words are 32-bit: compile_check), which needs a few blocks per split: split only a long K (down: 10
    # splits timed fastest of 1, 10 and 37).
    return DecodeConfig(64, effective_splits(n_blocks, min(n_blocks // 4, split_k)), num_warps=4, num_stages=3)


def compute_capability(device: torch.device) -> Optional[int]:
    """80 for sm_80, 90 for sm_90, ...; None off CUDA (the interpreter takes the sm_90 configurations)."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def prefill_config(m: int, arch: Optional[int] = None) -> PrefillConfig:
    # One stage everywhere: on sm_80 two stages spill; on sm_90 Triton's two-stage pipeline asks for 148-379 KB
    # of shared memory (compile_check), past the 227 KB limit at M > 64: the H200 refused those launches.
    if m <= 32:
        return PrefillConfig(block_m=32, block_n=64, num_warps=4, num_stages=1)
    if arch is not None and arch < 90:
        # Before Hopper the two tiles below hit 255 registers and spill (20-260 B at 64 x 64, 2-7 KB at
        # 128 x 128, compile_check --arch 80); one 64 x 128 tile at 8 warps takes 179-186
        # registers at 2, 3 and 4 bits with no spill.
        return PrefillConfig(block_m=64, block_n=128, num_warps=8, num_stages=1)
    if m <= 64:
        return PrefillConfig(block_m=64, block_n=64, num_warps=4, num_stages=1)
    return PrefillConfig(block_m=128, block_n=128, num_warps=8, num_stages=1)


def dequant_matmul(x: torch.Tensor, weights: KernelWeights, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Fallback for large M: W.T in x's dtype (one kernel), then cuBLAS."""
    weight_t = dequantize_transposed(weights, x.dtype)
    if bias is None:
        return torch.matmul(x, weight_t)
    return torch.addmm(bias.to(x.dtype), x, weight_t)


def quantized_matmul(x: torch.Tensor, weights: KernelWeights, bias: Optional[torch.Tensor] = None,
                     algorithm: Optional[str] = None) -> torch.Tensor:
    """out[M, N] = x[M, K] @ W.T (+ bias) for a 2-D contiguous fp16/bf16 x; `algorithm` overrides the
    choice by M (for tests and the benchmark)."""
    m = x.shape[0]
    algorithm = algorithm or choose_algorithm(m, weights)
    if algorithm == "gemv_splitk":
        config = decode_config(m, weights.bits, weights.out_features, weights.n_blocks,
                               streaming_multiprocessors(x.device), compute_capability(x.device))
        return gemv_splitk(x, weights, bias, block_n=config.block_n, split_k=config.split_k,
                           num_warps=config.num_warps, num_stages=config.num_stages)
    if algorithm == "gemm_tiled":
        config = prefill_config(m, compute_capability(x.device))
        return gemm_tiled(x, weights, bias, block_m=config.block_m, block_n=config.block_n,
                          num_warps=config.num_warps, num_stages=config.num_stages)
    if algorithm == "dequant_matmul":
        return dequant_matmul(x, weights, bias)
    raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {ALGORITHMS}")
