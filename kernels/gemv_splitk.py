"""Decode-sized M (1-16): stream the packed weights once, split K across programs.

Each program owns BLOCK_N output columns and a contiguous range of blocks (512 or 640 rows). Per block
it loads every packed word exactly once ([16, BLOCK_N] int32 tiles, contiguous along N, so loads are
128-bit) and applies each decoded sub-tile to all M rows, so weight traffic does not grow with M.
The scale is applied once per group and column, never per weight (triton_tiles.py: v = 1 + q / 2**b):
- M = 1: sum_k x_k * s * (q_k - z) = s * (2**b * sum_k x_k * v_k - (2**b + z) * sum_k x_k), so a weight
  costs one shift, one mask|or and one FMA. Products go to per-lane accumulators [16, BLOCK_N] (no
  cross-thread reduction inside the loop; one at the end).
- M = 2..16, padded to 2, 4 or 16 rows (block_m_for): tl.dot on q - z = 2**b * v - (2**b + z), a small
  integer that is exact in fp16/bf16, so W is never rounded.
Either way the result is W applied exactly, summed in fp32. SPLIT_K > 1 adds fp32 partials into a
zeroed fp32 buffer with atomics.
"""
import torch
import triton
import triton.language as tl

from .layout import KernelWeights
from .triton_tiles import (INTERPRETING, ONE_F32_BITS, SUBTILE_ROWS, dot, empty_subtile_state, group_span,
                           load_x_subtile, load_x_vector, next_subtile, subtile_values, subtiles_per_block)


@triton.jit
def _gemv_splitk_kernel(
    x_ptr, words_ptr, scales_ptr, zeros_ptr, perm_ptr, bias_ptr, out_ptr,
    M, N, K, n_groups, n_blocks, blocks_per_split, stride_xm, stride_om, one_bits,
    BITS: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_PERM: tl.constexpr, HAS_BIAS: tl.constexpr,
    ATOMIC_OUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    SPAN: tl.constexpr = group_span(GROUP_SIZE, BITS)
    USE_DOT: tl.constexpr = BLOCK_M > 1
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    # Rows of the accumulator: activation rows for tl.dot, the 16 sub-tile lanes for M = 1.
    ACC_ROWS: tl.constexpr = BLOCK_M if USE_DOT else SUBTILE_ROWS
    acc = tl.zeros([ACC_ROWS, BLOCK_N], dtype=tl.float32)
    block_start = pid_k * blocks_per_split
    block_end = tl.minimum(block_start + blocks_per_split, n_blocks)
    words, scale, shifted_zero = empty_subtile_state(BLOCK_N)
    for block in range(block_start, block_end):
        for j in tl.static_range(subtiles_per_block(BITS)):
            row0, words, scale, shifted_zero = next_subtile(
                words_ptr, scales_ptr, zeros_ptr, block, words, scale, shifted_zero, offs_n, n_mask, N, K, n_groups,
                j, BITS, GROUP_SIZE)
            if (j * SUBTILE_ROWS) % SPAN == 0:
                group_acc = tl.zeros([ACC_ROWS, BLOCK_N], dtype=tl.float32)
                if not USE_DOT:
                    x_sum = tl.zeros([SUBTILE_ROWS], dtype=tl.float32)
            v = subtile_values(words, one_bits, j, BITS)
            if USE_DOT:
                # q - z = 2**b * v - (2**b + z): an exact small integer, exact in fp16/bf16 too.
                x = load_x_subtile(x_ptr, perm_ptr, offs_m, m_mask, row0, K, stride_xm, HAS_PERM)
                centered = v * (1 << BITS) - shifted_zero[None, :]
                group_acc = dot(x, centered.to(x.dtype), group_acc, UPCAST_DOT)
            else:
                x = load_x_vector(x_ptr, perm_ptr, row0, K, HAS_PERM)
                group_acc += x[:, None] * v
                x_sum += x
            if (j * SUBTILE_ROWS + SUBTILE_ROWS) % SPAN == 0:
                if USE_DOT:
                    acc += scale[None, :] * group_acc
                else:
                    acc += scale[None, :] * (group_acc * (1 << BITS) - x_sum[:, None] * shifted_zero[None, :])
    if USE_DOT:
        result = acc
    else:
        result = tl.sum(acc, axis=0)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    if ATOMIC_OUT:
        tl.atomic_add(out_ptrs, result, mask=out_mask)
    else:
        if HAS_BIAS:
            result += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptrs, result.to(out_ptr.dtype.element_ty), mask=out_mask)


def block_m_for(m: int) -> int:
    """Rows handled per program: 1 (per-lane FMAs), else tl.dot on 2 or 4 rows for M <= 4 and 16 above
    (compile_check compiles all three for sm_80/sm_90)."""
    if not 1 <= m <= 16:
        raise ValueError(f"gemv_splitk handles 1 <= M <= 16 rows, got M={m}; use gemm_tiled")
    return triton.next_power_of_2(m) if m <= 4 else 16


def gemv_splitk(x: torch.Tensor, weights: KernelWeights, bias=None, *, block_n: int = 64, split_k: int = 1,
                num_warps: int = 4) -> torch.Tensor:
    """out[M, N] = x[M, K] @ W.T (+ bias) for M <= 16; x contiguous fp16/bf16."""
    m, k = x.shape
    n = weights.out_features
    n_blocks = weights.n_blocks
    blocks_per_split = triton.cdiv(n_blocks, max(1, min(split_k, n_blocks)))
    split_k = triton.cdiv(n_blocks, blocks_per_split)
    atomic = split_k > 1
    out = torch.zeros((m, n), device=x.device, dtype=torch.float32) if atomic else \
        torch.empty((m, n), device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(n, block_n), split_k)
    _gemv_splitk_kernel[grid](
        x, *weights.kernel_operands(bias), out,
        m, n, k, weights.n_groups, n_blocks, blocks_per_split, x.stride(0), out.stride(0), ONE_F32_BITS,
        BITS=weights.bits, GROUP_SIZE=weights.group_size, HAS_PERM=weights.perm is not None,
        HAS_BIAS=bias is not None, ATOMIC_OUT=atomic, BLOCK_M=block_m_for(m), BLOCK_N=block_n,
        UPCAST_DOT=INTERPRETING, num_warps=num_warps,
    )
    if not atomic:
        return out
    if bias is not None:
        out += bias.float()
    return out.to(x.dtype)
