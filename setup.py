from setuptools import setup

# `kernels/` lives at the repository root (Marlin-style layout) but is installed as
# `vlmq_gptqmodel.kernels`: a top-level `kernels` package would collide with Hugging Face's.
setup(
    name="vlmq-gptqmodel",
    version="0.1.0",
    description="VLMQ: token-importance-weighted GPTQ/GPTAQ for vision-language models, as a GPTQModel backend",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["vlmq_gptqmodel", "vlmq_gptqmodel.kernels"],
    package_dir={"vlmq_gptqmodel": "vlmq_gptqmodel", "vlmq_gptqmodel.kernels": "kernels"},
    include_package_data=True,
    install_requires=[
        "gptqmodel==7.7.0",
        "torch==2.14.1",
        "torchvision==0.29.1",
        "transformers==5.23.0",
        "triton==3.8.0",
        "datasets==5.2.0",
        "pillow==13.0.0",
        "tokenizers==0.23.3",
        "safetensors==0.8.0",
    ],
    extras_require={"test": ["pytest"], "bench": ["matplotlib"]},
    entry_points={"console_scripts": ["vlmq=vlmq_gptqmodel.cli:main"]},
)
