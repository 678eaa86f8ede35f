"""Everything that touches GPTQModel's private API lives in this package.

GPTQModel has no plugin API for new quantization methods or kernels, so VLMQ subclasses and patches
internals that change between releases. They were read and tested against exactly one version; any
other version is refused here, in one place, instead of failing somewhere deep in a quantization run.
"""
from importlib.metadata import PackageNotFoundError, version

SUPPORTED_GPTQMODEL = "7.7.0"


def check_gptqmodel_version() -> str:
    try:
        found = version("gptqmodel")
    except PackageNotFoundError as e:
        raise ImportError(
            f"vlmq_gptqmodel needs gptqmodel=={SUPPORTED_GPTQMODEL}; it is not installed. "
            f"Fix: pip install gptqmodel=={SUPPORTED_GPTQMODEL}"
        ) from e
    if found != SUPPORTED_GPTQMODEL:
        raise ImportError(
            f"vlmq_gptqmodel was built against gptqmodel=={SUPPORTED_GPTQMODEL} and uses its private API; "
            f"found gptqmodel=={found}. Fix: pip install gptqmodel=={SUPPORTED_GPTQMODEL}"
        )
    return found
