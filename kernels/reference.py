"""Plain-torch dequantization and matmul: the ground truth the Triton kernels are tested against."""
from typing import Optional

import torch

from .layout import GPTQCodes


def dequantize(unpacked: GPTQCodes) -> torch.Tensor:
    """W [N, K] in fp32: scale[g_idx[k], n] * (code[k, n] - zero[g_idx[k], n]), as GPTQModel defines it."""
    g_idx = unpacked.g_idx.long()
    codes = unpacked.codes.float()
    weight_t = unpacked.scales.float()[g_idx] * (codes - unpacked.zeros.float()[g_idx])
    return weight_t.t().contiguous()


def linear(x: torch.Tensor, unpacked: GPTQCodes, bias: Optional[torch.Tensor] = None,
           weight_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """x @ W.T (+ bias), computed and returned in float64 (no output rounding).

    weight_dtype rounds W to that dtype first, as a kernel that dequantizes into the activation dtype
    before a tensor-core dot does (and as GPTQModel's TorchLinear does); None keeps W exact.
    """
    weight = dequantize(unpacked)
    if weight_dtype is not None:
        weight = weight.to(weight_dtype)
    out = x.double() @ weight.double().t()
    if bias is not None:
        out = out + bias.double()
    return out
