"""Round-to-nearest (RTN) baseline: fake-quantize the language model's decoder linears on GPTQ's grid.

The grid is GPTQModel's `Quantizer` with mse search off: per group of `group_size` input columns, the range
[min(w, 0), max(w, 0)] is split into 2^bits - 1 steps, the zero point is rounded to an integer code, and each
weight is rounded to the nearest code. RTN is GPTQ without the error feedback, so the gap between the two
shows what the calibration-driven methods buy.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def rtn_quantize_weight(weight: torch.Tensor, bits: int, group_size: int, *, sym: bool = False) -> torch.Tensor:
    """Dequantized RTN copy of a [out, in] weight; groups run along the input dimension (-1: whole row)."""
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D [out, in] weight, got shape {tuple(weight.shape)}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits={bits} must be in 2..8")
    out_features, in_features = weight.shape
    group = in_features if group_size == -1 else group_size
    if group <= 0 or in_features % group:
        raise ValueError(f"group_size={group_size} must divide in_features={in_features} (or be -1)")
    maxq = 2**bits - 1
    w = weight.detach().float().reshape(out_features, in_features // group, group)
    xmin = w.amin(-1, keepdim=True).clamp(max=0)
    xmax = w.amax(-1, keepdim=True).clamp(min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    # An all-zero group gets the range [-1, 1] so its scale stays finite (as in GPTQModel).
    empty = (xmin == 0) & (xmax == 0)
    xmin, xmax = torch.where(empty, -1.0, xmin), torch.where(empty, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    codes = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
    return (scale * (codes - zero)).reshape(out_features, in_features).to(weight.dtype)


def decoder_linears(model) -> dict[str, nn.Linear]:
    """The linears GPTQModel quantizes in a Qwen-VL model: every nn.Linear inside the decoder layers."""
    layers = model.model.language_model.layers
    return {f"model.language_model.layers.{i}.{name}": module
            for i, layer in enumerate(layers) for name, module in layer.named_modules()
            if isinstance(module, nn.Linear)}


def apply_rtn(model, bits: int, group_size: int, *, sym: bool = False, inplace: bool = False,
              attention_only: bool = False):
    """A copy of `model` (or `model` itself with inplace=True) with RTN fake-quantized decoder linears
    (attention_only: the self-attention projections only, the MLP kept FP).

    The vision tower, embeddings and lm_head stay FP, as in GPTQModel's Qwen-VL checkpoints.
    """
    target = model if inplace else copy.deepcopy(model)
    with torch.no_grad():
        for name, module in decoder_linears(target).items():
            if attention_only and ".mlp." in name:
                continue
            module.weight.copy_(rtn_quantize_weight(module.weight, bits, group_size, sym=sym))
    return target
