"""lmms-eval model `vlmq`: evaluate a GPTQ checkpoint (or a full-precision model) with lmms-eval 0.7.3.

    lmms-eval --model vlmq --model_args pretrained=DIR[,kernels=auto|gptqmodel|vlmq][,dtype=...] --tasks mme

lmms-eval finds the model through the entry-point group `lmms_eval.models` (setup.py), whose payload is
`manifest` below. This module stays light on purpose: lmms-eval loads every entry point whenever it builds
its model registry, for any model, so the class (which needs torch, transformers and GPTQModel) lives in
`vlmq_gptqmodel.lmms.model` and is imported only when `--model vlmq` is asked for.
"""

MODEL_NAME = "vlmq"
CLASS_PATH = "vlmq_gptqmodel.lmms.model.VLMQ"


def manifest():
    """The entry point's payload: lmms-eval calls it while building its model registry."""
    from lmms_eval.models.registry_v2 import ModelManifest

    # a chat model: lmms-eval 0.7.3 hands it each document as chat messages (images and text in order)
    return ModelManifest(model_id=MODEL_NAME, chat_class_path=CLASS_PATH)
