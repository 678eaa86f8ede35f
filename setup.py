from pathlib import Path

from setuptools import find_packages, setup

readme = Path(__file__).with_name("README.md")

# lmms-eval 0.7.3 itself is installed with `pip install --no-deps lmms-eval==0.7.3` (README): it pins
# wandb==0.25.0, which needs protobuf<7 while gptqmodel 7.7.0 needs protobuf>=7.36.2, so pip cannot resolve
# both. These are what its evaluator, task loader and CLI import on the `--model vlmq` path beyond this
# package's own requirements (checked by running the CLI with every other installed package hidden).
LMMS_EVAL_RUNTIME = ["loguru==0.7.3", "sacrebleu==2.6.0", "evaluate==0.4.6", "pytz==2026.6", "tenacity==9.2.1",
                     "pytablewriter==1.2.1"]

# `kernels/` lives at the repository root (Marlin-style layout) but is installed as
# `vlmq_gptqmodel.kernels`: a top-level `kernels` package would collide with Hugging Face's.
setup(
    name="vlmq-gptqmodel",
    version="0.1.0",
    description="VLMQ: token-importance-weighted GPTQ/GPTAQ for vision-language models, as a GPTQModel backend",
    long_description=readme.read_text(encoding="utf-8") if readme.exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vlmq_gptqmodel", "vlmq_gptqmodel.*"]) + ["vlmq_gptqmodel.kernels"],
    package_dir={"vlmq_gptqmodel.kernels": "kernels"},
    package_data={"vlmq_gptqmodel.synth": ["assets/*/*"]},
    install_requires=[
        "gptqmodel==7.7.0",  # private API is used (vlmq_gptqmodel/glue): exactly this version
        "torch==2.14.1",
        "torchvision==0.29.1",  # Qwen-VL processors need it
        "transformers==5.23.0",
        "triton==3.8.0",
        "datasets==5.2.0",
        "pillow==13.0.0",
        "tokenizers==0.23.3",
        "safetensors==0.8.0",
    ],
    extras_require={"test": ["pytest==9.2.0"], "bench": ["matplotlib==3.11.2"], "lmms": LMMS_EVAL_RUNTIME},
    entry_points={
        "console_scripts": ["vlmq=vlmq_gptqmodel.cli:main"],
        "lmms_eval.models": ["vlmq = vlmq_gptqmodel.lmms:manifest"],  # `lmms-eval --model vlmq`
    },
)
