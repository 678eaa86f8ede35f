"""VLMQ: token-importance-weighted GPTQ/GPTAQ for vision-language models, as a GPTQModel backend.

    import vlmq_gptqmodel                     # adds method="vlmq" to GPTQModel's quantize()
    from gptqmodel import GPTQModel, QuantizeConfig
    model = GPTQModel.load(path, QuantizeConfig(bits=3, group_size=128, desc_act=True))
    model.quantize(calib, method="vlmq", vlmq=vlmq_gptqmodel.VLMQConfig())
    model.save(out_dir)                       # a standard GPTQ checkpoint
"""
import os

# GPTQModel sizes its CPU thread pool as (cores + 1) // 2 workers and cannot build its 2-worker
# model-loader pool under a 1-worker parent (2-core hosts). It reads this variable when the pool is
# first built, lazily, so setting it here works even after `import gptqmodel`. A user's value wins.
if ((os.cpu_count() or 1) + 1) // 2 < 2:
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

from .glue import check_gptqmodel_version  # noqa: E402

check_gptqmodel_version()

from .config import VLMQConfig  # noqa: E402
from .glue.quantize import SUPPORTED_MODEL_TYPES, install  # noqa: E402

install()

__all__ = ["VLMQConfig", "SUPPORTED_MODEL_TYPES"]
__version__ = "0.1.0"
