"""Token-weighted GPTQ / GPTAQ tasks: the precursors' own accumulators fed G-scaled token rows.

GPTQ accumulates H += X X^T and GPTAQ additionally dXXT += (X_fp - X) X^T from the rows it is given.
Scaling every token row of X and X_fp by g_n before they reach the accumulator yields exactly
H_tilde = X G^2 X^T and dXXT_tilde = (X_fp - X) G^2 X^T (paper Eq. 19); the solvers, damping,
act-order and packing stay GPTQModel's own.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from gptqmodel.quantization.gptaq import GPTAQ
from gptqmodel.quantization.gptq import GPTQ

from ..importance import weight_tokens

WeightSource = Callable[[int], torch.Tensor]  # calibration batch index -> g [B, S]
ScaleSource = Callable[[], float]  # asked once G is known (it is computed after the tasks are built)


class _TokenWeighting:
    """Mixin for a GPTQ-family task: looks up g for the batch the looper is feeding."""

    token_weights: WeightSource
    _next_batch: int

    def _weights_for(self, batch_index: Optional[int], inp: torch.Tensor) -> torch.Tensor:
        expected = getattr(self, "_next_batch", 0)
        if batch_index != expected:
            # GPTAQ pairs quantized and native inputs first-in-first-out, and G is looked up by
            # batch index: both need the serial, in-order forward of a single-device run.
            raise RuntimeError(
                f"VLMQ: module {self.name} received calibration batch {batch_index}, expected {expected}. "
                "VLMQ needs a serial forward in calibration order (batch_size=1, one device, "
                "auto_forward_data_parallel=False)."
            )
        self._next_batch = expected + 1
        g = self.token_weights(batch_index)
        if tuple(g.shape) != tuple(inp.shape[:-1]):
            raise RuntimeError(
                f"VLMQ: token weights {tuple(g.shape)} do not match the activations {tuple(inp.shape)} of "
                f"{self.name} for batch {batch_index}; padded batches are not supported, use batch_size=1."
            )
        return g


class TokenWeightedGPTQ(_TokenWeighting, GPTQ):
    def add_batch(self, inp: torch.Tensor, out: torch.Tensor, batch_index: Optional[int] = None):
        g = self._weights_for(batch_index, inp)
        super().add_batch(weight_tokens(inp, g), out, batch_index=batch_index)


class TokenWeightedGPTAQ(_TokenWeighting, GPTAQ):
    residual_scale: Optional[ScaleSource] = None

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor, batch_index: Optional[int] = None):
        g = self._weights_for(batch_index, inp)
        # GPTAQ.process_batch pops native_inps[0] as the FP partner of this batch and accumulates
        # (partner - G X) (G X)^T. Partner G X_fp gives (X_fp - X) G^2 X^T (the asymmetric term weighted
        # like H); partner G X + s G^-1 (X_fp - X) gives s (X_fp - X) X^T (every token alike).
        native = self.native_inps[0]
        if native.shape != inp.shape:
            # the FP stream's hooks see the keep-masked rows [N, C] when the layer is given a mask (GPTQModel's
            # _masked_hook_wrapper); at batch_size=1 without padding they are the same rows in the same order
            if native.numel() != inp.numel():
                raise RuntimeError(f"VLMQ: the full-precision input {tuple(native.shape)} of {self.name} does not "
                                   f"pair with its quantized-path input {tuple(inp.shape)}; use batch_size=1.")
            native = native.reshape(inp.shape)
        if self.residual_scale is None:
            self.native_inps[0] = weight_tokens(native, g)
        else:
            if not hasattr(self, "_residual_scale"):
                self._residual_scale = self.residual_scale()
            inverse = torch.where(g > 0, self._residual_scale / g.clamp_min(1e-30), torch.zeros_like(g))
            self.native_inps[0] = weight_tokens(inp, g) + weight_tokens(native.float() - inp.float(), inverse)
        super().add_batch(weight_tokens(inp, g), out, batch_index=batch_index)


def make_token_weighted(task: GPTQ, token_weights: WeightSource, residual_scale: Optional[ScaleSource] = None) -> GPTQ:
    """Turn the task GPTQModel built for a module into its token-weighted twin, in place (residual_scale:
    a GPTAQ task's asymmetric term is left unweighted and multiplied by the scale it returns; None weights
    it like H)."""
    if type(task) is GPTQ:
        task.__class__ = TokenWeightedGPTQ
    elif type(task) is GPTAQ:
        task.__class__ = TokenWeightedGPTAQ
    else:
        raise ValueError(
            f"VLMQ weights GPTQ or GPTAQ Hessians; module {task.name} got a {type(task).__name__} task. "
            "Remove foem=... from the QuantizeConfig."
        )
    task.token_weights = token_weights
    task._next_batch = 0
    if residual_scale is not None:
        if not isinstance(task, TokenWeightedGPTAQ):
            raise ValueError(f"residual_scale applies to GPTAQ's asymmetric term; {task.name} is quantized by GPTQ")
        task.residual_scale = residual_scale
    return task
