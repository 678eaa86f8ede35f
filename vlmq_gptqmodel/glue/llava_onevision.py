"""A GPTQModel model definition for transformers' LlavaOnevisionForConditionalGeneration.

GPTQModel 7.7.0 has none (`gptqmodel/models/auto.py:409-410` list only `llava` and `llava_qwen2`), and
its model table is a module global with no registration API (`MODEL_MAP`, auto.py:239, and
`SUPPORTED_MODELS = list(MODEL_MAP.keys())`, auto.py:438, read by `check_and_get_model_definition`,
auto.py:568-571). `register()` adds the entry; glue/activate.py calls it when it wraps quantize().

The module tree is LLaVA's (GPTQModel's `LlavaQModel`, which this extends): SigLIP `vision_tower`,
`multi_modal_projector` and a Qwen2 `language_model` under `model`, `lm_head` at the root. What
LLaVA-OneVision adds on top:
- `model.image_newline`, a bare parameter of `LlavaOnevisionModel` (no submodule carries it): with
  GPTQModel's meta-shell loading (offload_to_disk=True, its default) nothing would load it and the
  capture forward fails on a meta tensor, so `model` is listed for the direct-tensor materialization of
  the input-capture stage; it is moved with the vision tower for input capture and back;
- anyres inputs: `image_sizes` (num_images, 2) and `batch_num_images` (batch,) reach the model as the
  integer tensors the processor made (GPTQModel's generic capture move unsqueezes every 1-D tensor,
  which would turn `batch_num_images` [B] into [1, B]; transformers 5.23 happens to accept that at B = 1);
- checkpoint names: released checkpoints and transformers' save_pretrained keep the legacy layout
  (`language_model.model.*`, `language_model.lm_head`, `vision_tower[.vision_model].*`,
  `multi_modal_projector.*`, `image_newline`), which the lazy loader must find. GPTQModel saves the
  quantized model under its runtime names (`model.language_model.layers.*`, `model.image_newline`,
  `lm_head`), which transformers and GPTQModel load back unchanged.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict

import torch
from torch import nn
from gptqmodel.models import auto
from gptqmodel.models.definitions.llava import LlavaQModel
from gptqmodel.utils.torch import CPU

MODEL_TYPE = "llava_onevision"
INTEGER_INPUTS = ("image_sizes", "batch_num_images", "image_sizes_videos")


def _renaming(runtime: str, checkpoint: str) -> SimpleNamespace:
    """Runtime name pattern -> checkpoint name, in GPTQModel's HF_CONVERSION_MAP_REVERSED entry shape."""
    return SimpleNamespace(source_patterns=[runtime], target_patterns=[checkpoint], operations=[])


class LlavaOnevisionQModel(LlavaQModel):
    """LLaVA-OneVision (SigLIP + projector + image_newline + Qwen2); only the Qwen2 decoder is quantized."""

    # model.image_newline is a parameter of `model` itself: the input-capture stage materializes such direct
    # tensors (looper/stage_inputs_capture.py:307) of the modules listed here
    modules_with_direct_meta_tensors = ["model"]

    # runtime -> checkpoint names for the lazy loader. It tries the runtime name, the name without the
    # base-model prefix `model.` (which finds `vision_tower.*`, `multi_modal_projector.*`, `image_newline` of
    # the legacy layout) and these renamings applied in turn (utils/structure.py
    # `_runtime_to_checkpoint_alias_candidates`). The released checkpoints nest SigLIP under `vision_model.`;
    # transformers 5.23's save_pretrained does not.
    HF_CONVERSION_MAP_REVERSED = (
        _renaming(r"^lm_head", r"language_model.lm_head"),
        _renaming(r"^model\.language_model\.(.+)$", r"language_model.model.\1"),
        _renaming(r"^model\.vision_tower\.(.+)$", r"vision_tower.vision_model.\1"),
    )

    def _place_image_newline(self, device) -> None:
        core = self.model.model
        newline = core.image_newline
        if newline.device.type == "meta" or newline.device == torch.device(device):
            return
        core.image_newline = nn.Parameter(newline.detach().to(device), requires_grad=newline.requires_grad)

    def pre_quantize_generate_hook_start(self):
        super().pre_quantize_generate_hook_start()
        self._place_image_newline(self.quantize_config.device)

    def pre_quantize_generate_hook_end(self):
        super().pre_quantize_generate_hook_end()
        self._place_image_newline(CPU)

    def move_input_capture_example(self, example: Dict[str, Any], data_device: torch.device) -> Dict[str, Any]:
        kept = {k: example[k] for k in INTEGER_INPUTS if torch.is_tensor(example.get(k))}
        example = super().move_input_capture_example(example, data_device)
        for key, value in kept.items():
            example[key] = value.to(device=data_device, dtype=torch.long)
        return example


def register() -> None:
    """Make `GPTQModel.load` pick LlavaOnevisionQModel for model_type "llava_onevision" (idempotent)."""
    existing = auto.MODEL_MAP.get(MODEL_TYPE)
    if existing is not None and existing is not LlavaOnevisionQModel:
        raise ImportError(f"gptqmodel already defines {MODEL_TYPE!r} ({existing.__name__}); vlmq_gptqmodel's own "
                          "definition was written for gptqmodel 7.7.0, which has none.")
    auto.MODEL_MAP[MODEL_TYPE] = LlavaOnevisionQModel
    if MODEL_TYPE not in auto.SUPPORTED_MODELS:
        auto.SUPPORTED_MODELS.append(MODEL_TYPE)
