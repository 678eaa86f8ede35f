"""One quantization run, the way the CLI, the demo and the benchmarks all do it: GPTQ, GPTAQ or VLMQ
from the same QuantizeConfig, so that the methods differ in nothing but the method."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .config import VLMQConfig
from .engines import DEFAULT_TARGET, ENGINES, check_target, engine_fields, engine_problems
from .errors import RunFailed
from .families import Family
from .streams import StreamPlan

QUANT_BITS = (2, 3, 4, 8)  # the widths GPTQModel packs (the Triton kernels serve 2-4: kernels/layout.py)
DTYPES = ("float32", "bfloat16", "float16")
PAPER_DAMP_PERCENT = 0.01  # the paper's dampening ratio (GPTQModel's own default is 0.05)
# GPTQModel's negative `dynamic` rule: modules whose name matches are left in full precision.
KEEP_MLP_FP = {r"-:.*\.mlp\..*": {}}


@dataclass
class QuantSpec:
    bits: int = 3
    group_size: int = 128
    desc_act: bool = True          # the paper enables act_order
    sym: bool = False              # asymmetric zero points, as in the paper's Eq. 11-14
    damp_percent: float = PAPER_DAMP_PERCENT
    gptaq_alpha: float = 0.25
    device: str = "cpu"
    # dtype the layers run in while quantizing: "auto" is GPTQModel's choice (bf16 on CPU, which CPUs
    # without bf16 matrix units emulate slowly; "float32" is then much faster)
    dtype: str = "auto"
    # quantize only the attention projections (q/k/v/o) and keep every MLP linear in full precision: the
    # ablation that isolates VLMQ's token weighting, which acts on q/k/v/o only, from MLP error
    attention_only: bool = False
    # who serves the checkpoint: "gptqmodel", or "vllm" / "sglang" (their humming route: act-order off,
    # true zero points, the vision tower excluded by a dynamic rule; engines.py)
    target: str = DEFAULT_TARGET
    extra: dict = field(default_factory=dict)  # any other QuantizeConfig field

    def torch_dtype(self):
        import torch

        if self.dtype == "auto":
            return "auto"
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: choose one of {('auto',) + DTYPES}")
        return getattr(torch, self.dtype)

    def quantize_config(self, gptaq: bool, family: Optional[Family] = None):
        from gptqmodel import QuantizeConfig
        from gptqmodel.quantization.config import GPTAQConfig

        check_target(self.target, self.desc_act)
        extra = dict(self.extra)
        if self.target in ENGINES:
            if family is None:
                raise ValueError(f"target={self.target!r} needs the model's family (its vision modules are excluded)")
            fields = engine_fields(family, self.sym)
            extra = {**fields, **extra, "dynamic": {**fields["dynamic"], **extra.get("dynamic", {})}}
        if self.attention_only:
            extra["dynamic"] = {**KEEP_MLP_FP, **extra.get("dynamic", {})}
        return QuantizeConfig(
            bits=self.bits, group_size=self.group_size, desc_act=self.desc_act, sym=self.sym,
            damp_percent=self.damp_percent, device=self.device, offload_to_disk=False,
            gptaq=GPTAQConfig(alpha=self.gptaq_alpha, device="cpu" if self.device == "cpu" else "auto") if gptaq else None,
            **extra,
        )


def quantize_model(model_dir, calibration, spec: QuantSpec, method: str, vlmq: Optional[VLMQConfig] = None,
                   record=None):
    """Load `model_dir` with GPTQModel and quantize it with `method` in BASELINES or "vlmq".
    record: a g_record.GRecorder that keeps the G of chosen layers (method "vlmq" only)."""
    from gptqmodel import GPTQModel

    from .families import family_of
    from .model_dir import read_config

    vlmq = (vlmq or VLMQConfig()) if method == "vlmq" else None
    plan = StreamPlan.of(method, vlmq)
    family = family_of(read_config(model_dir).get("model_type")) if spec.target in ENGINES else None
    model = GPTQModel.load(str(model_dir), spec.quantize_config(plan.gptaq_quantizer, family),
                           dtype=spec.torch_dtype())
    kwargs = {"method": "vlmq", "vlmq": vlmq} if vlmq is not None else {}
    if record is not None:
        kwargs["vlmq_record"] = record
    model.quantize(calibration, batch_size=1, **kwargs)
    return model


def quantize_to_dir(model_dir, calibration, out_dir: Path, spec: QuantSpec, method: str,
                    vlmq: Optional[VLMQConfig] = None, record=None):
    model = quantize_model(model_dir, calibration, spec, method, vlmq, record)
    model.save(str(out_dir))
    problems = engine_problems(out_dir) if spec.target in ENGINES else []
    if problems:  # the settings above should make this impossible; never hand over a checkpoint that is wrong
        raise RunFailed(f"the {spec.target} export is not engine-ready: {'; '.join(problems)}. This is a bug.")
    return model
