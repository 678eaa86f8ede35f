"""tools/answer_margins.py: exact match and answer margins per kind and per contrast, on the selection split."""
import answer_margins  # tools/ is on pytest's pythonpath (pyproject.toml)

from vlmq_gptqmodel.synth.world.scene import SceneObject, SceneText


def test_contrast_buckets_hold_their_lower_edge():
    item = lambda contrast: SceneObject("circle", "red", "big", 0, 0, contrast)  # noqa: E731
    assert [answer_margins.contrast_bucket(item(c)) for c in (0.15, 0.2, 0.59, 0.8, 1.0)] == [
        "contrast 0.0-0.2", "contrast 0.2-0.4", "contrast 0.4-0.6", "contrast 0.8-1.0", "contrast 0.8-1.0"]
    assert answer_margins.contrast_bucket(SceneText("AB", 0, 0, 0.3)) == "contrast 0.2-0.4"
    assert answer_margins.contrast_bucket(None) == "no item (count, caption)"


def test_report_on_the_shipped_model(tmp_path, capsys):
    out = tmp_path / "margins.md"
    assert answer_margins.main(["--model", "synthvlm", "--n", "3", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.strip() == capsys.readouterr().out.strip()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "---" not in line
            and not line.startswith("| group")]
    kinds = {row[0].strip() for row in rows}
    assert {"colour", "shape"} <= kinds and "contrast 0.8-1.0" in kinds  # the shipped world: every item at 1
    assert all(0 <= float(row[2]) <= 1 and 0 <= float(row[4]) <= 1 for row in rows)
    assert "selection-split" in text and "reproduce: `python tools/answer_margins.py" in text
