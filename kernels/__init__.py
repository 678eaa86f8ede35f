"""Triton W2/W3/W4 dequant-GEMM kernels for GPTQ checkpoints (installed as vlmq_gptqmodel.kernels).

Layout conversion (layout.py), plain-torch ground truth (reference.py), shared Triton device code
(triton_tiles.py), one file per kernel algorithm (gemv_splitk.py, gemm_tiled.py, dequant.py), the
choice by M (dispatch.py), the nn.Module (linear.py), random layers for tests and benchmarks
(synthetic.py) and an offline compile/SASS report (compile_check.py). Nothing here imports GPTQModel or
the rest of the package: serving checkpoints through GPTQModel is vlmq_gptqmodel.serving. See README.md.
"""
from .dispatch import choose_algorithm, fused_gemm_max_m, quantized_matmul, set_fused_gemm_max_m
from .layout import GPTQCodes, KernelWeights, repack_for_kernels, unpack_gptq
from .linear import VLMQQuantLinear, kernels_unavailable_reason

__all__ = [
    "GPTQCodes", "KernelWeights", "VLMQQuantLinear", "choose_algorithm", "fused_gemm_max_m",
    "kernels_unavailable_reason", "quantized_matmul", "repack_for_kernels", "set_fused_gemm_max_m",
    "unpack_gptq",
]
