"""benchmarks/quality.py end to end on a tiny model: every part runs, tables and charts are written, results
are reused only for the same scoring set-up, and the dequantized scoring agrees with GPTQModel's own kernel."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quality.py"
LABELS = ["GPTQ", "GPTAQ", "VLMQ(gptq)", "VLMQ(gptaq)"]


def _run(model_dir, results, *extra, ok=True):
    cmd = [sys.executable, str(SCRIPT), "--model", str(model_dir), "--settings", "w3g32", "--seeds", "0",
           "--calib", "4", "--eval", "3", "--results", str(results), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if not ok:
        return done
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((results / "quality.json").read_text())["runs"]


def _ablation_labels(benchmark_module) -> list:
    from vlmq_gptqmodel import VLMQConfig
    return list(benchmark_module("quality").ablations(VLMQConfig()))


def test_quality_benchmark_runs_every_part_and_writes_its_report(tiny_vlm, tmp_path, benchmark_module):
    model_dir = tiny_vlm("qwen2_vl")
    runs = _run(model_dir, tmp_path / "deq", "--seeds", "0,1", "--attention-settings", "w3g32", "--attention-seeds", "1",
                "--sweep-sizes", "2,4", "--sweep-settings", "w3g32", "--ablation-settings", "w3g32",
                "--ablation-seeds", "1", "--study-settings", "w3g32", "--study-seeds", "1",
                "--engine-settings", "w3g32", "--engine-seeds", "0")
    assert {"FP", "rtn|w3g32", "rtn-attn|w3g32", *(f"main|c4|w3g32|{m}|s{s}" for m in LABELS for s in (0, 1)),
            *(f"attn|c4|w3g32|{m}|s1" for m in LABELS),
            *(f"sweep|c{c}|w3g32|{m}|s0" for m in LABELS for c in (2, 4))} <= set(runs)
    fp = runs["FP"]
    assert len(fp["lengths"]) == len(fp["correct"]) == len(fp["kinds"]) > 0
    for m in LABELS:
        run = runs[f"main|c4|w3g32|{m}|s0"]
        assert run["kl"] > 0  # 3-bit weights do change the answers' logits
        # the per-question KLs are the pieces of the mean KL (sums over each question's answer tokens)
        assert abs(sum(run["question_kl"]) / sum(fp["lengths"]) - run["kl"]) <= 1e-3 * run["kl"] + 1e-7
        assert len(run["correct"]) == len(fp["correct"])
    errors = runs["main|c4|w3g32|GPTQ|s0"]["layer_errors"]  # per decoder layer, on held-out tokens
    assert set(errors) == {"all", "vision", "text"} and all(len(e) == 2 and min(e) > 0 for e in errors.values())
    for a, v, t in zip(errors["all"], errors["vision"], errors["text"]):  # all = mediant of its two parts
        assert min(v, t) * (1 - 1e-6) <= a <= max(v, t) * (1 + 1e-6)
    vlmq = runs["main|c4|w3g32|VLMQ(gptaq)|s0"]["g"]
    assert set(vlmq["effective_tokens"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert all(0 < e <= vlmq["tokens"] for e in vlmq["effective_tokens"].values())
    # attention-only leaves the MLP alone, so it moves the answers less than quantizing everything
    assert runs["rtn-attn|w3g32"]["kl"] < runs["rtn|w3g32"]["kl"]
    assert not any(k.startswith("attn|") and k.endswith("|s0") for k in runs)  # only --attention-seeds
    ablation_runs = [k for k in runs if k.startswith("abl|")]
    assert sorted(ablation_runs) == sorted(f"abl|c4|w3g32|{v}|s1" for v in _ablation_labels(benchmark_module))  # each once, --ablation-seeds only
    # the study is attention-only by default and reuses the attention-only part's own alpha-0.25 runs
    assert len([k for k in runs if k.startswith("study-attn|")]) == 9
    assert runs["study-attn|c4|w3g32|GPTAQ alpha=0.25|s1"] == runs["attn|c4|w3g32|GPTAQ|s1"]
    assert {f"main|c4|w3g32|{m} (vllm)|s0" for m in ("GPTQ", "VLMQ(gptaq)")} <= set(runs)  # the engine part
    report = (tmp_path / "deq" / "quality.md").read_text()
    assert "reproduce: `python benchmarks/quality.py --model" in report
    assert "### Decoder-layer output error" in report
    for heading in ("## Main", "## Attention only", "## Calibration-size sweep", "## Ablations",
                    "## GPTAQ study, attention-only", "## The vLLM/SGLang-ready export"):
        assert heading in report
    assert "| W3 g32 | GPTQ (vllm) − GPTQ |" in report
    assert "| W3 g32 | VLMQ(gptaq) − GPTAQ |" in report and "/2 |" in report  # paired over both seeds
    # each ablation (part abl, seed 1) is paired with the main part's precursor and VLMQ of the same seed
    assert "| W3 g32 | norm=l2 − GPTAQ |" in report and "| W3 g32 | norm=l2 − VLMQ(gptaq) |" in report
    assert (tmp_path / "deq" / "quality.png").stat().st_size > 0
    assert (tmp_path / "deq" / "sweep.png").stat().st_size > 0

    # other scoring (here: another number of images) is refused instead of mixed into the same table
    refused = _run(model_dir, tmp_path / "deq", "--parts", "main", "--eval", "2", ok=False)
    assert refused.returncode != 0 and "--fresh" in refused.stderr

    # a part run in another process, with its own results folder, merges into this one
    other = _run(model_dir, tmp_path / "other", "--parts", "main", "--seeds", "2")
    merged = _run(model_dir, tmp_path / "deq", "--parts", "main", "--seeds", "0,1,2", "--merge", str(tmp_path / "other"))
    assert merged["main|c4|w3g32|GPTQ|s2"] == other["main|c4|w3g32|GPTQ|s2"]
    assert merged["main|c4|w3g32|GPTQ|s0"] == runs["main|c4|w3g32|GPTQ|s0"]
    assert "/3 |" in (tmp_path / "deq" / "quality.md").read_text()  # paired over the three seeds

    served = _run(model_dir, tmp_path / "served", "--parts", "main", "--serve", "gptqmodel")
    for m in LABELS:  # the same checkpoints (deterministic quantization), bf16 kernel vs fp32 weights
        a, b = runs[f"main|c4|w3g32|{m}|s0"]["kl"], served[f"main|c4|w3g32|{m}|s0"]["kl"]
        assert abs(a - b) <= 0.5 * max(a, b) + 1e-4, (m, a, b)


def test_the_study_runs_only_the_variants_asked_for(tiny_vlm, tmp_path):
    model_dir = tiny_vlm("qwen2_vl")
    runs = _run(model_dir, tmp_path / "q", "--parts", "gptaq-study", "--study-scope", "all", "--study-settings",
                "w3g32", "--study-seeds", "0", "--study-variants", "GPTAQ alpha=0.25,VLMQ(gptaq) residual=uniform")
    assert sorted(k for k in runs if k != "FP") == ["study|c4|w3g32|GPTAQ alpha=0.25|s0",
                                                    "study|c4|w3g32|VLMQ(gptaq) residual=uniform|s0"]
    report = (tmp_path / "q" / "quality.md").read_text()
    assert "| W3 g32 | VLMQ(gptaq) residual=uniform − GPTAQ alpha=0.25 |" in report
    assert "--study-variants 'GPTAQ alpha=0.25,VLMQ(gptaq) residual=uniform'" in report  # a shell can rerun it
    refused = _run(model_dir, tmp_path / "q", "--parts", "gptaq-study", "--study-variants", "GPTAQ alpha=0.3", ok=False)
    assert refused.returncode != 0 and "--study-variants" in refused.stderr


def test_the_ablations_run_only_the_variants_asked_for(tiny_vlm, tmp_path):
    model_dir = tiny_vlm("qwen2_vl")
    variants = "targets=+MLP (gate/up/down weighted);targets=q,k,v (o unweighted)"  # labels hold commas
    runs = _run(model_dir, tmp_path / "q", "--parts", "ablations", "--ablation-settings", "w3g32", "--ablation-seeds",
                "0", "--ablation-variants", variants)
    assert sorted(k for k in runs if k != "FP") == ["abl|c4|w3g32|targets=+MLP (gate/up/down weighted)|s0",
                                                    "abl|c4|w3g32|targets=q,k,v (o unweighted)|s0"]
    mlp = runs["abl|c4|w3g32|targets=+MLP (gate/up/down weighted)|s0"]["g"]["effective_tokens"]
    assert set(mlp) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert f"--ablation-variants '{variants}'" in (tmp_path / "q" / "quality.md").read_text()
    refused = _run(model_dir, tmp_path / "q", "--parts", "ablations", "--ablation-variants", "norm=l3", ok=False)
    assert refused.returncode != 0 and "--ablation-variants" in refused.stderr


def test_report_only_renders_the_stored_runs_and_quantizes_nothing(tiny_vlm, tmp_path, benchmark_module):
    model_dir = tiny_vlm("qwen2_vl")
    refused = _run(model_dir, tmp_path / "q", "--report-only", ok=False)  # nothing stored yet
    assert refused.returncode != 0 and "run without --report-only first" in refused.stderr
    _run(model_dir, tmp_path / "q", "--parts", "ablations", "--ablation-settings", "w3g32", "--ablation-seeds", "0",
         "--ablation-variants", "norm=l2")
    stored = (tmp_path / "q" / "quality.json").read_bytes()
    # a grid stopped part-way: every ablation at two seeds asked for, one run stored
    done = _run(model_dir, tmp_path / "q", "--parts", "ablations", "--ablation-settings", "w3g32", "--ablation-seeds",
                "0,1", "--report-only", ok=True)
    assert (tmp_path / "q" / "quality.json").read_bytes() == stored  # nothing quantized, nothing written there
    report = (tmp_path / "q" / "quality.md").read_text()
    assert "| W3 g32 | norm=l2 |" in report
    missing = 2 * len(_ablation_labels(benchmark_module)) - 1  # every ablation x 2 seeds, less norm=l2 s0
    assert f"{missing} runs of the command below are not stored yet" in report
    assert "--ablation-seeds 0,1" in report and "--report-only" not in report  # the line that runs the rest
    assert list(done) == ["FP", "abl|c4|w3g32|norm=l2|s0"]


def test_a_world_the_model_cannot_read_is_refused_before_anything_is_written(tiny_vlm, tmp_path):
    refused = _run(tiny_vlm("qwen2_vl"), tmp_path / "q", "--parts", "main", "--world", "deep-meaning", ok=False)
    assert refused.returncode != 0 and "--world: the deep-meaning world's words or image size" in refused.stderr
    assert not (tmp_path / "q" / "quality.json").exists()


def test_the_random_grid_table_ranks_gradient_g_over_the_seeds_all_settings_ran(benchmark_module):
    from vlmq_gptqmodel import VLMQConfig
    quality = benchmark_module("quality")
    random_grid_rows = quality.random_grid_rows
    variants = quality.ablations(VLMQConfig(precursor="gptaq"))
    grid = ["random LI=0.25 DW=0.01", "random LI=0.5 DW=0.01", "random LI=0.75 DW=0.01"]
    asked = {label: variants[label] for label in ["norm=l2", *grid]}
    runs = {}
    for seed in (0, 1):  # VLMQ 0.70 / KL 0.100; the random ones 0.60, 0.70, 0.80 / KL 0.090, 0.100, 0.110
        runs[f"main|c8|w2g128|VLMQ(gptaq)|s{seed}"] = {"accuracy": 0.70, "kl": 0.100}
        for i, label in enumerate(grid):
            runs[f"abl|c8|w2g128|{label}|s{seed}"] = {"accuracy": 0.60 + 0.1 * i, "kl": 0.090 + 0.01 * i}
    runs["abl|c8|w2g128|random LI=0.25 DW=0.01|s2"] = {"accuracy": 0.99, "kl": 0.0}  # seed 2: the others missing
    runs["main|c8|w2g128|VLMQ(gptaq)|s2"] = {"accuracy": 0.0, "kl": 1.0}
    table = "".join(random_grid_rows(runs, 8, [(2, 128), (3, 128)], [0, 1, 2], "gptaq", asked))
    # ties count for VLMQ; seed 2 and the W3 setting (nothing ran) are left out; norm=l2 is not a random setting
    assert "| W2 g128 | 0,1 | 0.700 | 2 of 4 | 0.600 / 0.700 / 0.800 | 100.000 | 2 of 4 | 90.000 / 100.000 / 110.000 |" in table
    assert "W3" not in table and "the 3 random G settings" in table
    assert random_grid_rows(runs, 8, [(3, 128)], [0, 1, 2], "gptaq", asked) == []


def test_every_ablation_changes_the_base_config_and_no_two_ablations_are_the_same_run(benchmark_module):
    from vlmq_gptqmodel import VLMQConfig
    base = VLMQConfig(precursor="gptaq")
    configs = [cfg.to_meta() for cfg in benchmark_module("quality").ablations(base).values()]
    assert base.to_meta() not in configs  # a variant equal to VLMQ itself would be a rerun under another name
    assert len({repr(sorted(c.items())) for c in configs}) == len(configs)
