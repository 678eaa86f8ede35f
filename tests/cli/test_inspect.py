"""`vlmq inspect`: a PNG of the G that a real VLMQ run computes for one sample; clear refusals before any work."""
import contextlib
import io
import json
import re

import pytest
from PIL import Image

from vlmq_gptqmodel import cli
from vlmq_gptqmodel import g_picture as gp
from vlmq_gptqmodel.errors import RunFailed
from vlmq_gptqmodel.synth.evaluation import synthvlm_dir
from vlmq_gptqmodel.synth.world import make_samples
from vlmq_gptqmodel.synth.world.render import item_tiles

IMAGE_SIZE = 224  # the shipped model's images: 8x8 merged vision tokens
SCENE = 2  # eval split, seed 0: a small green cross, a big blue cross and the text "55"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    sample = make_samples("eval", SCENE + 1, seed=0)[SCENE]
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    sample.image.save(path)
    return sample, path


def _args(image, out, *extra, model=None):
    return ["inspect", "--model", str(model or synthvlm_dir()), "--image", str(image),
            "--question", "what shape is the green object ?", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def inspected(scene, tmp_path_factory, calibration_images):
    """One real run: the shipped model, W3 g128 VLMQ(gptaq) in float32, calibrated on the scene and two
    captioned calibration images (module scope, so capsys cannot read its output)."""
    calib = tmp_path_factory.mktemp("calib")
    (calib / "calib.json").write_text(json.dumps(calibration_images(calib, 2)))
    out = tmp_path_factory.mktemp("inspect") / "g.png"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(_args(scene[1], out, "--answer", "cross", "--layer", "2", "--projection", "v_proj",
                              "--dtype", "float32", "--calib", str(calib / "calib.json"), "--image-root", str(calib)))
    return code, out, printed.getvalue()


@pytest.mark.slow
def test_the_png_is_written_with_the_heat_map_and_the_strip(inspected):
    code, out, printed = inspected
    assert code == 0 and f"wrote {out}" in printed and "calibrated on the sample and 2 more" in printed
    assert [p.name for p in out.parent.iterdir()] == ["g.png"]
    with Image.open(out) as picture:
        assert picture.format == "PNG"
        width, height = picture.size
    pw, ph = gp.panel_size((IMAGE_SIZE, IMAGE_SIZE))
    assert height == gp.picture_size((IMAGE_SIZE, IMAGE_SIZE), 0, ["", ""])[1]
    assert width >= 2 * gp.MARGIN + pw + gp.MARGIN + gp.SCALE_WIDTH


@pytest.mark.slow
def test_the_hottest_image_patch_of_a_known_scene_holds_an_object_or_glyph(scene, inspected):
    sample, _ = scene
    _, out, printed = inspected
    row, col, rows, cols = map(int, re.search(r"row (\d+), column (\d+) of (\d+)x(\d+)", printed).groups())
    assert (rows, cols) == (IMAGE_SIZE // 28, IMAGE_SIZE // 28)
    items = [sample.scene.text, *sample.scene.objects]
    item_cells = {t for item in items for t in item_tiles(item, IMAGE_SIZE)}
    assert len(item_cells) == 4  # 4 of the 64 image tokens hold an item: a random pick would hit 1 in 16
    assert row * cols + col in item_cells
    # the picture frames that cell in white
    with Image.open(out) as picture:
        top = gp.MARGIN + 2 * gp.TITLE_LINE + gp.MARGIN
        cell = gp.panel_size((IMAGE_SIZE, IMAGE_SIZE))[0] / cols
        assert picture.getpixel((round(gp.MARGIN + (col + 0.5) * cell), round(top + row * cell))) == (255, 255, 255)


def test_bad_input_is_refused_in_one_line_before_any_work(scene, tmp_path, capsys):
    out = tmp_path / "g.png"
    cases = [
        (_args(tmp_path / "missing.png", out), "no such file"),
        (_args(scene[1], out, "--layer", "4"), "--layer 4: the model has decoder layers 0-3"),
        (_args(scene[1], out, "--projection", "o_proj", "--targets", "q_proj,k_proj"), "VLMQ weights only its targets"),
        (_args(scene[1], tmp_path / "g.jpg"), "ending in .png"),
        (_args(scene[1], out, "--bits", "3", "--min-weight", "2"), "min_weight=2.0"),
    ]
    for args, message in cases:
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("vlmq inspect: error:") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def _model_copy(root, **config_changes):
    """The shipped model's folder with its config changed (weights linked, not copied)."""
    root.mkdir()
    config = json.loads((synthvlm_dir() / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**config, **config_changes}))
    (root / "model.safetensors").symlink_to(synthvlm_dir() / "model.safetensors")
    return root


def test_unsupported_and_quantized_models_are_refused(scene, tmp_path, capsys):
    llava = _model_copy(tmp_path / "llava", model_type="llava_onevision")
    assert cli.main(_args(scene[1], tmp_path / "g.png", model=llava)) == 2
    assert "anyres" in capsys.readouterr().err
    quantized = _model_copy(tmp_path / "quantized", quantization_config={"bits": 3})
    assert cli.main(_args(scene[1], tmp_path / "g.png", model=quantized)) == 2
    assert "full-precision model" in capsys.readouterr().err


def test_an_existing_picture_is_kept_unless_overwrite(scene, tmp_path, capsys):
    out = tmp_path / "g.png"
    out.write_bytes(b"user data")
    assert cli.main(_args(scene[1], out)) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"user data"


def test_a_failed_run_leaves_no_picture(scene, tmp_path, monkeypatch, capsys):
    import vlmq_gptqmodel.inspect_g as inspect_g

    def fail(*args, **kwargs):
        raise RunFailed("layer 1 produced NaN activations")

    monkeypatch.setattr(inspect_g, "run_and_capture", fail)
    out = tmp_path / "g.png"
    out.write_bytes(b"user data")
    assert cli.main(_args(scene[1], out, "--overwrite")) == 1
    assert "NaN" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"] and out.read_bytes() == b"user data"
