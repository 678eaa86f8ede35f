"""tools/text_lm_probe.py end to end on a tiny model and a few files: trains, resumes, writes the table."""
import json

import pytest

import text_lm_probe  # tools/ is on pytest's pythonpath (pyproject.toml)

TINY = ["--layers", "1", "--hidden", "32", "--heads", "2", "--kv-heads", "1", "--vocab", "300", "--seq", "32",
        "--batch-size", "2", "--steps", "3", "--calib", "4", "--eval-windows", "4", "--max-files", "8",
        "--threads", "1", "--group-size", "16"]


@pytest.mark.slow
def test_probe_trains_resumes_and_reports_every_setting(tmp_path):
    out, report = tmp_path / "run", tmp_path / "report.md"
    argv = TINY + ["--out", str(out), "--report", str(report), "--settings", "rtn2,gptq2"]
    assert text_lm_probe.main(argv) == 0
    saved = json.loads(report.with_suffix(".json").read_text())
    assert saved["trained"]["step"] == 3 and set(saved["results"]) == {"FP", "rtn2", "gptq2"}
    assert all(row["perplexity"] > 1 for row in saved["results"].values())
    assert "error_over_rtn4" in saved["results"]["gptq2"] and "error_over_rtn4" not in saved["results"]["rtn2"]
    table = report.read_text()
    assert "| FP |" in table and "| gptq2 |" in table and "+0.0 %" in table
    assert text_lm_probe.main(argv) == 0  # already trained: resumes at step 3 and trains no more
    assert json.loads(report.with_suffix(".json").read_text())["trained"]["step"] == 3
    assert " ".join(argv) in table  # the command that made it
    with pytest.raises(SystemExit, match="trained with other sizes"):  # another model in the same folder
        text_lm_probe.main(argv[:argv.index("--layers")] + ["--layers", "2"] + argv[argv.index("--layers") + 2:])
    with pytest.raises(SystemExit, match="corpus made with"):  # another corpus in the same folder
        text_lm_probe.main(argv[:argv.index("--vocab")] + ["--vocab", "320"] + argv[argv.index("--vocab") + 2:])
    with pytest.raises(SystemExit):
        text_lm_probe.parse_args(["--settings", "gptq5"])
    with pytest.raises(SystemExit):
        text_lm_probe.parse_args(["--hidden", "96"])  # 128 does not divide it
