"""`BaseQModel.quantize(calib, method="vlmq", vlmq=VLMQConfig())`.

GPTQModel 7.7.0 has no registry for quantization methods (`METHOD` is a closed enum, `quantize()`
takes no **kwargs and builds its processors in an if/elif). `install()` wraps `BaseQModel.quantize`
once; a VLMQ call runs GPTQModel's own GPTQ/GPTAQ pipeline with its two processor classes swapped
for VLMQ's for the duration of the call, so validation, calibration preparation, the layer loop,
packing and saving all stay GPTQModel's, and the checkpoint is plain GPTQ.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import threading

import gptqmodel.looper.gptq_processor as gptq_processor_module
import gptqmodel.looper.native_processor as native_processor_module
from gptqmodel.models.base import BaseQModel
from gptqmodel.quantization.config import GPTAQConfig

from ..config import VLMQConfig
from ..rtn import rtn_quantize_weight
from .guard import RunGuard
from .preflight import check_before_run
from .processors import VLMQRun, bind_processors

SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
METHODS = ("gptq", "vlmq")
_RUN_LOCK = threading.Lock()  # the processor swap is process-global: one quantize() at a time


def install() -> None:
    """Add `method=` / `vlmq=` to `BaseQModel.quantize`. Idempotent."""
    if getattr(BaseQModel.quantize, "__vlmq_wrapped__", None) is not None:
        return
    original = BaseQModel.quantize

    @functools.wraps(original)
    def quantize(self, calibration=None, *args, method=None, vlmq=None, **kwargs):
        if method is None or method == "gptq":
            if vlmq is not None:
                raise ValueError("quantize(vlmq=...) needs method='vlmq'.")
            return guarded_quantize(self, original, calibration, args, kwargs)
        if method != "vlmq":
            raise ValueError(f"quantize(method={method!r}): supported methods are {METHODS}.")
        return quantize_vlmq(self, original, calibration, args, kwargs, vlmq)

    quantize.__vlmq_wrapped__ = original
    BaseQModel.quantize = quantize


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


def check_model(model: BaseQModel) -> None:
    model_type = getattr(model.model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"VLMQ supports the model types {SUPPORTED_MODEL_TYPES}; this model is {model_type!r}. "
            "Use method='gptq' for other models."
        )


def quantize_vlmq(model: BaseQModel, original, calibration, args, kwargs, cfg) -> dict:
    cfg = VLMQConfig() if cfg is None else cfg
    if not isinstance(cfg, VLMQConfig):
        raise TypeError(f"vlmq= must be a VLMQConfig, got {type(cfg).__name__}.")
    check_model(model)
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
    if cfg.precursor == "gptq" and qcfg.gptaq is not None:
        raise ValueError(
            "VLMQConfig(precursor='gptq') but the QuantizeConfig has gptaq=...: drop one of them "
            "(precursor='gptaq' uses the QuantizeConfig's GPTAQ alpha)."
        )

    config = model.model.config
    vision_ids = [i for i in (config.image_token_id, config.video_token_id) if i is not None]
    def rtn(_projection, weight):  # layer0="rtn_probe": the target format, rounded to nearest
        return rtn_quantize_weight(weight, qcfg.bits, qcfg.group_size, sym=qcfg.sym)

    run = VLMQRun(cfg, vision_ids, rtn)
    user_gptaq = qcfg.gptaq
    try:
        # qcfg.gptaq makes GPTQModel insert the full-precision stream (its NativeProcessor); VLMQ needs
        # that stream for X even with the GPTQ precursor, whose quantizer then ignores it.
        qcfg.gptaq = user_gptaq or GPTAQConfig()
        result = guarded_quantize(model, original, bound.args[1], bound.args[2:], bound.kwargs, run)
    finally:
        if cfg.precursor == "gptq":
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
