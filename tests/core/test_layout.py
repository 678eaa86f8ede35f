"""The package's layering, checked on the source: kernels depend on nothing above them, the method never
on the synthetic-world yardstick, and importing the package (or building the CLI) stays light."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "vlmq_gptqmodel"


def imported_modules(path: Path) -> set:
    """Absolute names of every module a file imports, anywhere in it (relative imports resolved)."""
    package = ("vlmq_gptqmodel.kernels" if path.parent == ROOT / "kernels"
               else ".".join(path.relative_to(ROOT).parent.parts))
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module)
    return names


def test_imported_modules_resolves_relative_imports():
    assert imported_modules(PACKAGE / "glue" / "quantize.py") >= {"vlmq_gptqmodel.config", "vlmq_gptqmodel.glue.guard",
                                                                  "gptqmodel.models.base"}


@pytest.mark.parametrize("path", sorted((ROOT / "kernels").glob("*.py")), ids=lambda p: p.name)
def test_kernels_import_nothing_above_them(path):
    above = {m for m in imported_modules(path)
             if m.split(".")[0] == "gptqmodel"
             or (m.startswith("vlmq_gptqmodel") and not m.startswith("vlmq_gptqmodel.kernels"))}
    assert not above, f"{path.name} imports {sorted(above)}"


def method_files():
    return sorted(p for p in PACKAGE.rglob("*.py")
                  if "synth" not in p.relative_to(PACKAGE).parts and p.name != "cli.py")


@pytest.mark.parametrize("path", method_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_method_never_imports_the_synthetic_world(path):
    assert not {m for m in imported_modules(path) if m.startswith("vlmq_gptqmodel.synth")}


@pytest.mark.parametrize("path", method_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_gptqmodel_internals_are_touched_only_in_glue(path):
    """Outside glue/ only GPTQModel's public names (the top-level package and its QuantizeConfig) are used."""
    public = {"gptqmodel", "gptqmodel.quantization.config"}
    if "glue" in path.relative_to(PACKAGE).parts:
        return
    private = {m for m in imported_modules(path) if m.split(".")[0] == "gptqmodel" and m not in public}
    assert not private, f"{path.name} imports {sorted(private)}"


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return done.stdout.strip().splitlines()[-1]


def test_importing_the_package_and_building_the_cli_load_neither_torch_nor_gptqmodel():
    code = ("import sys, vlmq_gptqmodel; from vlmq_gptqmodel.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'gptqmodel') if m in sys.modules))")
    assert _run(code) == "[]"


def test_the_kernels_load_without_gptqmodel():
    code = "import sys, vlmq_gptqmodel.kernels; print('gptqmodel' in sys.modules)"
    assert _run(code) == "False"


@pytest.mark.slow  # imports GPTQModel in a fresh process
@pytest.mark.parametrize("order", ["package first", "gptqmodel first"])
def test_quantize_gets_method_vlmq_in_either_import_order(order):
    imports = ["import vlmq_gptqmodel", "from gptqmodel.models.base import BaseQModel"]
    if order == "gptqmodel first":
        imports.reverse()
    code = "; ".join(imports + ["from gptqmodel.models.base import BaseQModel",
                                "print(getattr(BaseQModel.quantize, '__vlmq_wrapped__', None) is not None)"])
    assert _run(code) == "True"
