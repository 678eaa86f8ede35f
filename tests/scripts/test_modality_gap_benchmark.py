"""benchmarks/modality_gap.py: its separation statistic on clouds with a known answer, and a run on the
shipped model that writes its table and PNG."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "modality_gap.py"


@pytest.fixture(scope="module")
def bench():
    import modality_gap  # benchmarks/ is on pytest's pythonpath (pyproject.toml)

    return modality_gap


def test_separation_of_known_clouds(bench):
    gen = torch.Generator().manual_seed(0)
    vision = torch.arange(4000) < 3000
    # unit-variance clouds in 8 dims (spread sqrt(8)), means 10 apart along one axis
    hidden = torch.randn(4000, 8, generator=gen)
    hidden[vision, 0] += 10.0
    stats = bench.modality_statistics(hidden, vision)
    assert stats["separation"] == pytest.approx(10 / 8 ** 0.5, rel=0.05)
    assert stats["vision_tokens"] == 3000 and stats["text_tokens"] == 1000
    assert stats["vision_norm"] > stats["text_norm"]
    same = bench.modality_statistics(torch.randn(4000, 8, generator=gen), vision)
    assert same["separation"] < 0.1


def test_the_shipped_model_shows_a_modality_gap(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--samples", "4", "--results", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = (tmp_path / "synthvlm.md").read_text()
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| 0 (embeddings)")]
    vision_norm, text_norm, separation = (float(x) for x in rows[0][2:5])
    assert vision_norm > 10 * text_norm and separation > 1  # vision tokens enter far from the text tokens
    assert (tmp_path / "synthvlm.png").stat().st_size > 0
