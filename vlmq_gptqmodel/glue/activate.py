"""How `import vlmq_gptqmodel` adds `method=` / `vlmq=` to GPTQModel's `BaseQModel.quantize` (and
registers the LLaVA-OneVision model definition, glue/llava_onevision.py, at the same moment).

The wrap happens at once if gptqmodel is already imported, otherwise the moment it finishes importing (a
one-shot import hook), after checking its version. So importing this package stays light (`vlmq --help` needs neither torch nor
GPTQModel, and does not print GPTQModel's banner) while `import vlmq_gptqmodel` followed by
`from gptqmodel import GPTQModel`, in either order, gives the wrapped quantize(). The wrapper imports the
method (glue/quantize.py) only when called.
"""
from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys

GPTQMODEL = "gptqmodel"


def install_when_gptqmodel_loads() -> None:
    if GPTQMODEL in sys.modules:
        install()
    elif not any(isinstance(finder, _AfterGPTQModelImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterGPTQModelImport())


def install() -> None:
    """Wrap `BaseQModel.quantize` and register the model definitions GPTQModel lacks (LLaVA-OneVision,
    glue/llava_onevision.py); idempotent. Another gptqmodel version than the pinned one is refused."""
    from . import check_gptqmodel_version

    check_gptqmodel_version()
    from gptqmodel.models.base import BaseQModel

    from .llava_onevision import register

    register()

    original = BaseQModel.quantize
    if getattr(original, "__vlmq_wrapped__", None) is not None:
        return

    @functools.wraps(original)
    def quantize(self, *args, **kwargs):
        from .quantize import quantize_with_method

        return quantize_with_method(self, original, *args, **kwargs)

    quantize.__vlmq_wrapped__ = original
    BaseQModel.quantize = quantize


class _AfterGPTQModelImport(importlib.abc.MetaPathFinder):
    """Finds gptqmodel with the other finders and runs `install()` right after its module has executed."""

    def find_spec(self, name, path=None, target=None):
        if name != GPTQMODEL:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from coming back here
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            install()

        spec.loader.exec_module = exec_module
        return spec
