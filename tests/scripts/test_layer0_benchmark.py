"""benchmarks/layer0.py on the shipped model: both layer-0 policies run, "uniform" leaves layer 0's G flat and
"rtn_probe" does not, and the results file says how to reproduce it."""
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "layer0.py"


def test_layer0_policies_on_the_shipped_model(tmp_path):
    out = tmp_path / "layer0.md"
    done = subprocess.run([sys.executable, str(SCRIPT), "--bits", "3", "--calib", "4", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| W3 \| (uniform|rtn_probe) \| (.*) \|$", text, re.M)}
    assert set(rows) == {"uniform", "rtn_probe"}
    cvs = {policy: [float(cv) for cv in re.findall(r"cv ([0-9.]+)", row)] for policy, row in rows.items()}
    assert len(cvs["uniform"]) == 4 and set(cvs["uniform"]) == {0.0}  # G = I where X_hat == X
    assert max(cvs["rtn_probe"]) > 0.1  # the probe's gradient is not zero there
    for row in rows.values():
        errors = [float(e) for e in re.findall(r"\d\.\d{3}e[+-]\d\d", row)]
        assert len(errors) == 4 and all(0 < e < 1 for e in errors)
    assert "reproduce: `python benchmarks/layer0.py --bits 3 --calib 4" in text
