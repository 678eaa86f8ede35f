"""Triton W2/W3/W4 dequant-GEMM kernels for GPTQ checkpoints (installed as vlmq_gptqmodel.kernels).

Layout conversion (layout.py), plain-torch ground truth (reference.py), shared Triton device code
(triton_tiles.py), one file per kernel algorithm (gemv_splitk.py, gemm_tiled.py, dequant.py), the
choice by M (dispatch.py), the nn.Module (linear.py), random layers for tests and benchmarks
(synthetic.py) and an offline compile/SASS report (compile_check.py). Serving through GPTQModel lives
in vlmq_gptqmodel/glue/serving.py; `load_quantized` and `serve` below forward to it. See README.md.
"""
from .dispatch import choose_algorithm, fused_gemm_max_m, quantized_matmul, set_fused_gemm_max_m
from .layout import GPTQCodes, KernelWeights, repack_for_kernels, unpack_gptq
from .linear import VLMQQuantLinear, kernels_unavailable_reason


def load_quantized(*args, **kwargs):
    """Load a GPTQ/VLMQ checkpoint with GPTQModel and serve it with these kernels;
    see vlmq_gptqmodel.glue.serving.load_quantized."""
    from ..glue.serving import load_quantized as load
    return load(*args, **kwargs)


def serve(*args, **kwargs):
    """Swap an already loaded GPTQModel model's TorchLinear layers for VLMQQuantLinear;
    see vlmq_gptqmodel.glue.serving.serve."""
    from ..glue.serving import serve as swap
    return swap(*args, **kwargs)


__all__ = [
    "GPTQCodes", "KernelWeights", "VLMQQuantLinear", "choose_algorithm", "fused_gemm_max_m",
    "kernels_unavailable_reason", "load_quantized", "quantized_matmul", "repack_for_kernels", "serve",
    "set_fused_gemm_max_m", "unpack_gptq",
]
