"""A boundary around the work GPTQModel runs in its worker threads.

GPTQModel 7.7.0 ends the whole process (os._exit) when a pool task raises, so a Python caller's
try/except never runs and no cleanup happens. The processors' worker-side methods therefore catch
their own exceptions and record them; the main thread raises the first one at its next hook into the
loop (before the failed layer is packed) or, at the latest, when quantize() returns. The same hooks
refuse non-finite activations at the first decoder layer that produces them.
"""
from __future__ import annotations

import threading
from typing import List, Optional, Tuple

import torch
from gptqmodel.looper.gptq_processor import GPTQProcessor
from gptqmodel.looper.native_processor import NativeProcessor

from ..errors import RunFailed


class RunGuard:
    """Failures of one quantize() call, recorded in worker threads and raised in the main thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._failures: List[Tuple[str, Optional[BaseException]]] = []

    def record(self, message: str, cause: Optional[BaseException] = None) -> None:
        with self._lock:
            self._failures.append((message, cause))

    def record_error(self, module_name: str, error: BaseException) -> None:
        self.record(f"quantizing {module_name} failed: {type(error).__name__}: {error}", error)

    def raise_pending(self) -> None:
        with self._lock:
            if not self._failures:
                return
            message, cause = self._failures[0]
        raise RunFailed(message) from cause


def _is_non_finite(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())


def _first_non_finite(batches) -> Optional[int]:
    return next((b for b, batch in enumerate(batches) if any(_is_non_finite(t) for t in batch)), None)


NON_FINITE_FIX = "its weights or norms overflow at the run's dtype: try --dtype float32, or check the model"


class GuardedProcessor:
    """Mixin for a GPTQModel loop processor (put it first in the bases)."""

    guard: RunGuard  # bound per run by `guarded`
    _layer_index: Optional[int] = None

    def receive_input_cache(self, input_cache):
        super().receive_input_cache(input_cache)
        batch = _first_non_finite(self.inputs_cache.layer_inputs)
        if batch is not None:
            raise RunFailed(f"the input of decoder layer 0 (embeddings and vision tower) is NaN/Inf for calibration "
                            f"sample {batch}; check the model's weights and the calibration data.")

    def preprocess(self, module, *args, **kwargs):
        self._layer_index = module.layer_index
        return super().preprocess(module, *args, **kwargs)

    def begin_shared_input_capture(self, *args, **kwargs):
        self.guard.raise_pending()
        return super().begin_shared_input_capture(*args, **kwargs)

    def receive_layer_inputs(self, layer_inputs):
        self.guard.raise_pending()
        batch = _first_non_finite(layer_inputs)
        if batch is not None:
            raise RunFailed(f"decoder layer {self._layer_index} produced NaN/Inf activations ({self._stream()} stream, "
                            f"calibration sample {batch}); {NON_FINITE_FIX}.")
        super().receive_layer_inputs(layer_inputs)

    def pre_process_fwd_hook(self, name: str):
        hook = super().pre_process_fwd_hook(name)

        def checked(module, inp, out):
            if _is_non_finite(inp[0] if isinstance(inp, (tuple, list)) else inp):
                self.guard.record(f"decoder layer {self._layer_index} produced NaN/Inf activations: the input of "
                                  f"{name} ({self._stream()} stream); {NON_FINITE_FIX}.")
            return hook(module, inp, out)
        return checked

    def process(self, module, *args, **kwargs):  # runs in a GPTQModel worker thread
        try:
            result = super().process(module, *args, **kwargs)
            self._check_result(module)
            return result
        except Exception as error:  # noqa: BLE001 - re-raised in the main thread by raise_pending
            self.guard.record_error(module.full_name, error)

    def submodule_finalize(self, module, *args, **kwargs):  # packing, also in a worker thread
        try:
            return super().submodule_finalize(module, *args, **kwargs)
        except Exception as error:  # noqa: BLE001
            self.guard.record_error(module.full_name, error)

    def _check_result(self, module) -> None:
        pass

    def _stream(self) -> str:
        return "full-precision"


class GuardedGPTQProcessor(GuardedProcessor, GPTQProcessor):
    def _check_result(self, module) -> None:
        if not bool(torch.isfinite(module.module.weight).all()):
            raise RunFailed("GPTQ produced NaN/Inf weights (its Hessian was not finite)")

    def _stream(self) -> str:
        return "quantized"


class GuardedNativeProcessor(GuardedProcessor, NativeProcessor):
    pass


def guarded(processor_class, guard: RunGuard, **attributes):
    """A per-run subclass of `processor_class` carrying `guard` (and any other per-run attributes)."""
    return type(f"{processor_class.__name__}Bound", (processor_class,), {"guard": guard, **attributes})
