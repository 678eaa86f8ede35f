"""`VLMQQuantLinear`: an inference-only nn.Module that serves a GPTQ linear layer with the Triton kernels.

Built once from GPTQ tensors (true zero points, as a loaded GPTQModel TorchLinear holds them); the
weights are repacked at construction (layout.py) and every forward goes through dispatch.py.
It does not depend on GPTQModel; vlmq_gptqmodel/glue/serving.py swaps it into GPTQModel models.
"""
from typing import Optional

import torch
from torch import nn

from .dispatch import quantized_matmul
from .layout import KernelWeights, repack_for_kernels, unpack_gptq
from .triton_tiles import INTERPRETING

SUPPORTED_ACTIVATION_DTYPES = (torch.float16, torch.bfloat16)


def kernels_unavailable_reason(device: torch.device) -> Optional[str]:
    """Why the kernels cannot run on `device`, or None if they can."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if torch.version.hip is not None:
            return "ROCm GPUs are not supported by the VLMQ kernels (only tested for NVIDIA CUDA)"
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            return f"compute capability {major}.{minor} < 8.0 (bf16 tensor cores need Ampere or newer)"
        return None
    if INTERPRETING:
        return None
    return (f"device {device} is not a CUDA GPU; the Triton kernels only run elsewhere under the Triton "
            "interpreter (TRITON_INTERPRET=1 set before importing vlmq_gptqmodel.kernels), which is for tests")


class VLMQQuantLinear(nn.Module):
    """y = x @ W.T + b for a 2/3/4-bit GPTQ weight W, fp16 or bf16 activations, fp32 accumulation."""

    def __init__(self, weights: KernelWeights, bias: Optional[torch.Tensor] = None):
        super().__init__()
        self.bits = weights.bits
        self.in_features = weights.in_features
        self.out_features = weights.out_features
        self.group_size = weights.group_size
        for name in ("words", "scales", "zeros", "perm"):
            self.register_buffer(name, getattr(weights, name))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_gptq(cls, *, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                  bias: Optional[torch.Tensor], bits: int, group_size: int, in_features: int,
                  out_features: int) -> "VLMQQuantLinear":
        codes = unpack_gptq(qweight, qzeros, scales, g_idx, bits, group_size, in_features, out_features)
        return cls(repack_for_kernels(codes), bias)

    def kernel_weights(self) -> KernelWeights:
        """The layer's tensors as the kernels take them (follows .to()/.cuda() of the buffers)."""
        return KernelWeights(bits=self.bits, in_features=self.in_features, out_features=self.out_features,
                             group_size=self.group_size, words=self.words, scales=self.scales, zeros=self.zeros,
                             perm=self.perm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected last dimension {self.in_features}, got input of shape {tuple(x.shape)}")
        if x.dtype not in SUPPORTED_ACTIVATION_DTYPES:
            raise TypeError(f"VLMQQuantLinear takes fp16 or bf16 activations, got {x.dtype}; cast the model with "
                            ".half() or .to(torch.bfloat16)")
        if x.device != self.words.device:
            raise ValueError(f"input on {x.device} but the layer's weights are on {self.words.device}")
        reason = kernels_unavailable_reason(x.device)
        if reason is not None:
            raise RuntimeError(f"VLMQQuantLinear cannot run here: {reason}")
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] == 0:
            return x.new_empty((*x.shape[:-1], self.out_features))
        out = quantized_matmul(rows.contiguous(), self.kernel_weights(), self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, act_order={self.perm is not None}, bias={self.bias is not None}")
