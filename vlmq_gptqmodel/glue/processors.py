"""The two GPTQModel loop processors of a VLMQ run.

GPTQModel's GPTAQ pipeline already runs two streams per decoder layer: a NativeProcessor that
forwards the full-precision trajectory X and a GPTQProcessor that forwards the quantized-path X_hat
and quantizes. VLMQ subclasses both:
- VLMQCaptureProcessor hands each layer's FP input X to the shared `VLMQRun` (and, for
  precursor="gptq", stops keeping the per-module native inputs only GPTAQ needs);
- VLMQGPTQProcessor computes G once per layer, before the layer's first attention subset is
  quantized (so also the MLP targets' G, from full-precision weights), and turns the tasks of the target
  projections into token-weighted ones.
"""
from __future__ import annotations

import copy
import functools
import logging
import time
from typing import Callable, Dict, List, Optional

import torch

from gptqmodel.utils.attn_mask import normalize_seq_mask

from ..config import ATTENTION_PROJECTIONS, VLMQConfig
from ..families import Family
from ..g_record import GRecorder
from ..layer_importance import LayerStreams, format_report, layer_importance
from ..streams import StreamPlan
from .guard import GuardedGPTQProcessor, GuardedNativeProcessor, RunGuard, guarded
from .tasks import make_token_weighted

log = logging.getLogger("vlmq_gptqmodel")


class VLMQRun:
    """State shared by the processors of one `quantize(method="vlmq")` call."""

    def __init__(self, cfg: VLMQConfig, plan: StreamPlan, family: Family, vision_token_ids: List[int],
                 rtn_weight_transform: Callable[[str, torch.Tensor], torch.Tensor],
                 recorder: Optional[GRecorder] = None):
        self.cfg = cfg
        self.plan = plan
        self.family = family
        self.vision_token_ids = vision_token_ids
        self.rtn_weight_transform = rtn_weight_transform
        self.recorder = recorder  # opt-in: keeps copies of chosen layers' G beyond their layer
        self.fp_inputs: Dict[int, List[torch.Tensor]] = {}
        self.vision: List[torch.Tensor] = []
        self.weights: Dict[int, Dict[str, List[torch.Tensor]]] = {}
        self.reports: List[dict] = []

    def record_tokens(self, prepared_batches) -> None:
        """Remember which calibration tokens are vision tokens (GPTQModel's cache drops input_ids)."""
        ids = torch.tensor(self.vision_token_ids)
        self.vision = [torch.isin(batch["input_ids"].cpu(), ids) for batch in prepared_batches]
        if self.recorder is not None:
            self.recorder.record_batches(prepared_batches, self.vision)
        if not any(bool(v.any()) for v in self.vision):
            log.warning("VLMQ: no calibration sample holds an image (text-only calibration); VLMQ then weights "
                        "text tokens only and its vision-token weighting has nothing to act on. Calibrate with "
                        "image+text samples.")

    def token_weights(self, layer_index: int, projection: str, batch_index: int) -> torch.Tensor:
        return self.weights[layer_index][projection][batch_index]

    def residual_scale(self, layer_index: int, projection: str) -> float:
        """For residual="uniform": mean g^2 over the layer's calibration tokens (the scale of H~ against H),
        which the unweighted asymmetric term is multiplied by."""
        g = torch.cat([w.flatten() for w in self.weights[layer_index][projection]]).double()
        return float(g.pow(2).mean())

    def compute_layer(self, layer_index: int, layer: torch.nn.Module, device: torch.device,
                      quant_inputs, layer_input_kwargs, attention_masks) -> None:
        fp = self.fp_inputs.pop(layer_index, None)
        if fp is None:
            raise RuntimeError(f"VLMQ: no full-precision input was captured for layer {layer_index}")
        quant = [x[0] for x in quant_inputs]
        if len(fp) != len(quant) or len(quant) != len(self.vision):
            raise RuntimeError(
                f"VLMQ: layer {layer_index} has {len(fp)} FP batches, {len(quant)} quantized-path batches "
                f"and {len(self.vision)} calibration batches; they must match one to one."
            )
        # the keep mask [B, S] GPTQModel derives from each batch's mask when it replays the layer: None, the 2D
        # mask of its Qwen-VL capture, or the 4D causal mask transformers builds for eager attention (LLaVA-OneVision)
        keep = [normalize_seq_mask(m) for m in attention_masks] if attention_masks else [None] * len(quant)
        for b, (x, v) in enumerate(zip(quant, self.vision)):
            if tuple(x.shape[:2]) != tuple(v.shape):
                raise RuntimeError(f"VLMQ: batch {b} has {tuple(x.shape[:2])} hidden rows but {tuple(v.shape)} tokens")
        streams = LayerStreams(
            fp=fp, quant=quant,
            position_embeddings=[kw["position_embeddings"] for kw in layer_input_kwargs],
            keep=keep, vision=self.vision,
        )
        self.weights = {}  # only the current layer's G is kept
        start = time.perf_counter()
        self.weights[layer_index], report = layer_importance(
            self.cfg, layer, layer_index, streams, device, self.rtn_weight_transform, self.family
        )
        report["seconds"] = time.perf_counter() - start
        if self.recorder is not None:
            self.recorder.record_layer(layer_index, self.weights[layer_index])
        self.reports.append(report)
        log.info(format_report(report))


class VLMQCaptureProcessor(GuardedNativeProcessor):
    run: VLMQRun  # bound per run by `bind_processors`

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.execution_config.capture_layer_forward_context = True

    def pre_process_fwd_hook(self, name: str):
        if self.run.plan.keep_native_inputs:
            return super().pre_process_fwd_hook(name)

        def fp_stream_only(module, inp, out):
            """GPTQ precursor: the FP forward still runs (it carries X to the next layer), but the
            per-module native inputs, which only GPTAQ consumes, are not kept."""
        return fp_stream_only

    def receive_layer_forward_context(self, *, layer_index, layer_inputs, **kwargs):
        self.run.fp_inputs[layer_index] = [x[0] for x in layer_inputs]


class VLMQGPTQProcessor(GuardedGPTQProcessor):
    run: VLMQRun  # bound per run by `bind_processors`

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.run.plan.gptaq_quantizer:
            # The FP stream was switched on through qcfg.gptaq; the quantizer itself stays GPTQ.
            self.qcfg = copy.copy(self.qcfg)
            self.qcfg.gptaq = None
        self.run.record_tokens(self.calibration_dataset)

    def preprocess(self, module, fallback=None, **kwargs):
        super().preprocess(module, fallback=fallback, **kwargs)
        projection = self.run.family.projection(module.name)
        task = self.tasks.get(module.name)
        if task is not None and projection in self.run.cfg.targets:
            residual = None if self.run.cfg.residual == "weighted" else functools.partial(
                self.run.residual_scale, module.layer_index, projection)
            make_token_weighted(task, functools.partial(self.run.token_weights, module.layer_index, projection),
                                residual)

    def begin_shared_input_capture(self, model, subset_names, is_lm_head_module=False):
        leaders = super().begin_shared_input_capture(model, subset_names, is_lm_head_module)
        attn = [n for n in subset_names if self.run.family.projection(n) in ATTENTION_PROJECTIONS and n in self.tasks]
        if attn and not is_lm_head_module:
            named = self.tasks[attn[0]]._named_module
            if named.layer_index not in self.run.weights:
                # first attention subset of this layer: its weights are all still full precision
                cache = self.inputs_cache
                self.run.compute_layer(
                    named.layer_index, named.state["layer_module"], named.module.weight.device,
                    cache.layer_inputs, cache.layer_input_kwargs, cache.attention_masks,
                )
        return leaders

    def name(self) -> str:
        # GPTQModel saves quant_log.csv only for a processor named "gptq"
        return "gptq"


def bind_processors(guard: RunGuard, run: Optional[VLMQRun] = None):
    """Per-run (capture, quantize) classes to stand in for GPTQModel's NativeProcessor and GPTQProcessor:
    VLMQ's when `run` is given, otherwise GPTQModel's own behind the run guard."""
    if run is None:
        return guarded(GuardedNativeProcessor, guard), guarded(GuardedGPTQProcessor, guard)
    return guarded(VLMQCaptureProcessor, guard, run=run), guarded(VLMQGPTQProcessor, guard, run=run)
