"""benchmarks/linear_latency.py: its computed ceilings, its comparators, and that without a GPU it times nothing."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "linear_latency.py"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="module")
def bench():
    import linear_latency  # benchmarks/ is on pytest's pythonpath (pyproject.toml)

    return linear_latency


def test_memory_bound_ceilings_match_the_issue(bench):
    """≈0.394 B (W3g128) and ≈0.27 B (W2g128) per weight against 2 B: at most ~5.1x / ~7.5x at M=1."""
    assert bench.gptq_bytes_per_weight(3, 128) == pytest.approx(0.394, abs=1e-3)
    assert bench.gptq_bytes_per_weight(2, 128) == pytest.approx(0.268, abs=1e-3)
    assert bench.ceiling_speedup(3, 128) == pytest.approx(5.08, abs=0.01)
    assert bench.ceiling_speedup(2, 128) == pytest.approx(7.47, abs=0.01)


def test_every_comparator_computes_the_layer_or_says_why_not(bench):
    """The methods timed side by side hold the same quantized weight (Marlin: its own symmetric one)."""
    k, n = 256, 64
    fp16_weight = torch.zeros((n, k), dtype=torch.float16, device=DEVICE)
    found = bench.candidates(2, k, n, DEVICE, fp16_weight, include_marlin=True)
    labels = [c.method for c in found]
    assert labels[:4] == ["FP16 F.linear", "VLMQ W2 (dispatch)", "VLMQ W2 gemm_tiled", "VLMQ W2 dequant_matmul"]
    assert {"GPTQModel TorchLinear W2", "GPTQModel TritonV2 W2", "GPTQModel Marlin W4 (sym, reference)"} <= set(labels)
    x = torch.randn((20, k), generator=torch.Generator().manual_seed(0)).half().to(DEVICE)
    checked = 0
    for candidate in found:
        if candidate.run is None:
            assert candidate.unavailable.startswith("unavailable: "), candidate.method
            continue
        if candidate.reference_weight is None:
            continue
        try:
            out = candidate.run(x).float()
        except Exception as error:  # a CUDA-only GPTQModel kernel that built on CPU but cannot run there
            assert "GPTQModel" in candidate.method and DEVICE.type == "cpu", (candidate.method, error)
            continue
        expected = x.float() @ candidate.reference_weight.float().t()
        assert (out - expected).abs().max() <= 1e-2 * expected.abs().max(), candidate.method
        checked += 1
    assert checked >= 4  # three VLMQ paths and TorchLinear at least


def test_report_pipeline_with_a_stand_in_timer(bench, monkeypatch, tmp_path):
    """The GPU path end to end with CUDA timing replaced by a constant (these numbers are test data,
    not measurements): rows, notes, error checks, ceilings, the crossover summary and the files."""
    monkeypatch.setattr(bench, "time_call", lambda run, *args: (run(), (10.0, 9.0))[1])
    args = SimpleNamespace(warmup=0, reps=1, hold_cycles=0, bits=[3], out=tmp_path / "results", shapes=["o", "down"],
                           decode_sweep=True)
    rows = bench.benchmark_shape("o", 256, 64, 3, [1, 20], DEVICE, None, 1e12, args, include_marlin=False)
    by = {(r.method, r.m): r for r in rows}
    assert by[("FP16 F.linear", 1)].speedup_vs_fp16 == 1.0
    assert by[("VLMQ W3 (dispatch)", 1)].pct_of_ceiling == pytest.approx(
        100 * bench.gptq_bytes_per_weight(3, 128) * 256 * 64 / 1e12 * 1e6 / 10.0)
    assert by[("VLMQ W3 gemm_tiled", 1)].note == "decode sizes use gemv_splitk"
    assert by[("VLMQ W3 gemm_tiled", 20)].max_rel_error < 1e-2
    assert by[("GPTQModel TorchLinear W3", 20)].max_rel_error < 1e-2
    summary = bench.crossover_summary(rows)
    assert summary == ["o W3: fused GEMM faster than dequant+matmul at M in [20]"]  # equal times count as a win
    # the decode sweep: every configuration computes the layer at M <= 16 and is skipped above
    sweep = [r for r in rows if " gemv " in r.method]
    assert {r.method for r in sweep} >= {"VLMQ W3 gemv bn64 sk1 st1", "VLMQ W3 gemv bn128 sk1 st3"}
    assert all(r.max_rel_error < 1e-2 for r in sweep if r.m == 1)
    assert all(r.note == "the GEMV takes M <= 16" for r in sweep if r.m == 20)
    assert bench.decode_sweep_summary(rows)[0].startswith("o W3 M=1: fastest bn64 sk1 st1 10.0 µs, dispatch 10.0 µs")
    table = bench.format_rows(rows)
    assert "VLMQ W3 dequant_matmul" in table and "µs" in table
    info = {"device": "stand-in", "date": "2000-01-01T00:00:00"}
    bench.write_results(info, rows, summary, args, complete=False)  # after the first of two shapes
    written = sorted((tmp_path / "results").iterdir())
    assert [p.suffix for p in written] == [".json", ".md"]
    assert "(partial: shapes o of o, down)" in written[1].read_text()
    bench.write_results(info, rows, summary, args, complete=True)
    assert "(complete)" in written[1].read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU behaviour")
def test_without_cuda_it_times_nothing_and_writes_nothing(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "results")], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "No CUDA device: nothing is timed" in done.stdout
    assert done.stdout.count("PASS") == 6 and "FAIL" not in done.stdout
    assert "µs" not in done.stdout and " us" not in done.stdout
    assert not (tmp_path / "results").exists()
