"""Which streams a quantization run uses: decided here, once, from the method and the VLMQ config.

GPTQModel runs a full-precision stream (its NativeProcessor) beside the quantized one only when the
QuantizeConfig has `gptaq` set, and its GPTAQ quantizer then keeps every module's FP input for the
asymmetric term. VLMQ needs the FP stream for the layer input X_fp whatever its precursor; with the GPTQ
precursor the quantizer stays GPTQ and the per-module FP inputs are not kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .config import VLMQConfig

BASELINES = ("gptq", "gptaq")
METHODS = BASELINES + ("vlmq",)


@dataclass(frozen=True)
class StreamPlan:
    quantizer: str            # "gptq" or "gptaq": whose accumulator the layer inputs feed
    fp_stream: bool           # run GPTQModel's full-precision stream beside the quantized one
    keep_native_inputs: bool  # keep each module's FP input (only GPTAQ's asymmetric term reads them)

    @classmethod
    def of(cls, method: str, vlmq: Optional[VLMQConfig] = None) -> "StreamPlan":
        if method not in METHODS:
            raise ValueError(f"method={method!r}: choose one of {METHODS}")
        quantizer = vlmq.precursor if method == "vlmq" else method
        return cls(quantizer=quantizer, fp_stream=method == "vlmq" or quantizer == "gptaq",
                   keep_native_inputs=quantizer == "gptaq")

    @property
    def gptaq_quantizer(self) -> bool:
        return self.quantizer == "gptaq"
