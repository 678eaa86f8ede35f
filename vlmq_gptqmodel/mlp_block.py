"""The MLP block of a decoder layer (post-attention norm + gated MLP + residual) as a private fp32 copy.

Not in the paper, whose MLPs keep the plain Hessian: with MLP projections among VLMQConfig.targets,
their g comes from L = || MLPBlock(Y) - MLPBlock(Y_hat) ||^2 the way the attention projections' g
comes from the attention block (attention_block.py explains why the copy is private and fp32).
"""
from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
from torch import nn

from .attention_block import RecordingBlock
from .config import MLP_PROJECTIONS
from .families import QWEN_VL, Family

Tensor = torch.Tensor


class MLPBlock(RecordingBlock):
    """y = x + down(act(gate(Norm(x))) * up(Norm(x))), the gated MLP of Qwen2/2.5/3-VL and LLaVA-OneVision."""

    def __init__(self, norm: nn.Module, gate: nn.Linear, up: nn.Linear, down: nn.Linear, act: nn.Module):
        super().__init__()
        self.norm, self.gate_proj, self.up_proj, self.down_proj, self.act = norm, gate, up, down, act
        self.watch({name: getattr(self, name) for name in MLP_PROJECTIONS})

    def forward(self, x: Tensor, mask=None, position_embeddings=None) -> Tensor:
        """mask and position_embeddings are ignored (every token alone): the signature is the attention
        block's, so block_gradients and projection_errors take either block."""
        h = self.norm(x)
        return x + self.down_proj(self.act(self.gate_proj(h)) * self.up_proj(h))


def copy_mlp_block(
    layer: nn.Module,
    device: torch.device,
    weight_transform: Optional[Callable[[str, Tensor], Tensor]] = None,
    family: Family = QWEN_VL,
) -> MLPBlock:
    """Private fp32 copy of a decoder layer's post-attention norm + MLP (named by `family`) on `device`;
    `weight_transform(name, w)` may replace a projection weight (the layer-0 round-to-nearest probe)."""
    src = getattr(layer, family.mlp)
    missing = [n for n in (*MLP_PROJECTIONS, "act_fn") if not hasattr(src, n)]
    if missing:
        raise ValueError(f"VLMQ: the MLP of this {family.name} model ({type(src).__name__}) has no {missing}; "
                         f"MLP targets need a gated MLP with {MLP_PROJECTIONS}: leave them out of VLMQConfig.targets.")
    with torch.inference_mode(False):
        linears = {}
        for name in MLP_PROJECTIONS:
            module = getattr(src, name)
            weight = module.weight.detach().to(device=device, dtype=torch.float32).clone()
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device=device)
            linear.weight = nn.Parameter(weight_transform(name, weight) if weight_transform else weight)
            if module.bias is not None:
                linear.bias = nn.Parameter(module.bias.detach().to(device=device, dtype=torch.float32).clone())
            linears[name] = linear
        norm = copy.deepcopy(getattr(layer, family.post_attention_norm)).to(device=device, dtype=torch.float32)
        block = MLPBlock(norm, linears["gate_proj"], linears["up_proj"], linears["down_proj"],
                         copy.deepcopy(src.act_fn)).eval()
        block.requires_grad_(False)
    return block
