"""The paper's "block": input norm + self-attention + residual of one decoder layer, as a private
fp32 copy on which autograd works.

GPTQModel runs its whole loop under `torch.inference_mode()`: layer weights and cached activations
are inference tensors and its HookedLinear.forward is itself inference-mode, so nothing computed
through the live layer can be differentiated. The block here is rebuilt from the layer's own classes
and config with cloned fp32 weights, and is only ever called under `inference_mode(False)`.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
from torch import nn

from .config import ATTENTION_PROJECTIONS, GRADIENT_PATHS
from .families import QWEN_VL, Family

Tensor = torch.Tensor
Projections = Tuple[str, ...]


class RecordingBlock(nn.Module):
    """A block that records the outputs of its named projections while `recording` (the z of Eq. 4)."""

    def watch(self, projections: Dict[str, nn.Module]) -> None:
        self.recorded: Dict[str, Tensor] = {}
        self._record: Projections = ()
        for name, module in projections.items():
            module.register_forward_hook(self._hook_for(name))

    def _hook_for(self, name: str) -> Callable:
        def hook(module, args, output):
            if name in self._record:
                self.recorded[name] = output
        return hook

    @contextlib.contextmanager
    def recording(self, names: Iterable[str]):
        self._record, self.recorded = tuple(names), {}
        try:
            yield self.recorded
        finally:
            self._record = ()


class AttentionBlock(RecordingBlock):
    """y = x + Attn(Norm(x))."""

    def __init__(self, norm: nn.Module, attn: nn.Module):
        super().__init__()
        self.norm = norm
        self.attn = attn
        self.watch({name: getattr(attn, name) for name in ATTENTION_PROJECTIONS})

    def forward(self, x: Tensor, mask: Tensor, position_embeddings) -> Tensor:
        out = self.attn(hidden_states=self.norm(x), attention_mask=mask, position_embeddings=position_embeddings)
        return x + out[0]

    def attention_probs(self, x: Tensor, mask: Tensor, position_embeddings) -> Tensor:
        """Softmax attention probabilities [B, heads, S, S] (needs a block built with eager=True)."""
        return self.attn(hidden_states=self.norm(x), attention_mask=mask, position_embeddings=position_embeddings)[1]


def copy_attention_block(
    layer: nn.Module,
    device: torch.device,
    eager: bool = False,
    weight_transform: Optional[Callable[[str, Tensor], Tensor]] = None,
    family: Family = QWEN_VL,
) -> AttentionBlock:
    """Private fp32 copy of a decoder layer's input norm + self-attention (named by `family`) on `device`.

    The attention is re-instantiated from its class and config (so its Linear children are plain
    nn.Linear, not GPTQModel's HookedLinear) and given cloned weights. `eager` selects the eager
    attention kernel, which returns attention probabilities. `weight_transform(name, w)` may replace
    a projection weight (used by the layer-0 round-to-nearest probe).
    """
    with torch.inference_mode(False):
        src = getattr(layer, family.attention)
        config = src.config
        if eager:
            config = copy.copy(config)
            config._attn_implementation = "eager"
        with torch.device("meta"):
            attn = type(src)(config, src.layer_idx)
        state = {}
        for name, tensor in src.state_dict().items():
            t = tensor.detach().to(device=device, dtype=torch.float32).clone()
            proj = name.split(".")[0]
            if weight_transform is not None and name.endswith(".weight") and proj.endswith("_proj"):
                t = weight_transform(proj, t)
            state[name] = t
        attn.load_state_dict(state, assign=True, strict=True)
        norm = copy.deepcopy(getattr(layer, family.input_norm)).to(device=device, dtype=torch.float32)
        block = AttentionBlock(norm, attn).eval()
        block.requires_grad_(False)
    return block


def causal_mask(batch: int, seq: int, device: torch.device, keep: Optional[Tensor] = None) -> Tensor:
    """Additive fp32 mask [B, 1, S, S]: causal, and padded keys (keep == False) masked out.
    Explicit so that the sdpa and eager kernels see the same mask."""
    allowed = torch.ones(seq, seq, dtype=torch.bool, device=device).tril().expand(batch, 1, seq, seq)
    if keep is not None:
        allowed = allowed & keep.to(device=device, dtype=torch.bool)[:, None, None, :]
    mask = torch.zeros(allowed.shape, dtype=torch.float32, device=device)
    return mask.masked_fill(~allowed, torch.finfo(torch.float32).min)


def block_gradients(
    block: RecordingBlock,
    x_fp: Tensor,
    x_q: Tensor,
    mask: Tensor,
    position_embeddings,
    names: Projections,
    quant_block: Optional[RecordingBlock] = None,
    at: str = "quantized",
) -> Dict[str, Tensor]:
    """dL/dz for each named projection output z, with L = || block(x_fp) - quant_block(x_q) ||^2 (paper
    Eq. 5); quant_block defaults to block. `at` picks the path whose z is differentiated: "quantized"
    (the paper's, z of quant_block(x_q)) or "fp" (z of block(x_fp), the other path held fixed)."""
    if at not in GRADIENT_PATHS:
        raise ValueError(f"at={at!r}: must be one of {GRADIENT_PATHS}")
    quant_block = block if quant_block is None else quant_block
    with torch.inference_mode(False), torch.enable_grad():
        paths = [(block, x_fp), (quant_block, x_q)]  # (held fixed, differentiated)
        (fixed, x_fixed), (net, x) = paths if at == "quantized" else paths[::-1]
        with torch.no_grad():
            other = fixed(x_fixed, mask, position_embeddings)
        x = x.detach().clone().requires_grad_(True)
        with net.recording(names) as outs:
            out = net(x, mask, position_embeddings)
        loss = (out - other).pow(2).sum()
        grads = torch.autograd.grad(loss, [outs[n] for n in names])
    return dict(zip(names, grads))


def projection_errors(
    block: RecordingBlock,
    x_fp: Tensor,
    x_q: Tensor,
    mask: Tensor,
    position_embeddings,
    names: Projections,
    quant_block: Optional[RecordingBlock] = None,
) -> Dict[str, Tensor]:
    """z_hat - z for each named projection, z from block(x_fp) and z_hat from quant_block(x_q): the
    gradient of the layer-wise loss 0.5 * ||z_hat - z||^2 w.r.t. z_hat (paper Table 7's ablation)."""
    quant_block = block if quant_block is None else quant_block
    with torch.inference_mode(False), torch.no_grad():
        with block.recording(names) as fp:
            block(x_fp, mask, position_embeddings)
        with quant_block.recording(names) as q:
            quant_block(x_q, mask, position_embeddings)
    return {n: q[n] - fp[n] for n in names}
