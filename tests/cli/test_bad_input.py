"""Bad input through the CLI and the Python API: one clear error naming the problem and the fix, a non-zero
exit (2: refused before any work, 1: the run failed), and nothing left on disk."""
import json
import math
import re
import shutil

import pytest

from vlmq_gptqmodel import VLMQConfig, cli
from vlmq_gptqmodel.errors import BadInput


@pytest.mark.parametrize("kwargs, message", [
    ({"targets": ("q_proj", "q_proj")}, "at most once"),
    ({"targets": 5}, "targets"),
    ({"targets": ("q_proj", "fc1")}, "must be one of ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')"),
    ({"seed": "abc"}, "seed='abc': must be an int"),
    ({"seed": 1.5}, "must be an int"),
    ({"min_weight": "0.1"}, "min_weight='0.1'"),
    ({"min_weight": float("nan")}, "min_weight=nan"),
    ({"power": -0.5}, "power=-0.5: must be in [0, 4]"),
    ({"power": float("inf")}, "power=inf"),
    ({"random_factor": math.inf}, "random_factor=inf: must be a finite number > 0"),
    ({"random_factor": float("nan")}, "random_factor=nan"),
    ({"random_ratio": True}, "random_ratio=True"),
    ({"norm": ["l1"]}, "norm=['l1']"),
])
def test_vlmq_config_checks_types_and_ranges_when_built(kwargs, message):
    with pytest.raises(BadInput, match=re.escape(message)):
        VLMQConfig(**kwargs)


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory, calibration_images):
    """A folder with a good calibration file and broken ones."""
    root = tmp_path_factory.mktemp("calib")
    records = calibration_images(root, 2)
    (root / "good.json").write_text(json.dumps(records))
    (root / "corrupt.png").write_bytes(b"not an image")
    (root / "corrupt_image.json").write_text(json.dumps([records[0], {**records[1], "image": "corrupt.png"}]))
    (root / "malformed.json").write_text('[{"image": "0.png", "caption": ')
    (root / "empty.json").write_text("")
    (root / "no_records.json").write_text("[]")
    return root


def _models(tiny_vlm, root):
    """Model folders a user might pass by mistake, made from the tiny Qwen2-VL."""
    from transformers import LlamaConfig, LlamaForCausalLM

    src = tiny_vlm("qwen2_vl")
    made = {"good": src}
    made["no_weights"] = root / "no_weights"
    shutil.copytree(src, made["no_weights"], ignore=shutil.ignore_patterns("*.safetensors"))
    made["truncated"] = root / "truncated"
    shutil.copytree(src, made["truncated"])
    data = (made["truncated"] / "model.safetensors").read_bytes()
    (made["truncated"] / "model.safetensors").write_bytes(data[: len(data) // 2])
    made["kv48"] = root / "kv48"  # k/v width 48: not a multiple of 32, which the 3-bit packer needs
    from vlmq_gptqmodel.synth.tiny_vlm import save_tiny_vlm

    save_tiny_vlm(made["kv48"], "qwen2_vl", image_size=112, seed=0, hidden_size=96)
    made["nan"] = root / "nan"
    shutil.copytree(src, made["nan"])
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(made["nan"] / "model.safetensors"))
    key = next(k for k in tensors if "layers.1.self_attn.q_proj.weight" in k)
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(made["nan"] / "model.safetensors"), metadata={"format": "pt"})
    made["llama"] = root / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(made["llama"])
    return made


@pytest.fixture(scope="module")
def models(tiny_vlm, tmp_path_factory):
    return _models(tiny_vlm, tmp_path_factory.mktemp("models"))


# (model, calibration file, extra flags, expected error text, exit code)
QUANTIZE_CASES = {
    "missing --calib": ("good", None, [], "--calib required", 2),
    "text-only model": ("llama", "good.json", [], "'llama' model; vlmq takes the model types", 2),
    "no weight files": ("no_weights", "good.json", [], "has no weight files", 2),
    "truncated weights": ("truncated", "good.json", [], "may be truncated", 2),
    "duplicate targets": ("good", "good.json", ["--targets", "q_proj,q_proj"], "at most once", 2),
    "W3 on k/v width 48": ("kv48", "good.json", ["--bits", "3"], "k_proj: output width 48 is not a multiple of 32", 2),
    "group size above width": ("good", "good.json", ["--bits", "4", "--group-size", "128"],
                               "group size 128 does not divide its input width 64", 2),
    "NaN weight": ("nan", "good.json", [], "layers.1.self_attn.q_proj.weight holds NaN or Inf", 2),
    "corrupt image": ("good", "corrupt_image.json", [], "record 1: image", 2),
    "malformed JSON": ("good", "malformed.json", [], "is not valid JSON", 2),
    "0-byte file": ("good", "empty.json", [], "is empty", 2),
    "no records": ("good", "no_records.json", [], "holds no records", 2),
    "demo with --model": (None, None, ["--demo", "--model", "x", "--calib", "y"], "drop --model, --calib", 2),
    "parent of --out is a file": ("good", "good.json", ["--out", "{tmp}/afile/ckpt"], "cannot write --out", 2),
}


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("case", QUANTIZE_CASES)
def test_quantize_refuses_bad_input_with_one_line_and_leaves_nothing(case, models, calib_dir, tmp_path, capsys):
    model, calib, extra, message, code = QUANTIZE_CASES[case]
    out = tmp_path / "ckpt"
    argv = ["quantize", "--out", str(out), "--group-size", "32", "--dtype", "float32", "--num-samples", "2"]
    argv += ["--model", str(models[model])] if model else []
    argv += ["--calib", str(calib_dir / calib), "--image-root", str(calib_dir)] if calib else []
    if extra and extra[0] == "--demo":
        argv = ["quantize", "--out", str(out)]
    (tmp_path / "afile").write_text("a file, not a folder")
    assert cli.main(argv + [a.format(tmp=tmp_path) for a in extra]) == code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("vlmq quantize: error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, errors
    assert not out.exists() and _leftovers(tmp_path) == []


def test_a_worker_failure_exits_1_with_one_line_and_leaves_no_staging_folder(models, calib_dir, tmp_path, capsys,
                                                                            monkeypatch):
    from gptqmodel.quantization.gptq import GPTQ

    def fail(self, *args, **kwargs):
        raise ValueError("simulated worker failure")

    monkeypatch.setattr(GPTQ, "quantize", fail)
    out = tmp_path / "ckpt"
    argv = ["quantize", "--model", str(models["good"]), "--calib", str(calib_dir / "good.json"), "--image-root",
            str(calib_dir), "--out", str(out), "--group-size", "32", "--method", "gptq", "--num-samples", "2"]
    assert cli.main(argv) == 1
    assert "simulated worker failure" in capsys.readouterr().err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_overwrite_of_a_folder_that_cannot_be_moved_is_refused_up_front(models, calib_dir, tmp_path, capsys,
                                                                       monkeypatch):
    from pathlib import Path

    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "old.txt").write_text("previous checkpoint")
    rename = Path.rename

    def immutable(self, target):
        if self == out:
            raise PermissionError(1, "Operation not permitted", str(out))
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", immutable)
    argv = ["quantize", "--model", str(models["good"]), "--calib", str(calib_dir / "good.json"), "--image-root",
            str(calib_dir), "--out", str(out), "--overwrite"]
    assert cli.main(argv) == 2
    assert "cannot write --out" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["old.txt"] and _leftovers(tmp_path) == []


def test_stale_staging_folders_are_listed_and_removed_on_request(models, calib_dir, tmp_path, capsys):
    out = tmp_path / "ckpt"
    stale = tmp_path / ".ckpt.partial-999999999-dead"  # a pid that is not running
    stale.mkdir()
    argv = ["quantize", "--model", str(models["good"]), "--calib", str(calib_dir / "malformed.json"),
            "--out", str(out)]
    assert cli.main(argv) == 2
    assert "pass --remove-stale" in capsys.readouterr().err and stale.exists()
    assert cli.main(argv + ["--remove-stale"]) == 2
    assert "removed 1 staging folders" in capsys.readouterr().err and not stale.exists()


def test_sigterm_unwinds_like_sigint_and_leaves_no_staging_folder(models, calib_dir, tmp_path, monkeypatch):
    import os
    import signal

    import vlmq_gptqmodel.runner as runner

    def terminated(model_dir, calibration, out_dir, *a, **k):
        (out_dir / "model.safetensors").write_text("partial")
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(runner, "quantize_to_dir", terminated)
    previous = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "ckpt"
    argv = ["quantize", "--model", str(models["good"]), "--calib", str(calib_dir / "good.json"), "--image-root",
            str(calib_dir), "--out", str(out)]
    try:
        with pytest.raises(SystemExit) as stopped:
            cli.main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert not out.exists() and _leftovers(tmp_path) == []
