"""Per-layer token weights G for the target projections (Algorithm 1, lines 1-2).

Called once per decoder layer, before any of its linears is quantized, with the layer's
full-precision input stream X and the quantized-path input stream X_hat. Knows nothing about
GPTQModel: the glue hands it plain tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .attention_block import block_gradients, causal_mask, copy_attention_block, projection_errors
from .config import ATTENTION_PROJECTIONS, MLP_PROJECTIONS, VLMQConfig
from .families import QWEN_VL, Family
from .importance import (
    DegenerateImportance,
    attention_received,
    modality_factors,
    normalize_factors,
    random_lowimportance_factors,
    summarize,
    temper,
    token_factors,
)
from .mlp_block import copy_mlp_block

Tensor = torch.Tensor


@dataclass
class LayerStreams:
    """One entry per calibration batch. Hidden states are [B, S, H]; masks are bool [B, S]."""

    fp: Sequence[Tensor]
    quant: Sequence[Tensor]
    position_embeddings: Sequence[Tuple[Tensor, Tensor]]
    keep: Sequence[Optional[Tensor]]
    vision: Sequence[Tensor]


def layer_importance(
    cfg: VLMQConfig,
    layer: nn.Module,
    layer_index: int,
    streams: LayerStreams,
    device: torch.device,
    rtn_weight_transform: Optional[Callable[[str, Tensor], Tensor]] = None,
    family: Family = QWEN_VL,
) -> Tuple[Dict[str, List[Tensor]], dict]:
    """Returns ({projection: [G_b as [B, S] float32 on CPU]}, report) for `cfg.targets`."""
    names = cfg.targets
    report = {"layer": layer_index, "source": cfg.importance, "policy": None}
    with torch.inference_mode(False):  # GPTQModel calls in from inside inference mode
        raw = _raw_factors(cfg, layer, layer_index, streams, device, report, rtn_weight_transform, family)
    try:
        if cfg.importance == "modality":
            raw = {n: modality_factors(raw[n], streams.vision, streams.keep) for n in names}
        if cfg.power != 1.0:
            raw = {n: temper(raw[n], cfg.power) for n in names}
        weights = {n: normalize_factors(raw[n], streams.keep, cfg.min_weight) for n in names}
    except DegenerateImportance as e:
        report["policy"] = f"uniform (fallback: {e})"
        weights = {n: _uniform(streams) for n in names}
    report["projections"] = {n: summarize(weights[n], streams.vision, streams.keep) for n in names}
    return weights, report


def _uniform(streams: LayerStreams) -> List[Tensor]:
    return [
        torch.ones(x.shape[:2]) if keep is None else keep.float().cpu()
        for x, keep in zip(streams.quant, streams.keep)
    ]


def _raw_factors(cfg, layer, layer_index, streams, device, report, rtn_weight_transform,
                 family: Family) -> Dict[str, List[Tensor]]:
    names = cfg.targets
    if cfg.importance == "constant":
        return {n: _uniform(streams) for n in names}
    if cfg.importance == "random":
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + layer_index)
        per_batch = [random_lowimportance_factors(v.cpu(), cfg.random_ratio, cfg.random_factor, gen) for v in streams.vision]
        return {n: per_batch for n in names}
    if cfg.importance == "attention":
        block = copy_attention_block(layer, device, eager=True, family=family)
        per_batch = [attention_received(block.attention_probs(*_batch(streams, b, device, quant=True))).cpu()
                     for b in range(len(streams.quant))]
        return {n: per_batch for n in names}

    # gradient-derived sources ("gradient", "modality")
    no_signal = all(torch.equal(f, q) for f, q in zip(streams.fp, streams.quant))
    if no_signal and cfg.layer0 == "uniform":
        report["policy"] = "uniform (X_hat == X)"
        return {n: _uniform(streams) for n in names}
    attn_names = [n for n in names if n in ATTENTION_PROJECTIONS]
    mlp_names = [n for n in names if n in MLP_PROJECTIONS]
    block = copy_attention_block(layer, device, family=family)
    mlp = copy_mlp_block(layer, device, family=family) if mlp_names else None
    probe = mlp_probe = None
    if no_signal:  # layer0 == "rtn_probe"
        if rtn_weight_transform is None:
            raise ValueError("layer0='rtn_probe' needs a round-to-nearest weight transform")
        report["policy"] = "rtn_probe (X_hat == X)"
        probe = copy_attention_block(layer, device, weight_transform=rtn_weight_transform, family=family)
        if mlp_names:
            mlp_probe = copy_mlp_block(layer, device, weight_transform=rtn_weight_transform, family=family)
    loss_gradient = partial(block_gradients, at=cfg.gradient_at) if cfg.granularity == "block" else projection_errors
    out: Dict[str, List[Tensor]] = {n: [] for n in names}
    for b in range(len(streams.quant)):
        x_fp, mask, pe = _batch(streams, b, device, quant=False)
        # the probe feeds the same X through round-to-nearest weights instead of a different X_hat
        x_q = x_fp if probe is not None else _fp32_copy(streams.quant[b], device)
        grads = loss_gradient(block, x_fp, x_q, mask, pe, attn_names, quant_block=probe) if attn_names else {}
        if mlp_names:  # the MLP block's inputs: the attention block's outputs on both paths
            with torch.no_grad():
                y_fp, y_q = block(x_fp, mask, pe), (block if probe is None else probe)(x_q, mask, pe)
            grads.update(loss_gradient(mlp, y_fp, y_q, None, None, mlp_names, quant_block=mlp_probe))
        for n in names:
            out[n].append(token_factors(grads[n], cfg.norm).cpu())
    return out


def _batch(streams: LayerStreams, b: int, device, quant: bool):
    """fp32 copies on `device`; cloned because cached tensors may be inference tensors, which
    autograd cannot save for backward."""
    x = _fp32_copy((streams.quant if quant else streams.fp)[b], device)
    pe = tuple(_fp32_copy(t, device) for t in streams.position_embeddings[b])
    mask = causal_mask(x.shape[0], x.shape[1], device, streams.keep[b])
    return x, mask, pe


def _fp32_copy(t: Tensor, device) -> Tensor:
    return t.detach().to(device=device, dtype=torch.float32).clone()


def describe_projections(report: dict) -> List[str]:
    """'q: cv 0.42 vis/txt 0.31' per projection of a layer report: how far G is from uniform (coefficient
    of variation) and how it splits between modalities (vision over text mean)."""
    parts = []
    for name, s in report["projections"].items():
        ratio = (s["vision_mean"] / s["text_mean"]) if s["vision_mean"] is not None and s["text_mean"] else None
        parts.append(f"{name[0]}: cv {s['cv']:.2f}" + (f" vis/txt {ratio:.2f}" if ratio is not None else ""))
    return parts


def format_report(report: dict) -> str:
    """One progress line per layer: which policy ran and how G splits between modalities."""
    policy = report["policy"] or report["source"]
    seconds = f" {report['seconds']:.2f}s" if "seconds" in report else ""
    return f"VLMQ layer {report['layer']:>3} [{policy}]{seconds}  " + "  ".join(describe_projections(report))
