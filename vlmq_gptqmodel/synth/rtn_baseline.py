"""Round-to-nearest (RTN) baseline: fake-quantize a model's decoder linears on GPTQ's grid (rtn.py)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..families import family_of
from ..rtn import rtn_quantize_weight


def decoder_linears(model) -> dict[str, nn.Linear]:
    """The linears GPTQModel quantizes in a VLM: every nn.Linear inside the language model's decoder layers."""
    family = family_of(model.config.model_type)
    return {f"{family.decoder_layers_path}.{i}.{name}": module
            for i, layer in enumerate(family.decoder_layers(model)) for name, module in layer.named_modules()
            if isinstance(module, nn.Linear)}


def apply_rtn(model, bits: int, group_size: int, *, sym: bool = False, inplace: bool = False,
              attention_only: bool = False):
    """A copy of `model` (or `model` itself with inplace=True) with RTN fake-quantized decoder linears
    (attention_only: the self-attention projections only, the MLP kept FP).

    The vision tower, embeddings and lm_head stay FP, as in GPTQModel's Qwen-VL checkpoints.
    """
    target = model if inplace else copy.deepcopy(model)
    with torch.no_grad():
        for name, module in decoder_linears(target).items():
            if attention_only and ".mlp." in name:
                continue
            module.weight.copy_(rtn_quantize_weight(module.weight, bits, group_size, sym=sym))
    return target
