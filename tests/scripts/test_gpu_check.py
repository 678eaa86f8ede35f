"""benchmarks/gpu_check.sh --dry-run on CPU: every GPU step's imports and command line are checked, so the
script a lent GPU gets is known to start; and the checker itself refuses bad command lines."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "benchmarks" / "check_command.py"


def test_dry_run_checks_every_step(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}  # the script's python is this test's
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=1200, env=env)
    steps = (tmp_path / "out" / "steps.md").read_text()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("env", "install", "kernels", "kernels-twin", "static", "latency", "cost"):
        assert f"| {name} | ok |" in steps
    assert "tests collected" in (tmp_path / "out" / "kernel_tests.txt").read_text()
    twin_tests = (tmp_path / "out" / "kernel_tests_twin.txt").read_text()
    assert "test_inline_ptx_matches_its_twin_bit_for_bit" in twin_tests and "test_dispatch_matches_reference" in twin_tests


def mode_dry_run(tmp_path, mode: str):
    """gpu_check.sh MODE --dry-run: its output and the names of the steps it ran."""
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), mode, "--dry-run", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = (tmp_path / "steps.md").read_text()
    return done.stdout, steps, [line.split("|")[1].strip() for line in steps.splitlines()[4:]]


def test_train_dry_run_checks_the_training_steps_only(tmp_path):
    """--train (issue 15's yardstick trained on a lent GPU): env, install, train and probe, nothing else."""
    stdout, steps, names = mode_dry_run(tmp_path, "--train")
    assert names == ["env", "install", "train", "probe"]
    assert "| train | ok |" in steps and "--device cuda" in stdout
    assert "ok: tools/train_synthvlm.py --preset synthvlm-recall" in stdout  # the yardstick's one-command chain


def test_text_lm_dry_run_checks_the_text_lm_probe_only(tmp_path):
    """--text-lm (issue 15's text-only LM reference, trained longer on a lent GPU): env, install, text-lm."""
    stdout, steps, names = mode_dry_run(tmp_path, "--text-lm")
    assert names == ["env", "install", "text-lm"]
    assert "| text-lm | ok |" in steps and "text_lm_probe.py" in stdout and "--device cuda" in stdout


def test_only_steps_runs_the_named_steps_and_records_the_rest_as_skipped(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "ONLY_STEPS": "cost,static"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = {line.split("|")[1].strip(): line.split("|")[2].strip()
              for line in (tmp_path / "steps.md").read_text().splitlines()[4:]}
    assert status == {"env": "ok", "install": "ok", "latency": "skipped (ONLY_STEPS)", "kernels": "skipped (ONLY_STEPS)",
                      "cost": "ok", "kernels-twin": "skipped (ONLY_STEPS)", "static": "ok"}


def _check(*argv):
    return subprocess.run([sys.executable, str(CHECK), *argv], capture_output=True, text=True, cwd=ROOT)


def test_checker_accepts_a_good_command_line_without_running_it():
    done = _check("benchmarks/quant_cost.py", "--preset", "7b", "--device", "cuda")
    assert done.returncode == 0 and done.stdout.startswith("ok:"), done.stderr


def test_checker_refuses_a_bad_argument_with_the_scripts_own_message():
    done = _check("benchmarks/quant_cost.py", "--preset", "70b")
    assert done.returncode == 2 and "invalid choice: '70b'" in done.stderr


def test_checker_fails_a_script_that_never_parses(tmp_path):
    script = tmp_path / "no_parser.py"
    script.write_text("print('ran')\n")
    done = _check(str(script))
    assert done.returncode == 1 and "without parsing" in done.stderr


def test_train_args_reach_the_train_step_and_a_bad_one_fails_it(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "TRAIN_ARGS": "--text-steps 0 --final-steps 850"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--train", "--dry-run", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0 and "--text-steps 0 --final-steps 850" in done.stdout, done.stderr[-3000:]
    env["TRAIN_ARGS"] = "--init-stage nine"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--train", "--dry-run", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode != 0 and "| train | failed" in (tmp_path / "steps.md").read_text()
