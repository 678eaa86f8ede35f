"""Checkpoints that vLLM and SGLang can serve at 2-4 bits: the settings their low-bit GPTQ route reads, and
a check of a saved checkpoint against them.

vLLM 0.33.0 serves GPTQ at 2/3 bits only with `--quantization humming` (its `gptq` path is 4/8-bit
symmetric only), as does SGLang 0.5.23; both use humming-kernels 0.1.19. What they read, from the released
wheels' source (nothing here was run in either engine; a GPU user can):
- humming-kernels 0.1.19, `humming/schema/gptq.py`: `to_humming_schema` asserts `not desc_act` (act-order
  is refused); `_convert_humming` uses `qzeros` as stored, i.e. true zero points (GPTQModel's format
  "gptq_v2"; its default v1 "gptq" stores zero - 1 with borrows between packed fields, which only
  GPTQModel undoes), and never reads `g_idx` (input k is in group k // group_size).
- vLLM 0.33.0, `vllm/model_executor/layers/quantization/humming.py` `is_layer_skipped` (lines 196-221): a
  linear is left unquantized when a `dynamic` key "-:REGEX" re.match-es its module name (or it is listed
  under `ignore` / `modules_to_not_convert`, or is the lm_head); every other linear is loaded as GPTQ, so the
  vision tower, which GPTQModel saves in full precision, must be named in such a rule.
  `get_config_filenames` (line 171) is empty: the settings come from config.json's `quantization_config`.
The engine-ready export (target "vllm" or "sglang") is therefore: act-order off, zero points in v2 form (or
symmetric), and a negative `dynamic` rule for the family's unquantized modules. GPTQModel 7.7.0 writes the
settings to both config.json and quantize_config.json.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import BadInput
from .families import Family

ENGINES = ("vllm", "sglang")
TARGETS = ("gptqmodel",) + ENGINES
DEFAULT_TARGET = "gptqmodel"
TRUE_ZERO_FORMAT = "gptq_v2"  # GPTQModel's name for zero points stored as they are
ENGINE_VERSIONS = "vLLM 0.33.0 / SGLang 0.5.23 with --quantization humming (humming-kernels 0.1.19)"


def check_target(target: str, desc_act: bool) -> None:
    if target not in TARGETS:
        raise BadInput(f"target={target!r}: choose one of {TARGETS}.")
    if target in ENGINES and desc_act:
        raise BadInput(f"target={target!r} cannot use act-order: {ENGINE_VERSIONS} refuses desc_act=True. "
                       "Fix: desc_act=False (the CLI's --target turns it off).")


def skip_rule(family: Family) -> str:
    """The negative `dynamic` key that leaves the family's vision modules unquantized (GPTQModel and vLLM)."""
    return f"-:{family.unquantized_modules}"


def engine_fields(family: Family, sym: bool) -> dict:
    """QuantizeConfig fields an engine-ready export adds (act-order off is checked by check_target)."""
    fields = {"dynamic": {skip_rule(family): {}}}
    if not sym:
        fields["format"] = TRUE_ZERO_FORMAT
    return fields


def engine_problems(checkpoint_dir) -> list[str]:
    """What in a saved GPTQ checkpoint would make vLLM/SGLang's humming route read other weights than GPTQModel
    does, or refuse it; empty when it is engine-ready."""
    checkpoint_dir = Path(checkpoint_dir)
    config = json.loads((checkpoint_dir / "config.json").read_text())
    quant = config.get("quantization_config")
    if quant is None:
        return ["config.json has no quantization_config (the engines read the settings only there)"]
    problems = []
    if quant.get("desc_act"):
        problems.append("act-order (desc_act=true), which humming refuses")
    fmt = quant.get("checkpoint_format", quant.get("format"))
    if not quant.get("sym") and fmt != TRUE_ZERO_FORMAT:
        problems.append(f"asymmetric zero points in format {fmt!r} (stored as zero - 1 with borrows between packed "
                        "fields; humming reads them as true zeros, so some would be wrong)")
    tensors, g_idx = _read_index(checkpoint_dir)
    skips = [re.compile(key[2:]) for key in quant.get("dynamic") or {} if key.startswith("-")]
    quantized = {name[: -len(".qweight")] for name in tensors if name.endswith(".qweight")}
    loose = sorted(name[: -len(".weight")] for name, shape in tensors.items()
                   if name.endswith(".weight") and len(shape) == 2 and "embed" not in name and "lm_head" not in name
                   and name[: -len(".weight")] not in quantized
                   and not any(rule.match(name[: -len(".weight")]) for rule in skips))
    if loose:
        problems.append(f"{len(loose)} full-precision linears not excluded by a negative dynamic rule (e.g. "
                        f"{loose[0]}); humming would load them as GPTQ")
    group_size = quant.get("group_size", -1)
    permuted = [name for name in sorted(g_idx) if not _static_groups(g_idx[name], group_size)]
    if permuted:
        problems.append(f"g_idx of {len(permuted)} linears (e.g. {permuted[0]}) is not k // group_size; humming "
                        "ignores g_idx")
    return problems


def check_engine_ready(checkpoint_dir, target: str) -> None:
    """BadInput naming every problem (and the fix) unless the checkpoint is ready for `target`."""
    problems = engine_problems(checkpoint_dir)
    if problems:
        raise BadInput(f"{checkpoint_dir} is not ready for {target} ({ENGINE_VERSIONS}): " + "; ".join(problems)
                       + ". Fix: quantize again with --target " + target + ".")


def _read_index(checkpoint_dir: Path) -> tuple[dict, dict]:
    """Every tensor's shape, and every g_idx tensor, of a checkpoint's safetensors files."""
    from safetensors import safe_open

    shapes, g_idx = {}, {}
    for path in sorted(checkpoint_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for name in f.keys():
                shapes[name] = f.get_slice(name).get_shape()
                if name.endswith(".g_idx"):
                    g_idx[name[: -len(".g_idx")]] = f.get_tensor(name)
    return shapes, g_idx


def _static_groups(g_idx, group_size: int) -> bool:
    import torch

    size = len(g_idx) if group_size == -1 else group_size
    return torch.equal(g_idx.long(), torch.arange(len(g_idx)) // size)
