"""A GPTQModel model definition for transformers' LlavaOnevisionForConditionalGeneration.

GPTQModel 7.7.0 has none (`gptqmodel/models/auto.py:409-410` list only `llava` and `llava_qwen2`), and
its model table is a module global with no registration API (`MODEL_MAP`, auto.py:239, and
`SUPPORTED_MODELS = list(MODEL_MAP.keys())`, auto.py:438, read by `check_and_get_model_definition`,
auto.py:568-571). `register()` adds the entry; glue/activate.py calls it when it wraps quantize().

The module tree is LLaVA's (GPTQModel's `LlavaQModel`, which this extends): SigLIP `vision_tower`,
`multi_modal_projector` and a Qwen2 `language_model` under `model`, `lm_head` at the root. What
LLaVA-OneVision adds on top:
- `model.image_newline`, a bare parameter of `LlavaOnevisionModel` (no submodule carries it): with
  GPTQModel's meta-shell loading (offload_to_disk=True) it is materialized from the checkpoint with the
  other direct tensors of `model`, and it is moved with the vision tower for input capture and back;
- anyres inputs: `image_sizes` (num_images, 2) and `batch_num_images` (batch,) must reach the model as
  integer tensors of their own shape (GPTQModel's generic capture move unsqueezes every 1-D tensor);
- checkpoint names: released checkpoints and transformers' save_pretrained keep the legacy layout
  (`language_model.model.*`, `language_model.lm_head`, `vision_tower[.vision_model].*`,
  `multi_modal_projector.*`, `image_newline`); the lazy loader is given every spelling. GPTQModel saves
  the quantized model under its runtime names (`model.language_model.layers.*`, `model.image_newline`,
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
    # tensors (stage_inputs_capture.py:307) for the modules listed here
    modules_with_direct_meta_tensors = ["model"]

    # runtime -> checkpoint names for the lazy loader, which tries the runtime name, then each renaming
    # applied in turn (utils/structure.py `_runtime_to_checkpoint_alias_candidates`); SigLIP towers were
    # saved with and without the `vision_model.` level, so both are offered
    HF_CONVERSION_MAP_REVERSED = (
        _renaming(r"^lm_head", r"language_model.lm_head"),
        _renaming(r"^model\.language_model\.(.+)$", r"language_model.model.\1"),
        _renaming(r"^model\.vision_tower\.(.+)$", r"vision_tower.\1"),
        _renaming(r"^model\.vision_tower\.(.+)$", r"vision_tower.vision_model.\1"),
        _renaming(r"^model\.multi_modal_projector\.(.+)$", r"multi_modal_projector.\1"),
        _renaming(r"^model\.image_newline$", r"image_newline"),
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
