"""`vlmq quantize --demo` (the README's main command), on a tiny model and a few images so it stays quick."""
import json

import pytest
from PIL import Image

from vlmq_gptqmodel.g_picture import picture_size
from vlmq_gptqmodel.synth import demo
from vlmq_gptqmodel.config import VLMQConfig
from vlmq_gptqmodel.runner import QuantSpec


@pytest.mark.slow
def test_demo_writes_three_checkpoints_and_compares_them(tiny_vlm, tmp_path, capsys):
    out = tmp_path / "demo"
    rows = demo.run_demo(out, QuantSpec(bits=3, group_size=32), VLMQConfig(), n_calib=3, n_eval=2,
                         model_dir=tiny_vlm("qwen2_vl"))
    # the tiny model has 2 decoder layers: G of layer 1, q_proj, as the VLMQ run computed it for calibration sample 0
    assert sorted(p.name for p in out.iterdir()) == ["g-layer1-q_proj.png", "gptaq", "gptq", "vlmq"]
    with Image.open(out / "g-layer1-q_proj.png") as picture:
        # a square image and two title lines
        assert picture.format == "PNG" and picture.height == picture_size((1, 1), 0, ["", ""])[1]
    meta = json.loads((out / "vlmq" / "quantize_config.json").read_text())["meta"]
    assert meta["vlmq"]["importance"] == "gradient" and "vlmq" not in json.loads(
        (out / "gptaq" / "quantize_config.json").read_text())["meta"]
    assert list(rows) == ["FP", "GPTQ", "GPTAQ", "VLMQ (gptaq)"]
    for label in ("GPTQ", "GPTAQ", "VLMQ (gptaq)"):
        assert len(rows[label]["layers"]) == 2 and all(e > 0 for e in rows[label]["layers"])
        assert rows[label]["kl"] >= 0 and 0 <= rows[label]["agreement"] <= 1
    # layer 0 is quantized with G = I under layer0="uniform", so VLMQ equals its GPTAQ precursor there
    assert rows["VLMQ (gptaq)"]["layers"][0] == pytest.approx(rows["GPTAQ"]["layers"][0], rel=1e-6)
    printed = capsys.readouterr().out
    assert "| VLMQ (gptaq) |" in printed
    assert f"G of calibration sample 0 in the VLMQ run drawn in {out / 'g-layer1-q_proj.png'}" in printed
