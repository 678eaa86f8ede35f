"""The `vlmq quantize` command: a checkpoint on success, clear errors and no half-written output otherwise."""
import json

import pytest

from vlmq_gptqmodel import cli


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory, calibration_images):
    root = tmp_path_factory.mktemp("calib")
    (root / "calib.json").write_text(json.dumps(calibration_images(root, 4, sharegpt=True)))
    return root / "calib.json"


def _args(model, calib_file, out, *extra):
    return ["quantize", "--model", str(model), "--calib", str(calib_file), "--image-root", str(calib_file.parent),
            "--bits", "3", "--group-size", "32", "--out", str(out), *extra]


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


@pytest.mark.slow
def test_quantize_writes_a_gptq_checkpoint_with_vlmq_metadata(tiny_vlm, calib_file, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert cli.main(_args(tiny_vlm("qwen2_vl"), calib_file, out, "--precursor", "gptq", "--norm", "l2")) == 0
    qc = json.loads((out / "quantize_config.json").read_text())
    assert qc["bits"] == 3 and qc["format"] == "gptq"
    assert qc["meta"]["vlmq"]["precursor"] == "gptq" and qc["meta"]["vlmq"]["norm"] == "l2"
    printed = capsys.readouterr().out
    assert "kept 4 samples" in printed
    # the per-layer G summary comes again at the end, after GPTQModel's own log lines
    assert printed.index("VLMQ layer   1 [gradient]") > printed.index("token importance G per decoder layer")
    assert _leftovers(tmp_path) == []
    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask()  # readable by others as the umask allows, not 0700


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_existing_output_is_refused_before_any_work(tiny_vlm, calib_file, tmp_path, capsys):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert cli.main(_args(tiny_vlm("qwen2_vl"), calib_file, out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_failed_run_leaves_no_output_directory(tiny_vlm, calib_file, tmp_path, monkeypatch):
    import vlmq_gptqmodel.runner as runner

    def fail_midway(model_dir, calibration, out_dir, *a, **k):
        (out_dir / "model.safetensors").write_text("partial")
        raise RuntimeError("simulated crash during save")

    monkeypatch.setattr(runner, "quantize_to_dir", fail_midway)
    out = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="simulated"):
        cli.main(_args(tiny_vlm("qwen2_vl"), calib_file, out))
    assert not out.exists() and _leftovers(tmp_path) == []


def test_missing_arguments_and_bad_settings_are_named(tiny_vlm, calib_file, tmp_path, capsys):
    assert cli.main(["quantize", "--model", str(tiny_vlm("qwen2_vl")), "--out", str(tmp_path / "x")]) == 2
    assert "--calib" in capsys.readouterr().err
    assert cli.main(_args(tiny_vlm("qwen2_vl"), calib_file, tmp_path / "y", "--targets", "q_proj,fc1")) == 2
    assert "targets" in capsys.readouterr().err
    assert cli.main(_args(tmp_path, calib_file, tmp_path / "z")) == 2
    assert "config.json" in capsys.readouterr().err


def test_dtype_reaches_gptqmodel_load_and_bad_dtypes_are_named(tiny_vlm, calib_file, tmp_path, monkeypatch):
    import torch
    from gptqmodel import GPTQModel

    from vlmq_gptqmodel.runner import QuantSpec

    assert QuantSpec().torch_dtype() == "auto"  # GPTQModel's own default, unchanged
    assert QuantSpec(dtype="float32").torch_dtype() is torch.float32
    with pytest.raises(ValueError, match="float32"):
        QuantSpec(dtype="fp32").torch_dtype()

    seen = {}

    def capture(path, qcfg, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop after load")  # the run fails here and must leave no output behind

    monkeypatch.setattr(GPTQModel, "load", capture)
    out = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="stop after load"):
        cli.main(_args(tiny_vlm("qwen2_vl"), calib_file, out, "--dtype", "float32"))
    assert seen["dtype"] is torch.float32
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("arch,length", [("qwen2_vl", 512), ("llava_onevision", 986)])
def test_default_max_length_is_the_paper_length_of_the_model_family(tiny_vlm, calib_file, tmp_path, monkeypatch,
                                                                    arch, length):
    seen = []

    def stop(args, max_length):
        seen.append(max_length)
        raise cli.BadInput("stop after the length is chosen")

    monkeypatch.setattr(cli, "load_calibration", stop)
    assert cli.main(_args(tiny_vlm(arch), calib_file, tmp_path / "a")) == 2
    assert cli.main(_args(tiny_vlm(arch), calib_file, tmp_path / "b", "--max-length", "300")) == 2
    assert seen == [length, 300]


def test_llava_onevision_samples_whose_image_is_cut_are_refused_with_the_length_needed(tiny_vlm, calib_file, tmp_path,
                                                                                      capsys):
    out = tmp_path / "ckpt"
    assert cli.main(_args(tiny_vlm("llava_onevision"), calib_file, out, "--max-length", "20")) == 2
    captured = capsys.readouterr()
    assert "dropped 4 whose vision tokens would be cut" in captured.out
    # "<|im_start|> user", then the 24 image tokens of a synthetic image (28 px tiles, 2x2 grid)
    assert "no calibration sample fits --max-length 20 (the shortest vision segment ends at token 26)" in captured.err
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.slow
def test_quantize_llava_onevision_with_the_l2_norm(tiny_vlm, calib_file, tmp_path, capsys):
    """The paper's LLaVA-OneVision variant (l2) through the command, at the family's default length."""
    from safetensors import safe_open

    out = tmp_path / "ckpt"
    assert cli.main(_args(tiny_vlm("llava_onevision"), calib_file, out, "--norm", "l2", "--dtype", "float32")) == 0
    qc = json.loads((out / "quantize_config.json").read_text())
    assert qc["format"] == "gptq" and qc["meta"]["vlmq"]["norm"] == "l2"
    assert qc["meta"]["vlmq"]["precursor"] == "gptaq"
    assert "kept 4 samples" in capsys.readouterr().out
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.language_model.layers.1.self_attn.o_proj.qweight" in keys and "model.image_newline" in keys


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2_vl", "llava_onevision"])
def test_target_vllm_writes_an_engine_ready_checkpoint(tiny_vlm, calib_file, tmp_path, capsys, arch):
    """Act-order off, true zero points, and every full-precision linear (vision tower, projector) excluded."""
    out = tmp_path / "ckpt"
    assert cli.main(_args(tiny_vlm(arch), calib_file, out, "--target", "vllm", "--dtype", "float32")) == 0
    quant = json.loads((out / "config.json").read_text())["quantization_config"]
    assert quant["desc_act"] is False and quant["checkpoint_format"] == "gptq_v2"
    assert "served by GPTQModel and vLLM" in capsys.readouterr().out
    assert cli.main(["check", str(out), "--target", "sglang"]) == 0
    assert "ready for sglang" in capsys.readouterr().out
