"""Import-time behaviour: GPTQModel's worker count on small hosts, the version pin, the package layout."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlmq_gptqmodel import glue
from vlmq_gptqmodel.synth.evaluation import SHIPPED_MODELS

PROBE = "import os, vlmq_gptqmodel; print(os.environ.get('GPTQMODEL_CPU_WORKERS'))"


def _probe(env_extra):
    env = {k: v for k, v in os.environ.items() if k != "GPTQMODEL_CPU_WORKERS"}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.skipif((os.cpu_count() or 1) > 2, reason="the default only applies to hosts with <= 2 cores")
def test_import_sets_two_cpu_workers_on_a_small_host():
    assert _probe({}) == "2"


def test_import_keeps_a_users_worker_setting():
    assert _probe({"GPTQMODEL_CPU_WORKERS": "5"}) == "5"


def test_other_gptqmodel_versions_are_refused(monkeypatch):
    monkeypatch.setattr(glue, "version", lambda name: "7.8.0")
    with pytest.raises(ImportError, match="gptqmodel==7.7.0"):
        glue.check_gptqmodel_version()


@pytest.mark.slow
def test_kernels_install_under_the_package_not_as_a_top_level_kernels_module(tmp_path):
    code = ("import importlib.util, vlmq_gptqmodel.kernels as k; s = importlib.util.find_spec('kernels'); "
            "print(k.__name__, s.origin if s else None)")
    # run outside the repository, where only the installed package is importable
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    name, top_level = out.stdout.strip().splitlines()[-1].split()
    assert name == "vlmq_gptqmodel.kernels"
    ours = str(Path(__file__).resolve().parents[2] / "kernels")
    assert not top_level.startswith(ours)  # `import kernels` never reaches ours (Hugging Face's owns the name)


def test_gptqmodel_quantize_is_wrapped_once():
    from gptqmodel.models.base import BaseQModel

    from vlmq_gptqmodel.glue.activate import install

    wrapped = BaseQModel.quantize
    install()
    assert BaseQModel.quantize is wrapped and wrapped.__vlmq_wrapped__ is not None


@pytest.mark.slow
def test_the_wheel_ships_the_trained_model(tmp_path):
    """`pip install` (not only an editable install) must bring every shipped synthetic-world VLM as package data."""
    import shutil
    import zipfile

    root, source = Path(__file__).resolve().parents[2], tmp_path / "source"
    source.mkdir()  # build a copy: setuptools writes build/ next to setup.py
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    for name in ("vlmq_gptqmodel", "kernels"):
        shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("vlmq_gptqmodel-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json",
                "chat_template.jinja"}
    for model in SHIPPED_MODELS:
        assert {f"vlmq_gptqmodel/synth/assets/{model}/{name}" for name in expected} <= names, model
