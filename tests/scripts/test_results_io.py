"""benchmarks/results_io.py: two benchmark processes that share one results file keep each other's runs."""
import json
import subprocess
import sys

# one "grid": stores its runs one by one, each time with only the runs it made itself (as Bench.record does)
WRITER = """
import sys
sys.path.insert(0, sys.argv[1])
from results_io import store_runs
store, name = sys.argv[2], sys.argv[3]
runs = {}
for i in range(40):
    runs[f"{name}|{i}"] = {"accuracy": i}
    runs = store_runs(store, {"model": "m"}, runs)
"""


def test_grids_writing_one_store_at_once_lose_no_run(tmp_path, benchmarks_dir):
    store = tmp_path / "quality.json"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(benchmarks_dir), str(store), name])
               for name in ("a", "b", "c")]
    assert all(w.wait(timeout=120) == 0 for w in writers)
    runs = json.loads(store.read_text())["runs"]
    assert sorted(runs) == sorted(f"{n}|{i}" for n in "abc" for i in range(40))
    assert not list(tmp_path.glob("*.partial"))  # every staged write was renamed into place


def test_replace_drops_the_stored_runs_and_another_identity_is_not_adopted(tmp_path, benchmark_module):
    store_runs = benchmark_module("results_io").store_runs
    store = tmp_path / "quality.json"
    store_runs(store, {"model": "m"}, {"old": 1})
    assert store_runs(store, {"model": "m"}, {"new": 2}) == {"old": 1, "new": 2}
    assert store_runs(store, {"model": "m"}, {"new": 3}, replace=True) == {"new": 3}
    assert store_runs(store, {"model": "other"}, {"x": 4}) == {"x": 4}  # runs scored otherwise are not mixed in
    assert json.loads(store.read_text()) == {"identity": {"model": "other"}, "runs": {"x": 4}}
