"""Triton W2/W3/W4 dequant-GEMM kernels for GPTQ checkpoints (installed as vlmq_gptqmodel.kernels)."""
