"""A saved GPTQ checkpoint as a plain full-precision model: each quantized linear gets its dequantized weight.

The weights are exactly those the checkpoint serves (GPTQModel's grid: scale * (code - zero) per group),
but the matmuls run in fp32 instead of through GPTQModel's TorchLinear, the only CPU kernel for 2 and 3
bits, which computes in bf16/fp16. On CPUs without half-precision matrix units (AVX2) that is many times
slower, and its rounding adds noise of its own to an accuracy/KL comparison. The quality benchmark scores
checkpoints this way; the serving path itself is tested in tests/glue/test_roundtrip.py.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from vlmq_gptqmodel.kernels.layout import from_saved_qzeros, unpack_gptq
from vlmq_gptqmodel.kernels.reference import dequantize


def checkpoint_weights(qdir) -> dict[str, torch.Tensor]:
    """Module name -> dequantized [out, in] fp32 weight, for every quantized linear saved in `qdir`."""
    from safetensors.torch import load_file

    qdir = Path(qdir)
    config_path = qdir / "quantize_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{qdir} has no quantize_config.json: pass a directory written by GPTQModel's save()")
    qcfg = json.loads(config_path.read_text())
    fmt = qcfg.get("format", "gptq")
    if fmt not in ("gptq", "gptq_v2"):
        raise ValueError(f"{qdir} is in format {fmt!r}; only 'gptq' and 'gptq_v2' are supported here")
    bits, group_size = qcfg["bits"], qcfg["group_size"]
    tensors = {}
    for path in sorted(qdir.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    weights = {}
    for name in (k.removesuffix(".qweight") for k in tensors if k.endswith(".qweight")):
        scales, g_idx = tensors[f"{name}.scales"], tensors[f"{name}.g_idx"]
        qzeros = tensors[f"{name}.qzeros"]  # gptq_v2: true zero points as stored
        if fmt == "gptq":
            qzeros = from_saved_qzeros(qzeros, bits)
        codes = unpack_gptq(tensors[f"{name}.qweight"], qzeros, scales, g_idx, bits, group_size,
                            in_features=g_idx.numel(), out_features=scales.shape[1])
        weights[name] = dequantize(codes)
    return weights


SAME_MODEL = "pass the FP model the checkpoint was quantized from"


def load_dequantized(qdir, fp_model):
    """A copy of `fp_model` whose linears quantized in `qdir` hold their dequantized weights (like
    rtn.apply_rtn, the FP model is left untouched, also when a mismatch is found)."""
    weights = checkpoint_weights(qdir)
    modules = dict(fp_model.named_modules())
    missing = sorted(set(weights) - set(modules))
    if missing:
        raise ValueError(f"{qdir} quantizes modules the FP model does not have (e.g. {missing[0]}); {SAME_MODEL}")
    for name, weight in weights.items():
        if modules[name].weight.shape != weight.shape:
            raise ValueError(f"{name}: checkpoint weight {tuple(weight.shape)} vs model "
                             f"{tuple(modules[name].weight.shape)}; {SAME_MODEL}")
    model = copy.deepcopy(fp_model)
    targets = dict(model.named_modules())
    with torch.no_grad():
        for name, weight in weights.items():
            targets[name].weight.copy_(weight.to(targets[name].weight.dtype))
    return model
