"""What VLMQ needs to know about a model family, in one place.

A family adapter names where the language model's decoder layers live in the transformers model, the
pieces of a decoder layer that make up the paper's attention block (input norm + self-attention), and
the config fields that hold the ids of vision tokens. Everything else in the package asks the adapter
instead of spelling these out; a new family (e.g. LLaVA-OneVision) is one more entry in FAMILIES.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from .config import ATTENTION_PROJECTIONS, MLP_PROJECTIONS
from .errors import BadInput


@dataclass(frozen=True)
class Family:
    name: str
    model_types: Tuple[str, ...]
    # attribute path from the transformers model (what GPTQModel's wrapper holds as `.model`) to the
    # language model's nn.ModuleList of decoder layers; also the prefix of their checkpoint names
    decoder_layers_path: str = "model.language_model.layers"
    attention: str = "self_attn"          # a decoder layer's self-attention module
    input_norm: str = "input_layernorm"   # the norm in front of it
    mlp: str = "mlp"                      # a decoder layer's gated MLP: down(act(gate(x)) * up(x))
    post_attention_norm: str = "post_attention_layernorm"  # the norm in front of the MLP
    vision_token_fields: Tuple[str, ...] = ("image_token_id", "video_token_id")  # the image's first
    # the paper's maximum calibration sequence length for the family (tokens); samples whose vision
    # segment would be cut by it are dropped (calibration.fit_to_length)
    calibration_length: int = 512
    # regex (re.match, from the start of a module name) for the modules GPTQModel leaves in full
    # precision outside the decoder layers: the vision tower and projector. An engine-ready export names
    # them in a negative `dynamic` rule, which is how vLLM's humming route learns to skip them (engines.py).
    unquantized_modules: str = r".*visual.*"

    def decoder_layers(self, hf_model):
        module = hf_model
        for part in self.decoder_layers_path.split("."):
            module = getattr(module, part)
        return module

    def vision_token_ids(self, config) -> List[int]:
        """The ids of the placeholder tokens that carry vision features (image and video)."""
        return [i for i in (getattr(config, f, None) for f in self.vision_token_fields) if i is not None]

    def image_token_id(self, config) -> int:
        """The id of the placeholder token that carries an image's features."""
        return getattr(config, self.vision_token_fields[0])

    def projection(self, module_name: str):
        """'self_attn.q_proj' or 'mlp.up_proj' (a name inside a decoder layer) -> 'q_proj' / 'up_proj';
        None for any other module."""
        for block, names in ((self.attention, ATTENTION_PROJECTIONS), (self.mlp, MLP_PROJECTIONS)):
            name = module_name.removeprefix(block + ".")
            if name != module_name and name in names:
                return name
        return None


QWEN_VL = Family("Qwen-VL", ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"))
# transformers' LlavaOnevisionForConditionalGeneration: SigLIP tower, projector, image_newline and a Qwen2
# language model under `model.language_model`; its placeholder ids are the config's *_token_index fields.
# GPTQModel 7.7.0 has no definition for it: glue/llava_onevision.py registers one.
LLAVA_ONEVISION = Family("LLaVA-OneVision", ("llava_onevision",),
                         vision_token_fields=("image_token_index", "video_token_index"),
                         calibration_length=986, unquantized_modules=r".*(vision_tower|multi_modal_projector).*")
FAMILIES = (QWEN_VL, LLAVA_ONEVISION)
SUPPORTED_MODEL_TYPES = tuple(t for family in FAMILIES for t in family.model_types)


def family_of(model_type) -> Family:
    """The adapter for a config's model_type; BadInput (a ValueError) naming the supported types otherwise."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise BadInput(f"VLMQ supports the model types {SUPPORTED_MODEL_TYPES}; this model is {model_type!r}. "
                   "Fix: use method='gptq' (GPTQModel's own) for other models.")
