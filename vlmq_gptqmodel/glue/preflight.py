"""Checks on the loaded model that run before GPTQModel's quantize loop, where a failure would otherwise
kill the process from a worker thread (os._exit) or pass silently into the checkpoint."""
from __future__ import annotations

from typing import Iterator, Tuple

import torch
from gptqmodel.models.base import BaseQModel
from gptqmodel.utils.model import get_layers_with_prefixes

from ..errors import BadInput

WORD_BITS = 32  # GPTQModel packs codes into int32 words


def quantized_linears(model: BaseQModel) -> Iterator[Tuple[str, torch.nn.Module, int, int]]:
    """(full name, module, bits, group size) of every linear GPTQModel will quantize, in layer order."""
    qcfg = model.quantize_config
    names = [n for subset in model.simple_layer_modules(model.model.config, qcfg) for n in subset]
    layers, prefixes = get_layers_with_prefixes(model.model, model.extract_layers_node())
    for layer, prefix in zip(layers, prefixes):
        for name in names:
            module = _submodule(layer, name)
            full = f"{prefix}.{name}"
            if module is None or not hasattr(module, "in_features") or qcfg.dynamic_get(full) is False:
                continue
            yield (full, module, qcfg.dynamic_get(full, "bits", qcfg.bits),
                   qcfg.dynamic_get(full, "group_size", qcfg.group_size))


def _submodule(layer: torch.nn.Module, name: str):
    try:
        return layer.get_submodule(name)
    except AttributeError:
        return None


def shape_problem(in_features: int, out_features: int, bits: int, group_size: int):
    """Why GPTQModel's packer (or its CPU kernels) cannot take this layer at these settings, or None."""
    if group_size != -1 and in_features % group_size:
        return (f"group size {group_size} does not divide its input width {in_features}; "
                f"use a group size that does (e.g. {_largest_dividing_group(in_features)}) or -1")
    if in_features % WORD_BITS:
        return f"input width {in_features} is not a multiple of {WORD_BITS}, which GPTQModel's packer needs"
    codes_per_word = WORD_BITS if bits == 3 else WORD_BITS // bits  # 3-bit zero points pack in 32-code blocks
    if out_features % codes_per_word:
        return (f"output width {out_features} is not a multiple of {codes_per_word}, which GPTQModel's "
                f"{bits}-bit packer needs; use a bit width whose packer takes it (2, 4, 8 bits: multiples of 16, 8, 4)")
    return None


def _largest_dividing_group(width: int) -> int:
    return next((g for g in (128, 64, 32, 16) if width % g == 0), -1)


def check_shapes(model: BaseQModel) -> None:
    bad = [(name, problem) for name, m, bits, gs in quantized_linears(model)
           if (problem := shape_problem(m.in_features, m.out_features, bits, gs)) is not None]
    if bad:
        name, problem = bad[0]
        others = f" ({len(bad) - 1} more layers likewise)" if len(bad) > 1 else ""
        raise BadInput(f"cannot quantize {name}: {problem}{others}.")


def check_finite_weights(model: BaseQModel) -> None:
    """Refuse NaN/Inf parameters up front: GPTQ would turn them into NaN scales (a checkpoint that scores 0)
    or a worker-thread crash. Parameters not loaded yet (meta, offloaded) are checked by the run itself."""
    bad = [name for name, p in model.model.named_parameters()
           if p.is_floating_point() and p.device.type != "meta" and not bool(torch.isfinite(p).all())]
    if bad:
        others = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise BadInput(f"the model's weight {bad[0]}{others} holds NaN or Inf values; fix or re-export the model "
                       "before quantizing it.")


def check_before_run(model: BaseQModel) -> None:
    check_shapes(model)
    check_finite_weights(model)
