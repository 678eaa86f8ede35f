"""benchmarks/quality.py end to end on a tiny model: every method and an ablation run, tables and chart written,
and the dequantized scoring agrees with scoring through GPTQModel's own kernel."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"


def _run(model_dir, results, *extra):
    cmd = [sys.executable, str(SCRIPT), "--model", str(model_dir), "--settings", "w3g32", "--seeds", "0",
           "--calib", "4", "--eval", "3", "--results", str(results), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((results / "quality.json").read_text())["runs"]


def test_quality_benchmark_runs_every_method_and_writes_its_report(tiny_vlm, tmp_path):
    model_dir = tiny_vlm("qwen2_vl")
    runs = _run(model_dir, tmp_path / "deq", "--ablation-settings", "w3g32", "--seeds", "0,1", "--ablation-seeds", "1")
    labels = ["GPTQ", "GPTAQ", "VLMQ(gptq)", "VLMQ(gptaq)"]
    assert {"FP", "w3g32|RTN", *(f"w3g32|{m}|s{seed}" for m in labels for seed in (0, 1))} <= set(runs)
    assert runs["FP"]["kl"] is None or runs["FP"]["kl"] == 0
    assert all(runs[f"w3g32|{m}|s0"]["kl"] > 0 for m in labels)  # 3-bit weights do change the answers' logits
    ablation_runs = [k for k in runs if k.startswith("w3g32|abl|")]
    assert len(ablation_runs) == 16 and all(k.endswith("|s1") for k in ablation_runs)  # only --ablation-seeds
    report = (tmp_path / "deq" / "quality.md").read_text()
    assert "reproduce: `python benchmarks/quality.py --model" in report and "| W3 g32 | VLMQ(gptaq) |" in report
    assert "## Ablations (VLMQ, precursor gptaq, seeds [1])" in report
    assert (tmp_path / "deq" / "quality.png").stat().st_size > 0

    served = _run(model_dir, tmp_path / "served", "--no-ablations", "--serve", "gptqmodel")
    for m in labels:  # the same checkpoints (deterministic quantization), bf16 kernel vs fp32 weights
        a, b = runs[f"w3g32|{m}|s0"]["kl"], served[f"w3g32|{m}|s0"]["kl"]
        assert abs(a - b) <= 0.5 * max(a, b) + 1e-4, (m, a, b)
