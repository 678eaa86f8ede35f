"""Round-to-nearest (RTN) on GPTQ's grid: the layer-0 probe of VLMQ and the RTN baseline both use it.

The grid is GPTQModel's `Quantizer` with mse search off: per group of `group_size` input columns, the range
[min(w, 0), max(w, 0)] is split into 2^bits - 1 steps, the zero point is rounded to an integer code, and each
weight is rounded to the nearest code. RTN is GPTQ without the error feedback, so the gap between the two
shows what the calibration-driven methods buy (synth/rtn_baseline.py applies it to a whole model).
"""
from __future__ import annotations

import torch


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
    w = weight.detach().float().reshape(out_features, in_features // group, group)
    scale, zero = group_grid(w, bits, sym=sym)
    return on_grid(w, scale, zero, bits).reshape(out_features, in_features).to(weight.dtype)


def group_grid(w: torch.Tensor, bits: int, *, sym: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each group, for `w` shaped [..., group] (the last axis is one group)."""
    maxq = 2**bits - 1
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
    return scale, zero


def on_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """`w` rounded to the nearest code of the grid (scale, zero), dequantized."""
    codes = torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)
    return scale * (codes - zero)
