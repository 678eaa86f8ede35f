"""Serve a GPTQ/VLMQ checkpoint through GPTQModel with the project's Triton kernels.

    from vlmq_gptqmodel.serving import load_quantized
    model = load_quantized("out/qwen2vl-w3g128", device="cuda:0")   # a GPTQModel model, generate() as usual

The kernels themselves (vlmq_gptqmodel.kernels) need only torch and Triton; the GPTQModel side, which
touches its private API, is glue/serving.py.
"""
from .glue.serving import ServingReport, load_quantized, serve

__all__ = ["ServingReport", "load_quantized", "serve"]
