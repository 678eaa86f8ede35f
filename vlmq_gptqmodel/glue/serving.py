"""Serve GPTQ/VLMQ checkpoints through GPTQModel with the VLMQ Triton kernels.

    from vlmq_gptqmodel.serving import load_quantized
    model = load_quantized("out/qwen2vl-w3g128", device="cuda:0")   # a GPTQModel model, generate() as usual

GPTQModel 7.7.0's BACKEND is a closed enum and its kernel registry is built once at import, so instead
of registering a backend this loads the checkpoint with GPTQModel's TorchLinear (which takes every bit
width and group size and converts the saved v1 zero points to true ones) and then replaces each
TorchLinear by a VLMQQuantLinear built from its buffers (repacked once). This file is the only place
that touches GPTQModel internals for serving: `TorchLinear`, its buffers and `qzero_format()`.

Where the kernels cannot run (no CUDA, pre-Ampere GPU, ROCm, missing Triton) `load_quantized` falls back
to GPTQModel's own kernels with a warning, or raises if `fallback=False`. On CPU the kernels run only
under the Triton interpreter and only when asked for with `allow_interpreter=True` (tests).
"""
import logging
import warnings
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from ..errors import BadInput
from . import check_gptqmodel_version

check_gptqmodel_version()

from gptqmodel import BACKEND, GPTQModel  # noqa: E402
from gptqmodel.nn_modules.qlinear.torch import TorchLinear  # noqa: E402

from ..kernels import VLMQQuantLinear, kernels_unavailable_reason  # noqa: E402
from ..kernels.layout import SUPPORTED_BITS  # noqa: E402

log = logging.getLogger("vlmq_gptqmodel")
GPTQ_V2_ZERO_FORMAT = 2  # TorchLinear holds true zero points once GPTQModel has loaded a checkpoint


@dataclass
class ServingReport:
    """Which quantized layers the kernels serve and which stay on TorchLinear, and why."""
    served: list = field(default_factory=list)
    kept: dict = field(default_factory=dict)

    def summary(self) -> str:
        text = f"VLMQ kernels serve {len(self.served)} quantized linear layers"
        if self.kept:
            reasons = sorted(set(self.kept.values()))
            text += f"; {len(self.kept)} stay on GPTQModel's TorchLinear ({'; '.join(reasons)})"
        return text


def refusal_reason(device, allow_interpreter: bool = False) -> Optional[str]:
    """Why the kernels will not be used on `device`, or None."""
    device = torch.device(device)
    if device.type != "cuda" and not allow_interpreter:
        return (f"device {device} is not a CUDA GPU (the Triton interpreter on CPU is for tests: "
                "pass allow_interpreter=True with TRITON_INTERPRET=1)")
    return kernels_unavailable_reason(device)


def _why_not_servable(module: TorchLinear) -> Optional[str]:
    if module.bits not in SUPPORTED_BITS:
        return f"{module.bits}-bit"
    if getattr(module, "planar", False):
        return "planar gptq_p packing"
    if module.pack_dtype != torch.int32:
        return f"pack_dtype {module.pack_dtype}"
    if module.qzero_format() != GPTQ_V2_ZERO_FORMAT:
        return "zero points not converted to GPTQModel's v2 format"
    if getattr(module, "adapter", None) is not None:
        return "has an adapter (LoRA)"
    return None


def _to_vlmq_linear(module: TorchLinear) -> VLMQQuantLinear:
    return VLMQQuantLinear.from_gptq(
        qweight=module.qweight, qzeros=module.qzeros, scales=module.scales, g_idx=module.g_idx, bias=module.bias,
        bits=module.bits, group_size=module.group_size, in_features=module.in_features,
        out_features=module.out_features,
    )


def serve(model: nn.Module, *, allow_interpreter: bool = False) -> ServingReport:
    """Replace, in place, every TorchLinear of a GPTQModel-loaded `model` that the kernels support by a
    VLMQQuantLinear; the others stay (listed in the report). Raises if the kernels cannot run where the
    layers are."""
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, TorchLinear)]
    if not targets:
        raise ValueError("no GPTQModel TorchLinear layers found: load the checkpoint with "
                         "GPTQModel.load(path, backend=BACKEND.TORCH) or use load_quantized(path)")
    report = ServingReport()
    for name, module in targets:
        reason = refusal_reason(module.qweight.device, allow_interpreter)
        if reason is not None:
            raise RuntimeError(f"cannot serve {name} with the VLMQ kernels: {reason}. Keep GPTQModel's kernels "
                               "(GPTQModel.load without serve) or move the model to a CUDA GPU (sm_80+).")
        why = _why_not_servable(module)
        if why is None:
            try:
                replacement = _to_vlmq_linear(module)
            except ValueError as error:  # group size or g_idx pattern the kernels do not take
                why = str(error)
        if why is not None:
            report.kept[name] = why
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
        report.served.append(name)
    log.info(report.summary())
    return report


def _check_device_exists(device) -> None:
    """No kernel, ours or GPTQModel's, can serve on a device that is not there: say so before loading."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device={str(device)!r} but torch sees no CUDA GPU on this machine; pass device='cpu' "
                       "to serve with GPTQModel's CPU kernels.")


def load_quantized(checkpoint_dir, device="cuda", *, fallback: bool = True, allow_interpreter: bool = False,
                   **load_kwargs):
    """`GPTQModel.load(checkpoint_dir, device=device, **load_kwargs)`, served by the VLMQ kernels.

    Where they cannot run: with fallback=True (default) a warning and GPTQModel's own kernel choice,
    otherwise a RuntimeError. The returned model carries `vlmq_serving_report` (a ServingReport, or
    None after a fallback).
    """
    if "backend" in load_kwargs:
        raise ValueError("load_quantized chooses the backend itself; call GPTQModel.load(..., backend=...) "
                         "directly to use a specific GPTQModel kernel")
    _check_device_exists(device)
    reason = refusal_reason(device, allow_interpreter)
    if reason is not None:
        if not fallback:
            raise RuntimeError(f"VLMQ kernels unavailable: {reason}")
        warnings.warn(f"VLMQ kernels unavailable ({reason}); serving with GPTQModel's own kernels instead.",
                      RuntimeWarning, stacklevel=2)
        model = GPTQModel.load(str(checkpoint_dir), device=device, **load_kwargs)
        model.vlmq_serving_report = None
        return model
    model = GPTQModel.load(str(checkpoint_dir), device=device, backend=BACKEND.TORCH, **load_kwargs)
    model.vlmq_serving_report = serve(model, allow_interpreter=allow_interpreter)
    return model
