"""VLMQ: token-importance-weighted GPTQ/GPTAQ for vision-language models, as a GPTQModel backend.

    import vlmq_gptqmodel                     # adds method="vlmq" to GPTQModel's quantize()
    from gptqmodel import GPTQModel, QuantizeConfig
    model = GPTQModel.load(path, QuantizeConfig(bits=3, group_size=128, desc_act=True))
    model.quantize(calib, method="vlmq", vlmq=vlmq_gptqmodel.VLMQConfig())
    model.save(out_dir)                       # a standard GPTQ checkpoint

Layout: the method (config, families, streams, importance, attention_block, mlp_block, layer_importance,
rtn), the pipeline (calibration, runner, model_dir, output_dir, cli), everything that touches GPTQModel's
private API (glue/), and the synthetic-world yardstick that measures it (synth/: world, tiny models,
evaluation, RTN baseline, demo), which depends on the rest and never the other way.
"""
import os

# GPTQModel sizes its CPU thread pool as (cores + 1) // 2 workers and cannot build its 2-worker
# model-loader pool under a 1-worker parent (2-core hosts). It reads this variable when the pool is
# first built, lazily, so setting it here works even after `import gptqmodel`. A user's value wins.
if ((os.cpu_count() or 1) + 1) // 2 < 2:
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

from .config import VLMQConfig  # noqa: E402
from .families import SUPPORTED_MODEL_TYPES  # noqa: E402
from .glue.activate import install_when_gptqmodel_loads  # noqa: E402

install_when_gptqmodel_loads()  # the package's only import-time side effect

__all__ = ["VLMQConfig", "SUPPORTED_MODEL_TYPES"]
__version__ = "0.1.0"
