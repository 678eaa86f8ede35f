"""`BaseQModel.quantize(calib, method="vlmq", vlmq=VLMQConfig())`.

GPTQModel 7.7.0 has no registry for quantization methods (`METHOD` is a closed enum, `quantize()`
takes no **kwargs and builds its processors in an if/elif). glue/activate.py wraps `BaseQModel.quantize`
once, forwarding to `quantize_with_method` here; a VLMQ call runs GPTQModel's own GPTQ/GPTAQ pipeline with its two processor classes swapped
for VLMQ's for the duration of the call, so validation, calibration preparation, the layer loop,
packing and saving all stay GPTQModel's, and the checkpoint is plain GPTQ.
"""
from __future__ import annotations

import contextlib
import inspect
import threading

import gptqmodel.looper.gptq_processor as gptq_processor_module
import gptqmodel.looper.native_processor as native_processor_module
from gptqmodel.models.base import BaseQModel
from gptqmodel.quantization.config import GPTAQConfig

from ..config import VLMQConfig
from ..families import family_of
from ..g_record import GRecorder
from ..rtn import rtn_quantize_weight
from .guard import RunGuard
from .preflight import check_before_run
from ..streams import StreamPlan
from .processors import VLMQRun, bind_processors

METHODS = ("gptq", "vlmq")  # what quantize(method=...) takes; GPTAQ is GPTQModel's QuantizeConfig(gptaq=...)
_RUN_LOCK = threading.Lock()  # the processor swap is process-global: one quantize() at a time


def quantize_with_method(model: BaseQModel, original, calibration=None, *args, method=None, vlmq=None,
                         vlmq_record=None, **kwargs):
    """What `BaseQModel.quantize` does once wrapped (glue/activate.py): GPTQModel's own run, or VLMQ's.
    vlmq_record: an optional GRecorder that keeps the G of chosen layers (g_record.py)."""
    if method is None or method == "gptq":
        given = [name for name, value in (("vlmq", vlmq), ("vlmq_record", vlmq_record)) if value is not None]
        if given:
            raise ValueError(f"quantize({', '.join(name + '=...' for name in given)}) needs method='vlmq'.")
        return guarded_quantize(model, original, calibration, args, kwargs)
    if method != "vlmq":
        raise ValueError(f"quantize(method={method!r}): supported methods are {METHODS}.")
    if vlmq_record is not None and not isinstance(vlmq_record, GRecorder):
        raise TypeError(f"vlmq_record= must be a GRecorder, got {type(vlmq_record).__name__}.")
    return quantize_vlmq(model, original, calibration, args, kwargs, vlmq, vlmq_record)


def guarded_quantize(model: BaseQModel, original, calibration, args, kwargs, run: VLMQRun = None):
    """GPTQModel's quantize() behind the project's checks: shapes and weights before the loop, and worker
    failures or non-finite activations raised in the caller's thread as RunFailed."""
    check_before_run(model)
    guard = RunGuard()
    if not _RUN_LOCK.acquire(blocking=False):
        raise RuntimeError("another quantization is running in this process (the processor swap is global).")
    try:
        with _processors_swapped(guard, run):
            result = original(model, calibration, *args, **kwargs)
    finally:
        _RUN_LOCK.release()
    guard.raise_pending()
    return result


def quantize_vlmq(model: BaseQModel, original, calibration, args, kwargs, cfg, recorder=None) -> dict:
    cfg = VLMQConfig() if cfg is None else cfg
    if not isinstance(cfg, VLMQConfig):
        raise TypeError(f"vlmq= must be a VLMQConfig, got {type(cfg).__name__}.")
    family = family_of(getattr(model.model.config, "model_type", None))
    bound = inspect.signature(original).bind(model, calibration, *args, **kwargs)
    bound.apply_defaults()
    if bound.arguments["batch_size"] != 1:
        raise ValueError(
            f"method='vlmq' needs batch_size=1 (got {bound.arguments['batch_size']}): G is per token and "
            "GPTQModel 7.7.0 cannot quantize padded Qwen-VL batches."
        )
    if bound.arguments["checkpoint"] is not None:
        raise ValueError("method='vlmq' cannot resume from checkpoint=...: G is not part of the resume state.")
    qcfg = model.quantize_config
    if getattr(qcfg, "foem", None) is not None:
        raise ValueError("method='vlmq' builds on GPTQ or GPTAQ; remove foem=... from the QuantizeConfig.")
    plan = StreamPlan.of("vlmq", cfg)
    if not plan.gptaq_quantizer and qcfg.gptaq is not None:
        raise ValueError(
            "VLMQConfig(precursor='gptq') but the QuantizeConfig has gptaq=...: drop one of them "
            "(precursor='gptaq' uses the QuantizeConfig's GPTAQ alpha)."
        )

    def rtn(_projection, weight):  # layer0="rtn_probe": the target format, rounded to nearest
        return rtn_quantize_weight(weight, qcfg.bits, qcfg.group_size, sym=qcfg.sym)

    run = VLMQRun(cfg, plan, family, family.vision_token_ids(model.model.config), rtn, recorder)
    user_gptaq = qcfg.gptaq
    try:
        # qcfg.gptaq is what makes GPTQModel insert the full-precision stream (its NativeProcessor); the
        # processors read `plan` for whether the quantizer is GPTAQ and whether native inputs are kept.
        if plan.fp_stream:
            qcfg.gptaq = user_gptaq or GPTAQConfig()
        result = guarded_quantize(model, original, bound.args[1], bound.args[2:], bound.kwargs, run)
    finally:
        if not plan.gptaq_quantizer:
            qcfg.gptaq = user_gptaq
    qcfg.meta_set("vlmq", {**cfg.to_meta(), "gptaq_alpha": qcfg.gptaq.alpha if qcfg.gptaq else None})
    model.vlmq_report = run.reports
    return result


@contextlib.contextmanager
def _processors_swapped(guard: RunGuard, run: VLMQRun = None):
    capture, quantizer = bind_processors(guard, run)
    saved = gptq_processor_module.GPTQProcessor, native_processor_module.NativeProcessor
    # base.py imports both classes from these modules inside `_quantize_with_calibration`
    gptq_processor_module.GPTQProcessor, native_processor_module.NativeProcessor = quantizer, capture
    try:
        yield
    finally:
        gptq_processor_module.GPTQProcessor, native_processor_module.NativeProcessor = saved
