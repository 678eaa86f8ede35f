"""The one place that picks an algorithm and its launch configuration from the number of rows M.

    M <= 16                      gemv_splitk     weights streamed once, split-K when N alone cannot fill the GPU
    16 < M <= fused_gemm_max_m() gemm_tiled      fused dequant + tensor-core GEMM
    M > fused_gemm_max_m()       dequant_matmul  dequantize once into the activation dtype, then torch.matmul

Above some M the fused tile is compute-bound and re-dequantizes every weight tile for every row block,
while cuBLAS on a dequantized W costs FP16 matmul time plus one pass that writes 2 bytes per weight.
`benchmarks/linear_latency.py` times all three paths and reports the crossover. Measured on an H200
(benchmarks/results/gpu/, the only GPU measured so far): at M=64 dequantize + cuBLAS was faster than the
fused tile for every Table-11 shape at 2, 3 and 4 bits (e.g. down W2 90.6 vs 197.4 µs), so the default
sends M > 32 to cuBLAS; M = 17-32 was not measured and keeps the fused tile. VLMQ_FUSED_GEMM_MAX_M (or
`set_fused_gemm_max_m`) sets another crossover.
"""
import os
from dataclasses import dataclass
from typing import Optional

import torch
import triton

from .dequant import dequantize_transposed
from .gemm_tiled import gemm_tiled
from .gemv_splitk import gemv_splitk
from .layout import KernelWeights

DECODE_MAX_M = 16
FUSED_GEMM_MAX_M_ENV = "VLMQ_FUSED_GEMM_MAX_M"
DEFAULT_FUSED_GEMM_MAX_M = 32
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


def choose_algorithm(m: int) -> str:
    if m < 1:
        raise ValueError(f"need at least one activation row, got M={m}")
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
    # Named, not Triton's default 3: three stages take the GEMV to 250-255 registers and 57-97 KB of shared
    # memory on sm_90 (one stage: 164-168 and 8 KB), and compile_check reports the launch that runs.
    num_stages: int = 1


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


def decode_config(out_features: int, n_blocks: int, sm_count: int) -> DecodeConfig:
    # 128 columns at 4 warps: 16 weights per thread per activation value loaded (M = 1), and the fewest
    # SASS instructions per weight among the configurations compiled for sm_80/sm_90 (compile_check.py).
    block_n = 128
    n_tiles = triton.cdiv(out_features, block_n)
    # Split K only when the column tiles alone give fewer than two programs per SM, so that enough
    # loads are in flight; each split costs an fp32 atomic reduction plus a cast.
    split_k = max(1, min(n_blocks, triton.cdiv(2 * sm_count, n_tiles)))
    return DecodeConfig(block_n=block_n, split_k=split_k, num_warps=4)


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
    algorithm = algorithm or choose_algorithm(m)
    if algorithm == "gemv_splitk":
        config = decode_config(weights.out_features, weights.n_blocks, streaming_multiprocessors(x.device))
        return gemv_splitk(x, weights, bias, block_n=config.block_n, split_k=config.split_k,
                           num_warps=config.num_warps, num_stages=config.num_stages)
    if algorithm == "gemm_tiled":
        config = prefill_config(m, compute_capability(x.device))
        return gemm_tiled(x, weights, bias, block_m=config.block_m, block_n=config.block_n,
                          num_warps=config.num_warps, num_stages=config.num_stages)
    if algorithm == "dequant_matmul":
        return dequant_matmul(x, weights, bias)
    raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {ALGORITHMS}")
