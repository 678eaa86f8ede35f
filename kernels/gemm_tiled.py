"""Prefill-sized M: tiled GEMM on tensor cores with the weights dequantized in registers.

Each program computes a [BLOCK_M, BLOCK_N] output tile. Per block (512 or 640 rows) it loads the packed words
once, and per sub-tile of 2P rows dequantizes W = s * (q - z) (exact in fp32, see triton_tiles.py) into the
activation dtype, as TorchLinear and a dequantize-then-matmul do, and accumulates tl.dot in fp32. The scale is applied before the
dot, not after it as in gemv_splitk: a per-group epilogue on [BLOCK_M, BLOCK_N] would cost CUDA-core
work comparable to the MMAs for large tiles. Programs are grouped along M (GROUP_M) so that
consecutive programs reuse the same weight columns from L2.
"""
import torch
import triton
import triton.language as tl

from .layout import KernelWeights
from .pair_decode import USE_ASM
from .triton_tiles import (INTERPRETING, dequantized_subtile, dot, empty_subtile_state, load_x_subtile, next_subtile,
                           pair_rows, subtiles_per_block)


@triton.jit
def _gemm_tiled_kernel(
    x_ptr, words_ptr, scales_ptr, zeros_ptr, perm_ptr, bias_ptr, out_ptr,
    M, N, K, n_groups, n_blocks, stride_xm, stride_om,
    BITS: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_PERM: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr, ASM: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    ROWS: tl.constexpr = 2 * pair_rows(GROUP_SIZE)
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    programs_per_group = GROUP_M * tiles_n
    first_m = (pid // programs_per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % programs_per_group) % group_rows
    pid_n = (pid % programs_per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    words, scale, zero = empty_subtile_state(BLOCK_N, GROUP_SIZE)
    for block in range(0, n_blocks):
        for j in tl.static_range(subtiles_per_block(BITS, GROUP_SIZE)):
            row0, words, scale, zero = next_subtile(
                words_ptr, scales_ptr, zeros_ptr, block, words, scale, zero, offs_n, n_mask, N, K, n_groups,
                j, BITS, GROUP_SIZE)
            x = load_x_subtile(x_ptr, perm_ptr, offs_m, m_mask, row0, K, stride_xm, ROWS, HAS_PERM)
            w = dequantized_subtile(words, scale, zero, j, BITS, ASM).to(x.dtype)
            acc = dot(x, w, acc, UPCAST_DOT)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def gemm_tiled(x: torch.Tensor, weights: KernelWeights, bias=None, *, block_m: int = 64, block_n: int = 64,
               group_m: int = 8, num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """out[M, N] = x[M, K] @ W.T (+ bias), W rounded to x's dtype; x contiguous fp16/bf16."""
    m, k = x.shape
    n = weights.out_features
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _gemm_tiled_kernel[grid](
        x, *weights.kernel_operands(bias), out,
        m, n, k, weights.n_groups, weights.n_blocks, x.stride(0), out.stride(0),
        BITS=weights.bits, GROUP_SIZE=weights.group_size, HAS_PERM=weights.perm is not None,
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, GROUP_M=group_m, ASM=USE_ASM,
        UPCAST_DOT=INTERPRETING, num_warps=num_warps, num_stages=num_stages,
    )
    return out
