"""Decode-sized M (1-16): stream the packed weights once, split K across programs.

Each program owns BLOCK_N output columns and a contiguous range of blocks (512 or 640 rows). Per block
it loads every packed word exactly once ([P, BLOCK_N] int32 tiles, contiguous along N, so loads are
128-bit) and applies each decoded sub-tile to all M rows, so weight traffic does not grow with M.
W is the tensor cores' A operand, out.T = W @ x.T, with the activations padded to BLOCK_M = 8 or 16
rows (the MMA's smallest N): a sub-tile of 2P rows decodes into the exact centered codes q - z in the
activation dtype with one LOP3 and one HFMA2 per two weights (pair_decode.py), the MMA sums x * (q - z)
exactly in fp32, and the scale multiplies the fp32 group sum once per group and column. So W is applied
exactly, summed in fp32. SPLIT_K > 1 adds fp32 partials into a zeroed fp32 buffer with atomics.
"""
import torch
import triton
import triton.language as tl

from .layout import KernelWeights
from .pair_decode import USE_ASM
from .triton_tiles import (INTERPRETING, dot, empty_subtile_state, group_span, load_x_subtile, next_subtile, pair_tile,
                           pair_rows, subtile_pairs, subtiles_per_block)


@triton.jit
def _gemv_splitk_kernel(
    x_ptr, words_ptr, scales_ptr, zeros_ptr, perm_ptr, bias_ptr, out_ptr,
    M, N, K, n_groups, n_blocks, blocks_per_split, stride_xm, stride_om,
    BITS: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_PERM: tl.constexpr, HAS_BIAS: tl.constexpr,
    ATOMIC_OUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ASM: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    SPAN: tl.constexpr = group_span(GROUP_SIZE, BITS)
    ROWS: tl.constexpr = 2 * pair_rows(GROUP_SIZE)
    IS_BF16: tl.constexpr = x_ptr.dtype.element_ty == tl.bfloat16
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    block_start = pid_k * blocks_per_split
    block_end = tl.minimum(block_start + blocks_per_split, n_blocks)
    words, scale, zero = empty_subtile_state(BLOCK_N, GROUP_SIZE)
    for block in range(block_start, block_end):
        for j in tl.static_range(subtiles_per_block(BITS, GROUP_SIZE)):
            row0, words, scale, zero = next_subtile(
                words_ptr, scales_ptr, zeros_ptr, block, words, scale, zero, offs_n, n_mask, N, K, n_groups,
                j, BITS, GROUP_SIZE)
            if (j * ROWS) % SPAN == 0:
                group_acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
            centered = pair_tile(subtile_pairs(words, zero, j, BITS, IS_BF16, ASM), IS_BF16, UPCAST_DOT)
            x = load_x_subtile(x_ptr, perm_ptr, offs_m, m_mask, row0, K, stride_xm, ROWS, HAS_PERM)
            group_acc = dot(tl.trans(centered), tl.trans(x), group_acc, UPCAST_DOT)
            if (j * ROWS + ROWS) % SPAN == 0:
                acc += scale[:, None] * group_acc
    out_ptrs = out_ptr + offs_m[None, :] * stride_om + offs_n[:, None]
    out_mask = m_mask[None, :] & n_mask[:, None]
    if ATOMIC_OUT:
        tl.atomic_add(out_ptrs, acc, mask=out_mask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def effective_splits(n_blocks: int, split_k: int) -> int:
    """The number of K splits that run: every split takes the same whole number of blocks, so asking for 9 of 37
    blocks gives 8 splits of 5 (the last one shorter)."""
    return triton.cdiv(n_blocks, triton.cdiv(n_blocks, max(1, min(split_k, n_blocks))))


def block_m_for(m: int) -> int:
    """Activation rows per program, padded to the MMA's N: 8, or 16 for M > 8 (compile_check compiles both)."""
    if not 1 <= m <= 16:
        raise ValueError(f"gemv_splitk handles 1 <= M <= 16 rows, got M={m}; use gemm_tiled")
    return 8 if m <= 8 else 16


def gemv_splitk(x: torch.Tensor, weights: KernelWeights, bias=None, *, block_n: int = 64, split_k: int = 1,
                num_warps: int = 4, num_stages: int = 1) -> torch.Tensor:
    """out[M, N] = x[M, K] @ W.T (+ bias) for M <= 16; x contiguous fp16/bf16."""
    m, k = x.shape
    n = weights.out_features
    n_blocks = weights.n_blocks
    split_k = effective_splits(n_blocks, split_k)
    blocks_per_split = triton.cdiv(n_blocks, split_k)
    atomic = split_k > 1
    out = torch.zeros((m, n), device=x.device, dtype=torch.float32) if atomic else \
        torch.empty((m, n), device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(n, block_n), split_k)
    _gemv_splitk_kernel[grid](
        x, *weights.kernel_operands(bias), out,
        m, n, k, weights.n_groups, n_blocks, blocks_per_split, x.stride(0), out.stride(0),
        BITS=weights.bits, GROUP_SIZE=weights.group_size, HAS_PERM=weights.perm is not None,
        HAS_BIAS=bias is not None, ATOMIC_OUT=atomic, BLOCK_M=block_m_for(m), BLOCK_N=block_n,
        ASM=USE_ASM, UPCAST_DOT=INTERPRETING, num_warps=num_warps, num_stages=num_stages,
    )
    if not atomic:
        return out
    if bias is not None:
        out += bias.float()
    return out.to(x.dtype)
