"""Dequantize the kernel layout to a dense W.T [K, N] in the activation dtype (one pass, for the
dequantize-then-matmul fallback). Rows are written back to their original input positions, so the
result multiplies un-permuted activations directly."""
import torch
import triton
import triton.language as tl

from .layout import KernelWeights
from .pair_decode import USE_ASM
from .triton_tiles import dequantized_subtile, empty_subtile_state, next_subtile, pair_rows, subtiles_per_block


@triton.jit
def _dequant_kernel(
    words_ptr, scales_ptr, zeros_ptr, perm_ptr, out_ptr, N, K, n_groups,
    BITS: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_PERM: tl.constexpr, BLOCK_N: tl.constexpr, ASM: tl.constexpr,
):
    ROWS: tl.constexpr = 2 * pair_rows(GROUP_SIZE)
    block = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    words, scale, zero = empty_subtile_state(BLOCK_N, GROUP_SIZE)
    for j in tl.static_range(subtiles_per_block(BITS, GROUP_SIZE)):
        row0, words, scale, zero = next_subtile(
            words_ptr, scales_ptr, zeros_ptr, block, words, scale, zero, offs_n, n_mask, N, K, n_groups,
            j, BITS, GROUP_SIZE)
        w = dequantized_subtile(words, scale, zero, j, BITS, ASM)
        rows = row0 + tl.arange(0, ROWS)
        k_mask = rows < K
        if HAS_PERM:
            rows = tl.load(perm_ptr + rows, mask=k_mask, other=0)
        # int64: K * N reaches 2**31 for large-vocabulary layers, past int32 offsets
        ptrs = out_ptr + rows[:, None].to(tl.int64) * N + offs_n[None, :]
        tl.store(ptrs, w.to(out_ptr.dtype.element_ty), mask=k_mask[:, None] & n_mask[None, :])


def dequantize_transposed(weights: KernelWeights, dtype: torch.dtype, *, block_n: int = 128,
                          num_warps: int = 4) -> torch.Tensor:
    """W.T [K, N] in `dtype` (rows in the checkpoint's input order)."""
    n, k = weights.out_features, weights.in_features
    out = torch.empty((k, n), device=weights.words.device, dtype=dtype)
    grid = (weights.n_blocks, triton.cdiv(n, block_n))
    words, scales, zeros, perm, _ = weights.kernel_operands(bias=None)
    _dequant_kernel[grid](
        words, scales, zeros, perm, out, n, k, weights.n_groups,
        BITS=weights.bits, GROUP_SIZE=weights.group_size, HAS_PERM=weights.perm is not None,
        BLOCK_N=block_n, ASM=USE_ASM, num_warps=num_warps,
    )
    return out
