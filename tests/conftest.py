"""Shared fixtures: tiny random Qwen-VL and LLaVA-OneVision models built from configs (no hub), calibration from the
project's synthetic world, and a cached quantize-and-save helper."""
import os

# TorchLinear compiles its dequantizer with inductor on first use (tens of seconds per shape on
# 2 cores); the tests check numerics, not speed, so run it eagerly.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402

# Without a GPU the Triton kernels run in the interpreter. Triton reads TRITON_INTERPRET when a kernel
# is decorated, i.e. at the first import of vlmq_gptqmodel.kernels by any test module: set it here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import vlmq_gptqmodel  # noqa: E402,F401  (registers method="vlmq")
from vlmq_gptqmodel.synth.tiny_vlm import save_tiny_vlm  # noqa: E402
from vlmq_gptqmodel.synth.world import calibration_conversations  # noqa: E402

TEST_IMAGE_SIZE = 112  # 16 image tokens (qwen2/2.5-VL), a clear share of each ~40-token sample
# qwen3-VL merges 32 px patches; LLaVA-OneVision's size is its tile side: 28 px tiles give the synthetic
# world's images 24 image tokens (4 for the base tile, 16 for the 2x2 grid, 4 image_newline)
TEST_IMAGE_SIZES = {"qwen3_vl": 128, "llava_onevision": 28}


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    """tiny_vlm(arch) -> directory of a saved random model with tokenizer and processor."""
    made = {}

    def get(arch: str = "qwen2_vl"):
        if arch not in made:
            size = TEST_IMAGE_SIZES.get(arch, TEST_IMAGE_SIZE)
            made[arch] = save_tiny_vlm(tmp_path_factory.mktemp(arch), arch, image_size=size, seed=0)
        return made[arch]

    return get


@pytest.fixture(scope="session")
def calib():
    return calibration_conversations(6, seed=0)


def quantize_tiny(src, calib, *, method="gptq", vlmq=None, bits=4, group_size=32, desc_act=True):
    """Load `src` with GPTQModel and quantize it on CPU with "gptq", "gptaq" or "vlmq"."""
    from vlmq_gptqmodel.runner import QuantSpec, quantize_model

    return quantize_model(src, calib, QuantSpec(bits=bits, group_size=group_size, desc_act=desc_act), method, vlmq)


def quantized_tensors(model, out_dir):
    """Save `model` and return its packed language-model tensors."""
    from safetensors.torch import load_file

    model.save(str(out_dir))
    return {k: v for k, v in load_file(str(out_dir / "model.safetensors")).items() if ".layers." in k}


@pytest.fixture(scope="session")
def quantize():
    return quantize_tiny


@pytest.fixture(scope="session")
def packed():
    return quantized_tensors


@pytest.fixture(scope="session")
def gptq_checkpoint(tiny_vlm, calib, tmp_path_factory):
    """gptq_checkpoint(bits, group_size, desc_act, arch) -> a saved plain-GPTQ checkpoint directory."""
    made = {}

    def get(bits=3, group_size=32, desc_act=True, arch="qwen2_vl"):
        key = (bits, group_size, desc_act, arch)
        if key not in made:
            out = tmp_path_factory.mktemp(f"gptq_{arch}_w{bits}g{group_size}")
            quantize_tiny(tiny_vlm(arch), calib, bits=bits, group_size=group_size, desc_act=desc_act).save(str(out))
            made[key] = out
        return made[key]

    return get


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


# Tests that quantize through GPTQModel (these fixtures do, and glue/ does throughout) or run a script end to
# end are marked slow (a few more carry @pytest.mark.slow themselves), so that
# `pytest -m "not slow"` is the fast inner loop; `make test` runs everything.
SLOW_FIXTURES = {"quantize", "packed", "gptq_checkpoint"}
SLOW_FOLDERS = {"glue", "scripts"}  # GPTQModel end to end; the scripts as users run them


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames) or item.path.parent.name in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)
