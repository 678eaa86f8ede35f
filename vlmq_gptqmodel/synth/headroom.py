"""Can a trained model rank quantizers? A check per decoder linear that takes a minute, not a quality run.

GPTQ feeds each column's rounding error back into the columns not yet rounded, weighted by the inputs'
second moment H = E[x xᵀ]. Where the inputs span only a few directions of a wide layer, almost all of the
error can be moved where no input looks, and GPTQ at 2 bits then does less harm than RTN at 4 bits. Such a
model cannot show a method that loses less than GPTQ. The issue-15 acceptance asks for the opposite: RTN
W4 within 1 point of FP while GPTQ W2 loses 8. So, per linear, on calibration inputs:
- the participation ratio (tr H)² / ‖H‖²_F: how many directions the inputs really span (of `in_features`),
  and the share of the energy in the strongest one;
- the layer error tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) of RTN and of GPTQ (act-order, damp 0.01) at a few bit widths;
- headroom: GPTQ's error at low bits over RTN's at 4 bits (well above 1 is needed; tools/TRAINING.md),
  on all tokens and on the text tokens alone (GPTQ solved on all of them, as it is in use).

The GPTQ here is a plain reference (column by column, groups taken in act order, RTN's grid), not
GPTQModel's code path: it answers "how much room is there", while the quality benchmark measures methods.
"""
from __future__ import annotations

from typing import Dict, Iterable, Sequence

import torch

from ..rtn import group_grid, on_grid, rtn_quantize_weight
from .rtn_baseline import decoder_linears


def _eigenvalues(h: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(h.double()).clamp(min=0)


def participation_ratio(h: torch.Tensor) -> float:
    """(Σλ)² / Σλ² over H's eigenvalues: d for an isotropic H of size d, 1 for a rank-1 H."""
    eigenvalues = _eigenvalues(h)
    return float(eigenvalues.sum() ** 2 / eigenvalues.pow(2).sum())


def top_direction_share(h: torch.Tensor) -> float:
    """λ_max / Σλ: the share of the inputs' energy in their single strongest direction (1/d when isotropic)."""
    eigenvalues = _eigenvalues(h)
    return float(eigenvalues.max() / eigenvalues.sum())


def layer_error(weight: torch.Tensor, quantized: torch.Tensor, h: torch.Tensor) -> float:
    """tr(ΔW H ΔWᵀ) / tr(W H Wᵀ): the layer's output error on inputs with second moment H, relative."""
    w, delta = weight.double(), (weight - quantized).double()
    return float(torch.einsum("oi,ij,oj->", delta, h.double(), delta) / torch.einsum("oi,ij,oj->", w, h.double(), w))


def gptq_reference(weight: torch.Tensor, h: torch.Tensor, bits: int, group_size: int, *,
                   damp: float = 0.01) -> torch.Tensor:
    """GPTQ with act-order: columns in order of decreasing H diagonal, each group's grid set from the
    (error-updated) weights when its first column comes up, each rounding error pushed onto the later columns
    through the Cholesky factor of H⁻¹. Returns the dequantized weight in the original column order."""
    out_features, in_features = weight.shape
    if in_features % group_size:
        raise ValueError(f"group_size={group_size} must divide in_features={in_features}")
    order = torch.argsort(torch.diag(h), descending=True, stable=True)
    w = weight.double()[:, order].clone()
    hp = h.double()[order][:, order].clone()
    hp += damp * torch.diag(hp).mean() * torch.eye(in_features, dtype=hp.dtype, device=hp.device)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hp)), upper=True)
    q = torch.empty_like(w)
    for j in range(in_features):
        if j % group_size == 0:
            scale, zero = group_grid(w[:, j:j + group_size], bits)
        q[:, j] = on_grid(w[:, j:j + 1], scale, zero, bits)[:, 0]
        error = (w[:, j] - q[:, j]) / u[j, j]
        w[:, j + 1:] -= error[:, None] * u[j, j + 1:][None, :]
    return q[:, torch.argsort(order)].to(weight.dtype)


@torch.no_grad()
def linear_input_moments(linears: Dict[str, torch.nn.Module], model, batches: Iterable[dict],
                         keep_token=None) -> Dict[str, torch.Tensor]:
    """E[x xᵀ] of each of `linears`' inputs while `model(**batch)` runs over `batches` (unpadded): over all
    tokens, or those where `keep_token(input_ids)` (a boolean mask over the batch's flattened ids) is true."""
    sums = {name: 0.0 for name in linears}
    counts = dict.fromkeys(linears, 0)
    kept = None

    def keep(name):
        def hook(module, args, output):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            if kept is not None:
                x = x[kept]
            sums[name] = sums[name] + x.T @ x
            counts[name] += x.shape[0]
        return hook

    handles = [module.register_forward_hook(keep(name)) for name, module in linears.items()]
    try:
        for batch in batches:
            kept = None if keep_token is None else keep_token(batch["input_ids"].reshape(-1))
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    if not all(counts.values()):
        raise ValueError("no token of the batches reached the linears (or was kept): nothing to take the moments of")
    return {name: sums[name] / counts[name] for name in linears}


def input_moments(model, batches: Sequence[dict], keep_token=None) -> Dict[str, torch.Tensor]:
    """E[x xᵀ] of every decoder linear's input over the tokens of `batches` (unpadded batches of one row):
    all of them, or those where `keep_token(input_ids)` (a boolean mask over the row's ids) is true."""
    return linear_input_moments(decoder_linears(model), model, batches, keep_token)


def headroom_rows(model, moments: Dict[str, torch.Tensor], bits=(2, 3), group_size: int = 128,
                  text_moments: Dict[str, torch.Tensor] | None = None) -> list[dict]:
    """One row per decoder linear: its participation ratio and RTN / GPTQ layer errors at `bits` and RTN at 4.
    With `text_moments` (the text tokens' E[x xᵀ]) also GPTQ's and RTN W4's errors on the text tokens alone,
    GPTQ still solved on all tokens: the tokens a vision-dominated H neglects (VLMQ's premise)."""
    rows = []
    for name, module in decoder_linears(model).items():
        w, h = module.weight.detach().double(), moments[name]
        rtn4 = rtn_quantize_weight(w, 4, group_size)
        row = {"linear": name, "in_features": w.shape[1], "participation": participation_ratio(h),
               "top_share": top_direction_share(h), "rtn4": layer_error(w, rtn4, h)}
        for b in bits:
            gptq = gptq_reference(w, h, b, group_size)
            row[f"rtn{b}"] = layer_error(w, rtn_quantize_weight(w, b, group_size), h)
            row[f"gptq{b}"] = layer_error(w, gptq, h)
            if text_moments is not None:
                row[f"text_gptq{b}"] = layer_error(w, gptq, text_moments[name])
        if text_moments is not None:
            row["text_rtn4"] = layer_error(w, rtn4, text_moments[name])
        rows.append(row)
    return rows
