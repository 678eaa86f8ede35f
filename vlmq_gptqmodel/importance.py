"""Token importance factors g_n (the diagonal of G) as side-effect-free tensor functions.

Shapes: a calibration batch has tokens [B, S]; per-token tensors are [B, S], per-channel ones
[B, S, C]. Lists hold one tensor per calibration batch. `valid` masks are bool [B, S]: False for
padding, which always gets g = 0.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

Tensor = torch.Tensor


class DegenerateImportance(ValueError):
    """G carries no information (all zero or non-finite): the caller must fall back to G = I."""


def token_factors(grad: Tensor, norm: str = "l1") -> Tensor:
    """Reduce a gradient (or error) [..., N, C] over output channels to one factor per token [..., N].

    l1 is the paper's Eq. 4, mean_c |P_{c,n}|; l2 is the root mean square, i.e. the token's l2 norm
    divided by sqrt(C) so both variants live on the same scale.
    """
    grad = grad.float()
    if norm == "l1":
        return grad.abs().mean(dim=-1)
    if norm == "l2":
        return grad.pow(2).mean(dim=-1).sqrt()
    raise ValueError(f"norm={norm!r}: must be 'l1' or 'l2'.")


def _valid_or_all(factors: Tensor, valid: Optional[Tensor]) -> Tensor:
    if valid is None:
        return torch.ones_like(factors, dtype=torch.bool)
    if valid.shape != factors.shape:
        raise ValueError(f"valid mask shape {tuple(valid.shape)} != factor shape {tuple(factors.shape)}")
    return valid.to(device=factors.device, dtype=torch.bool)


def normalize_factors(
    factors: Sequence[Tensor],
    valid: Optional[Sequence[Optional[Tensor]]] = None,
    min_weight: float = 0.0,
) -> List[Tensor]:
    """Scale factors so their mean over all valid calibration tokens is 1, then floor at `min_weight`.

    GPTQ's damping is relative to mean(diag H), so a global scale of G changes nothing but the
    magnitude of logged losses; mean 1 keeps H_tilde = X G^2 X^T on the scale of H = X X^T.
    Padding tokens are set to 0. Raises DegenerateImportance when nothing is left to normalize.
    """
    valid = list(valid) if valid is not None else [None] * len(factors)
    masks = [_valid_or_all(f, v) for f, v in zip(factors, valid)]
    total = sum(float(f.float()[m].sum()) for f, m in zip(factors, masks))
    count = sum(int(m.sum()) for m in masks)
    finite = all(bool(torch.isfinite(f.float()[m]).all()) for f, m in zip(factors, masks))
    if count == 0 or not finite or not total > 0.0:
        raise DegenerateImportance(
            f"importance factors are degenerate (tokens={count}, sum={total}, finite={finite})"
        )
    mean = total / count
    out = []
    for f, m in zip(factors, masks):
        g = (f.float() / mean).clamp_min(min_weight)
        out.append(torch.where(m, g, torch.zeros_like(g)))
    return out


def temper(factors: Sequence[Tensor], power: float) -> List[Tensor]:
    """Factors raised to `power` (before normalize_factors): below 1 flattens their tail, so the weighted
    Hessian rests on more tokens; 0 makes every token alike (0 ** 0 is 1)."""
    return [f.float().pow(power) for f in factors]


def modality_factors(
    factors: Sequence[Tensor],
    vision: Sequence[Tensor],
    valid: Optional[Sequence[Optional[Tensor]]] = None,
) -> List[Tensor]:
    """MBQ-style baseline: every vision token gets the mean factor of all vision tokens, every text
    token the mean of all text tokens (means over the whole calibration set)."""
    valid = list(valid) if valid is not None else [None] * len(factors)
    masks = [_valid_or_all(f, v) for f, v in zip(factors, valid)]
    vis = [v.to(device=f.device, dtype=torch.bool) for f, v in zip(factors, vision)]

    def mean_where(select) -> float:
        num = sum(float(f.float()[s].sum()) for f, s in zip(factors, select))
        den = sum(int(s.sum()) for s in select)
        return num / den if den else 0.0

    vision_mean = mean_where([m & v for m, v in zip(masks, vis)])
    text_mean = mean_where([m & ~v for m, v in zip(masks, vis)])
    return [
        torch.where(v, torch.full_like(f.float(), vision_mean), torch.full_like(f.float(), text_mean)) * m
        for f, v, m in zip(factors, vis, masks)
    ]


def random_lowimportance_factors(vision: Tensor, ratio: float, factor: float, generator: torch.Generator) -> Tensor:
    """VLMQ_naive (paper Table 5): g = `factor` for a random `ratio` of the vision tokens, 1 elsewhere."""
    draw = torch.rand(vision.shape, generator=generator, device="cpu").to(vision.device)
    low = vision.to(torch.bool) & (draw < ratio)
    return torch.where(low, torch.full(vision.shape, factor, device=vision.device), torch.ones(vision.shape, device=vision.device))


def attention_received(probs: Tensor) -> Tensor:
    """FastV-style score: attention each key token receives, averaged over heads and over all query
    positions. probs: [B, heads, Q, K] softmax probabilities -> [B, K]."""
    return probs.float().mean(dim=1).mean(dim=1)


def weight_tokens(x: Tensor, g: Tensor) -> Tensor:
    """Scale each token row of x [..., N, C] by g [..., N] in fp32. (G X)(G X)^T = X G^2 X^T, so
    feeding weighted rows to an unweighted Hessian accumulator gives the VLMQ Hessian."""
    if tuple(x.shape[:-1]) != tuple(g.shape):
        raise ValueError(f"token weights {tuple(g.shape)} do not match activation rows {tuple(x.shape[:-1])}")
    return x.float() * g.to(device=x.device, dtype=torch.float32).unsqueeze(-1)


def effective_tokens(g: Tensor) -> float:
    """Kish's effective sample size of the Hessian weights g^2: (sum g^2)^2 / sum g^4. Every token counts
    fully under G = I (the token count); a G that rests on k equal tokens gives k."""
    h = g.double().flatten().pow(2)
    return float(h.sum() ** 2 / h.pow(2).sum()) if h.sum() > 0 else 0.0


def summarize(g: Sequence[Tensor], vision: Sequence[Tensor], valid: Optional[Sequence[Optional[Tensor]]] = None) -> dict:
    """Statistics a user can read off a run: how much G departs from uniform, and between modalities."""
    valid = list(valid) if valid is not None else [None] * len(g)
    flat_all, flat_vis, flat_txt = [], [], []
    for f, v, m in zip(g, vision, valid):
        m = _valid_or_all(f, m)
        v = v.to(device=f.device, dtype=torch.bool)
        flat_all.append(f.float()[m])
        flat_vis.append(f.float()[m & v])
        flat_txt.append(f.float()[m & ~v])
    a, vi, tx = (torch.cat(t) if t else torch.zeros(0) for t in (flat_all, flat_vis, flat_txt))
    mean = float(a.mean()) if a.numel() else 0.0
    return {
        "tokens": int(a.numel()),
        "vision_tokens": int(vi.numel()),
        "cv": float(a.std() / a.mean()) if a.numel() > 1 and mean > 0 else 0.0,
        "effective_tokens": effective_tokens(a) if a.numel() else 0.0,
        "vision_mean": float(vi.mean()) if vi.numel() else None,
        "text_mean": float(tx.mean()) if tx.numel() else None,
        "min": float(a.min()) if a.numel() else None,
        "max": float(a.max()) if a.numel() else None,
    }
