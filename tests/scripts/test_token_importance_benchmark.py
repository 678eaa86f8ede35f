"""benchmarks/token_importance.py: its statistics on a G with a known answer, its token classes, and a run on
the shipped model whose recomputed G matches the quantization pipeline's own."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlmq_gptqmodel.synth.world import Scene

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "token_importance.py"


@pytest.fixture(scope="module")
def bench():
    import token_importance  # benchmarks/ is on pytest's pythonpath (pyproject.toml)

    return token_importance


def test_structure_of_a_known_g(bench):
    # two samples of 6 tokens: 2 text, 4 image tokens of which 1 (sample 0) and 2 (sample 1) hold an item
    vision = [torch.tensor([[0, 0, 1, 1, 1, 1]], dtype=torch.bool)] * 2
    item = [torch.tensor([[0, 0, 1, 0, 0, 0]], dtype=torch.bool), torch.tensor([[0, 0, 0, 1, 1, 0]], dtype=torch.bool)]
    g = [torch.where(i, 8.0, torch.where(v, 1.0, 2.0)) for v, i in zip(vision, item)]
    stats = bench.structure(g, vision, item)
    assert stats["obj/bg"] == pytest.approx(8.0)
    assert stats["vis/txt"] == pytest.approx(((3 * 8 + 5 * 1) / 8) / 2.0)
    assert stats["top-k"] == 1.0
    assert stats["bg H share"] == pytest.approx(5 / (3 * 64 + 5 + 4 * 4))
    assert stats["eff. tokens"] == pytest.approx((3 * 64 + 5 + 4 * 4) ** 2 / (3 * 64 ** 2 + 5 + 4 * 16))
    uniform = [torch.ones(1, 6)] * 2
    assert bench.structure(uniform, vision, item)["eff. tokens"] == pytest.approx(12)
    # a G that prefers the background ranks no item first
    flipped = [torch.where(i, 0.5, torch.where(v, 1.0, 2.0)) for v, i in zip(vision, item)]
    assert bench.structure(flipped, vision, item)["top-k"] == 0.0


def test_token_classes_refuse_a_grid_that_does_not_match(bench):
    ids = torch.tensor([[5, 9, 9, 9, 5]])
    with pytest.raises(ValueError, match="3 image tokens but 64 tiles"):
        bench.token_classes({"input_ids": ids}, Scene((), None), image_token_id=9, image_size=224)


def test_recomputed_g_matches_the_pipeline_on_the_shipped_model(tmp_path):
    out = tmp_path / "token_importance.md"
    done = subprocess.run([sys.executable, str(SCRIPT), "--calib", "4", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    gap = float(re.search(r"by at most ([0-9.]+)% \(relative\)", text).group(1))
    assert gap < 2.0  # same tokens, same streams: the statistics describe the G that quantization used
    rows = [line for line in text.splitlines() if re.match(r"\| [1-3] \| ", line)]
    assert len(rows) == 3 * 5  # layers 1-3 x (q, k, v, o, attention)
    assert "reproduce: `python benchmarks/token_importance.py --calib 4" in text
