"""Quantization quality on the project's own VLMs at the paper's calibration regime (512 captioned images per
calibration seed, act-order, damp 0.01): FP, RTN, GPTQ, GPTAQ, VLMQ(gptq), VLMQ(gptaq), with paired statistics.

Parts (--parts; each resumes from quality.json, so a long run can be done in pieces):
- main:            W4/W3/W2 at g128 and W3/W2 at g32, every method, over --seeds (default 5 seeds);
- attention-only:  the same methods quantizing only q/k/v/o (MLP kept FP), where VLMQ's token weighting acts;
- sweep:           64-1024 calibration samples at W3/W2 g128, with Kish's effective sample size of G;
- ablations:       the paper's ablations as VLMQConfig switches (Tables 5-8, MBQ-style modality weights);
- gptaq-study:     why VLMQ(gptaq) may not beat GPTAQ: GPTAQ's alpha, the weighting of its asymmetric term,
                   the path G is taken at and a floor on G;
- engine:          what the vLLM/SGLang-ready export (act-order off, true zero points) costs against act-order.

Every quantized model is saved as a GPTQ checkpoint and scored on --split: the held-out evaluation split
(never used for training, calibration or any choice), or `select`, a split of its own on which settings may
be chosen. Exact match and the KL of the answer-token distributions against FP are kept per question, so
every VLMQ row gets its paired difference to its own precursor with a 95 % bootstrap interval over
calibration seeds and questions (vlmq_gptqmodel.synth.stats). By default a checkpoint's weights are dequantized
into the FP model and scored in fp32 (`--serve dequantized`); `--serve gptqmodel` scores through GPTQModel's
TorchLinear in bf16. Calibration samples for a seed are the same for every method.

    python benchmarks/quality.py                              # everything (hours on 2 cores; resumable)
    python benchmarks/quality.py --parts main --settings w2g128 --seeds 0,1
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig

import vlmq_gptqmodel  # noqa: F401  (registers method="vlmq")
from vlmq_gptqmodel.errors import BadInput
from vlmq_gptqmodel.families import family_of
from vlmq_gptqmodel.synth.compare import layer_output_errors_by
from vlmq_gptqmodel.config import ATTENTION_PROJECTIONS, MLP_PROJECTIONS, PROJECTIONS, VLMQConfig
from vlmq_gptqmodel.synth.dequantized import load_dequantized
from vlmq_gptqmodel.synth.evaluation import (
    encode_scored, eval_samples, evaluate, load_for_eval, processor_image_size, questions_of, resolve_model,
    scored_world, world_of, world_of_config,
)
from vlmq_gptqmodel.synth.rtn_baseline import apply_rtn
from vlmq_gptqmodel.engines import DEFAULT_TARGET, ENGINES
from vlmq_gptqmodel.runner import QuantSpec, quantize_to_dir
from vlmq_gptqmodel.synth.stats import lower_share, paired_difference, top_share
from vlmq_gptqmodel.synth.world import WORLDS, calibration_conversations
from results_io import RESULTS as RESULTS_ROOT, reproduce_line, store_runs, write_text

RESULTS = RESULTS_ROOT / "quality"
SERVE_DTYPE = {"dequantized": torch.float32, "gptqmodel": torch.bfloat16}
SERVED = {"dequantized": "each saved checkpoint's weights dequantized and scored in fp32, as is FP",
          "gptqmodel": "each saved checkpoint loaded by GPTQModel (TorchLinear) and scored in bf16, as is FP"}
PARTS = ("main", "attention-only", "sweep", "ablations", "gptaq-study", "engine")
ENGINE_LABEL = "{} (vllm)"  # a main-part method quantized with target="vllm"
# Held-out questions (of the scored split, not calibration tokens) on which each decoder layer's output
# error is measured, over vision and text tokens apart.
LAYER_ERROR_QUESTIONS = 32

MAIN = {  # label -> (runner method, VLMQ config)
    "GPTQ": ("gptq", None),
    "GPTAQ": ("gptaq", None),
    "VLMQ(gptq)": ("vlmq", VLMQConfig(precursor="gptq")),
    "VLMQ(gptaq)": ("vlmq", VLMQConfig(precursor="gptaq")),
}
PAIRS = (("VLMQ(gptq)", "GPTQ"), ("VLMQ(gptaq)", "GPTAQ"))


def ablations(base: VLMQConfig) -> dict:
    """The paper's ablations (Tables 5-8 and the MBQ-style modality baseline) as VLMQConfig switches, and a
    floor on G."""
    out = {  # importance=constant is the precursor itself (bit-identical, see the tests): not rerun
        "importance=attention (FastV-style)": replace(base, importance="attention"),
        "importance=modality (MBQ-style)": replace(base, importance="modality"),
        "granularity=layer (layer-wise MSE)": replace(base, granularity="layer"),
        "norm=l2": replace(base, norm="l2"),
        "targets=q,k,v (o unweighted)": replace(base, targets=("q_proj", "k_proj", "v_proj")),
        "layer0=rtn_probe": replace(base, layer0="rtn_probe"),
        # not in the paper: gradient G rests on a few percent of the tokens (benchmarks/token_importance.py);
        # a floor on g keeps every token in the Hessian
        "min_weight=0.3 (floored G)": replace(base, min_weight=0.3),
        # not in the paper either: the MLP projections token-weighted too, g from the MLP block
        "targets=+MLP (gate/up/down weighted)": replace(base, targets=PROJECTIONS),
        # and the MLPs alone: the attention's G showed no gain over random G here, the MLPs' did at W2
        "targets=MLP only (attention unweighted)": replace(base, targets=MLP_PROJECTIONS),
        # gate/up's g rests on about 5 % of the calibration tokens (Kish): the MLP targets, every token kept in H
        "targets=+MLP, min_weight=0.3 (floored G)": replace(base, targets=PROJECTIONS, min_weight=0.3),
        # not in the paper: g tempered (H weighted by g, not g^2), so the Hessian rests on more tokens
        "power=0.5 (tempered G)": replace(base, power=0.5),
    }
    for ratio in (0.25, 0.5, 0.75):
        for factor in (0.01, 0.05, 0.1):
            out[f"random LI={ratio} DW={factor}"] = replace(base, importance="random", random_ratio=ratio,
                                                            random_factor=factor)
    return out


STUDY_PARTS = {"attention-only": "study-attn", "all": "study"}  # --study-scope -> its runs' part name
# study variants that are the attention-only part's own runs (same config and seeds): reused, not rerun
STUDY_SAME_AS_ATTN = {"GPTAQ alpha=0.25": "GPTAQ", "VLMQ(gptaq) alpha=0.25": "VLMQ(gptaq)"}
# study variants of VLMQ(gptaq) at alpha 0.25, each compared with GPTAQ and with VLMQ(gptaq) as it is
STUDY_VARIANTS = ("VLMQ(gptaq) residual=uniform", "VLMQ(gptaq) gradient_at=fp", "VLMQ(gptaq) min_weight=0.3")


def gptaq_study() -> dict:
    """label -> (method, VLMQ config, GPTAQ alpha): the precursor and VLMQ(gptaq) at other alphas; VLMQ with the
    asymmetric term left unweighted (H weighted only), with G taken at the full-precision path, and with G
    floored at 0.3 (more effective tokens per Hessian)."""
    out = {}
    for alpha in (0.1, 0.25, 0.5):
        out[f"GPTAQ alpha={alpha}"] = ("gptaq", None, alpha)
        out[f"VLMQ(gptaq) alpha={alpha}"] = ("vlmq", VLMQConfig(precursor="gptaq"), alpha)
    out["VLMQ(gptaq) residual=uniform"] = ("vlmq", VLMQConfig(precursor="gptaq", residual="uniform"), 0.25)
    out["VLMQ(gptaq) gradient_at=fp"] = ("vlmq", VLMQConfig(precursor="gptaq", gradient_at="fp"), 0.25)
    out["VLMQ(gptaq) min_weight=0.3"] = ("vlmq", VLMQConfig(precursor="gptaq", min_weight=0.3), 0.25)
    return out


def parse_setting(text: str) -> tuple[int, int]:
    try:
        bits, group = text.lower().removeprefix("w").split("g")
        return int(bits), int(group)
    except ValueError:
        raise SystemExit(f"setting {text!r} is not of the form w<bits>g<group>, e.g. w2g128") from None


def parse_ints(text: str, name: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s]
    except ValueError:
        raise SystemExit(f"--{name} {text!r}: give comma-separated integers, e.g. 0,1,2") from None


def parse_subset(text, sep: str, allowed: tuple, name: str):
    """A `sep`-separated subset of `allowed` (None stays None: all of them)."""
    if text is None:
        return None
    chosen = [v for v in text.split(sep) if v]
    if not chosen or set(chosen) - set(allowed):
        words = {",": "comma", ";": "semicolon"}[sep]
        raise SystemExit(f"--{name}: give a {words}-separated subset of {allowed}")
    return chosen


def key(part: str, calib: int, bits: int, group: int, label: str, seed: int) -> str:
    return f"{part}|c{calib}|w{bits}g{group}|{label}|s{seed}"


class Bench:
    def __init__(self, args):
        self.args = args
        self.model_dir = resolve_model(args.model)
        self.identity = {"model": self.model_dir.name, "eval": args.eval, "split": args.split,
                         "dtype": args.dtype, "serve": args.serve} | ({"world": args.world} if args.world else {})
        self.store = Path(args.results) / "quality.json"
        self.runs = {}
        self.replace_store = args.fresh  # until this process first writes
        self.missing = []  # --report-only: the runs asked for that are not stored
        if args.report_only and not self.store.exists():
            raise SystemExit(f"--report-only: {self.store} does not exist: run without --report-only first")
        if self.store.exists() and not args.fresh:
            stored = json.loads(self.store.read_text())
            if stored.get("identity") != self.identity:
                raise SystemExit(f"{self.store} holds runs made with {stored.get('identity')}, not {self.identity}: "
                                 f"pass --fresh to replace them or --results DIR for a new folder")
            self.runs = stored["runs"]
        for other in args.merge:
            self.merge(Path(other) / "quality.json")
        if args.report_only:  # no model, no scoring, nothing written to quality.json
            try:
                self.world = scored_world(world_of_config(AutoConfig.from_pretrained(self.model_dir)), args.world)
            except BadInput as error:
                raise SystemExit(f"--world: {error}") from None
            return
        self.dtype = SERVE_DTYPE[args.serve]
        self.fp_model, self.processor = load_for_eval(self.model_dir, dtype=self.dtype)
        self.size = processor_image_size(self.processor)
        try:
            self.world = scored_world(world_of(self.fp_model), args.world)
        except BadInput as error:
            raise SystemExit(f"--world: {error}") from None
        self.samples = eval_samples(args.eval, seed=0, image_size=self.size, world=self.world, split=args.split)
        self.fp = evaluate(self.fp_model, self.processor, self.samples)
        self.record("FP", self.fp, kinds=self.fp.kinds, lengths=self.fp.answer_lengths)
        questions = questions_of(self.samples)[:LAYER_ERROR_QUESTIONS]
        self.error_batches = [encode_scored(self.processor, questions[i:i + 8])[0] for i in range(0, len(questions), 8)]

    def merge(self, path: Path) -> None:
        """Take the runs of another results folder made with the same scoring set-up (parts run in parallel
        processes, each with its own --results)."""
        stored = json.loads(path.read_text())
        if stored.get("identity") != self.identity:
            raise SystemExit(f"--merge {path.parent}: its runs were made with {stored.get('identity')}, "
                             f"not {self.identity}")
        self.runs.update({k: v for k, v in stored["runs"].items() if k not in self.runs})

    def record(self, name: str, result, **extra) -> None:
        self.runs[name] = {"accuracy": result.accuracy, "per_kind": result.per_kind, "kl": result.mean_kl,
                           "correct": "".join("1" if c else "0" for c in result.correct),
                           "question_kl": [float(f"{x:.4g}") for x in result.question_kl or []], **extra}
        self.runs = store_runs(self.store, self.identity, self.runs, replace=self.replace_store)
        self.replace_store = False

    def token_sets(self, batch) -> dict:
        """Real (unpadded) tokens of a scoring batch: all, vision, text."""
        real = batch["attention_mask"].bool()
        config = self.fp_model.config
        vision = batch["input_ids"] == family_of(config.model_type).image_token_id(config)
        return {"all": real, "vision": real & vision, "text": real & ~vision}

    def stored_or_skipped(self, name: str) -> bool:
        """True if run `name` is stored, or is not to be run (--report-only: then it is listed as missing)."""
        if name in self.runs:
            return True
        if self.args.report_only:
            self.missing.append(name)
        return self.args.report_only

    def rtn(self, bits: int, group: int, attention_only: bool = False) -> None:
        name = f"rtn{'-attn' if attention_only else ''}|w{bits}g{group}"
        if not self.stored_or_skipped(name):
            model = apply_rtn(self.fp_model, bits, group, attention_only=attention_only)
            self.record(name, evaluate(model, self.processor, self.samples, reference_logits=self.fp), seconds=None)

    def quantized(self, name: str, bits: int, group: int, seed: int, calib: int, method: str, cfg, *,
                  attention_only: bool = False, alpha: float = 0.25, target: str = DEFAULT_TARGET) -> None:
        if self.stored_or_skipped(name):
            return
        conversations = calibration_conversations(calib, seed=seed, image_size=self.size, world=self.world)
        spec = QuantSpec(bits=bits, group_size=group, dtype=self.args.dtype, attention_only=attention_only,
                         gptaq_alpha=alpha, target=target, desc_act=target not in ENGINES)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            model = quantize_to_dir(self.model_dir, conversations, Path(tmp), spec, method, cfg)
            seconds = time.perf_counter() - start
            report = getattr(model, "vlmq_report", None)
            del model
            if self.args.serve == "dequantized":
                q_model = load_dequantized(tmp, self.fp_model)
            else:
                q_model, _ = load_for_eval(tmp, dtype=self.dtype)
            result = evaluate(q_model, self.processor, self.samples, reference_logits=self.fp)
            errors = layer_output_errors_by(self.fp_model, q_model, self.error_batches, self.token_sets)
        self.record(name, result, seconds=seconds, g=summarize_g(report), layer_errors=errors)
        print(f"{name}: acc {result.accuracy:.3f} kl {result.mean_kl:.5f} ({seconds:.0f} s)", file=sys.stderr,
              flush=True)


def summarize_g(report) -> dict | None:
    """Over layers >= 1 (layer 0 is uniform): the mean vision/text ratio of G, and per projection the mean
    Kish effective sample size of its Hessian weights (and the token count it is out of)."""
    if not report:
        return None
    layers = [r for r in report if r["layer"] > 0 and r["policy"] is None]
    ratios = [s["vision_mean"] / s["text_mean"] for r in layers for s in r["projections"].values()
              if s["vision_mean"] is not None and s["text_mean"]]
    ess = {p: statistics.mean(r["projections"][p]["effective_tokens"] for r in layers)
           for p in PROJECTIONS if layers and p in layers[0]["projections"]}
    return {"vision_over_text": statistics.mean(ratios) if ratios else None,
            "effective_tokens": ess, "tokens": layers[0]["projections"][next(iter(ess))]["tokens"] if ess else None,
            "fallbacks": sum(1 for r in report if r["policy"] and "fallback" in r["policy"])}


# ---- tables ---------------------------------------------------------------------------------------------------

def seed_runs(runs: dict, part: str, calib: int, bits: int, group: int, label: str, seeds) -> list[dict]:
    return [runs[k] for s in seeds if (k := key(part, calib, bits, group, label, s)) in runs]


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def seed_row(runs, part, calib, bits, group, label, seeds) -> str | None:
    """One table row: exact match and KL (mean ± sd over the seeds run so far), or None if none ran."""
    done = seed_runs(runs, part, calib, bits, group, label, seeds)
    if not done:
        return None
    acc, acc_sd = mean_sd([r["accuracy"] for r in done])
    kl, kl_sd = mean_sd([1e3 * r["kl"] for r in done])
    top = statistics.mean(top_share(r["question_kl"]) for r in done)
    return (f"| W{bits} g{group} | {label} | {acc:.3f} ± {acc_sd:.3f} | {kl:.3f} ± {kl_sd:.3f} | {top:.0%} | "
            f"{len(done)} |")


TABLE_HEAD = ("| setting | {} | exact match (mean ± sd) | answer KL ×10⁻³ (mean ± sd) | KL share of the 10 worst "
              "questions | seeds |\n|---|---|---|---|---|---|")


def method_rows(runs, part, calib, settings, seeds, labels, rtn_prefix: str | None) -> str:
    lines = [TABLE_HEAD.format("method")]
    for bits, group in settings:
        rows = list(filter(None, (seed_row(runs, part, calib, bits, group, label, seeds) for label in labels)))
        if not rows:  # a setting of the defaults that this results folder has not run
            continue
        lines.append(f"| W{bits} g{group} | FP | {runs['FP']['accuracy']:.3f} | 0 | - | - |")
        rtn = runs.get(f"{rtn_prefix}|w{bits}g{group}") if rtn_prefix else None
        if rtn:
            lines.append(f"| W{bits} g{group} | RTN | {rtn['accuracy']:.3f} | {1e3 * rtn['kl']:.3f} | "
                         f"{top_share(rtn['question_kl']):.0%} | - |")
        lines += rows
    return "\n".join(lines)


def paired(runs, part, calib, bits, group, method, base, seeds, base_part=None):
    """(KL difference, accuracy difference, share of questions with the lower KL) of method minus base over
    the seeds both have, or None. base_part: the part the base's runs belong to (default: `part`)."""
    base_part = base_part or part
    both = [s for s in seeds if key(part, calib, bits, group, method, s) in runs
            and key(base_part, calib, bits, group, base, s) in runs]
    if not both:
        return None
    lengths = np.array(runs["FP"]["lengths"], dtype=np.float64)

    def matrix(label, field, owner=part):
        rows = [runs[key(owner, calib, bits, group, label, s)][field] for s in both]
        return np.array([[int(c) for c in r] if field == "correct" else r for r in rows], dtype=np.float64)

    kl = paired_difference(matrix(method, "question_kl"), matrix(base, "question_kl", base_part), lengths,
                           lower_is_better=True)
    acc = paired_difference(matrix(method, "correct"), matrix(base, "correct", base_part), lower_is_better=False)
    return kl, acc, lower_share(matrix(method, "question_kl"), matrix(base, "question_kl", base_part))


def paired_rows(runs, part, calib, settings, seeds, pairs=PAIRS, base_part=None) -> str:
    lines = ["| setting | comparison | KL ×10⁻³ difference [95 % CI] | KL: seeds won | verdict | questions with "
             "lower KL | exact-match difference [95 % CI] | acc: seeds won |", "|---|---|---|---|---|---|---|---|"]
    for bits, group in settings:
        for method, base in pairs:
            result = paired(runs, part, calib, bits, group, method, base, seeds, base_part)
            if result is None:
                continue
            kl, acc, lower = result
            lines.append(f"| W{bits} g{group} | {method} − {base} | {1e3 * kl.mean:+.3f} [{1e3 * kl.low:+.3f}, "
                         f"{1e3 * kl.high:+.3f}] | {kl.wins}/{kl.seeds} | {kl.verdict} | {lower:.1%} | {acc.mean:+.4f} "
                         f"[{acc.low:+.4f}, {acc.high:+.4f}] | {acc.wins}/{acc.seeds} |")
    return "\n".join(lines)


def sweep_rows(runs, sizes, settings, seeds) -> str:
    lines = ["| setting | samples | method | answer KL ×10⁻³ | exact match | G's effective tokens q / k / v / o "
             "(of all tokens) |", "|---|---|---|---|---|---|"]
    for bits, group in settings:
        for calib in sizes:
            for label in MAIN:
                done = seed_runs(runs, "sweep", calib, bits, group, label, seeds)
                if not done:
                    continue
                ess = ""
                if done[0].get("g"):
                    g = done[0]["g"]
                    ess = " / ".join(f"{statistics.mean(r['g']['effective_tokens'][p] for r in done):.0f}"
                                     for p in ATTENTION_PROJECTIONS) + f" (of {g['tokens']})"
                lines.append(f"| W{bits} g{group} | {calib} | {label} | "
                             f"{statistics.mean(1e3 * r['kl'] for r in done):.3f} | "
                             f"{statistics.mean(r['accuracy'] for r in done):.3f} | {ess} |")
    return "\n".join(lines)


def variant_rows(runs, part, calib, settings, seeds, labels) -> str:
    lines = [TABLE_HEAD.format("variant")]
    lines += filter(None, (seed_row(runs, part, calib, bits, group, label, seeds)
                           for bits, group in settings for label in labels))
    return "\n".join(lines)


def ablation_rows(runs, calib, settings, seeds, precursor: str, labels) -> str:
    """The precursor and the unablated VLMQ (from the main part), then every ablation, per setting."""
    lines = [TABLE_HEAD.format("variant")]
    for bits, group in settings:
        rows = [seed_row(runs, "main", calib, bits, group, label, seeds)
                for label in (precursor.upper(), f"VLMQ({precursor})")]
        rows += [seed_row(runs, "abl", calib, bits, group, label, seeds) for label in labels]
        lines += filter(None, rows)
    return "\n".join(lines)


def random_grid_rows(runs, calib, settings, seeds, precursor: str, variants: dict) -> list[str]:
    """Table 5's question, does gradient G beat random G: per setting, over the seeds at which VLMQ and every random
    setting asked for have run, VLMQ's mean exact match and KL, its rank among them all (1 = best), and the random
    settings' min / median / max; nothing if no setting is complete. variants: ablation label -> VLMQConfig."""
    grid = [label for label, cfg in variants.items() if cfg.importance == "random"]
    if not grid:
        return []
    vlmq = f"VLMQ({precursor})"
    lines = []
    for bits, group in settings:
        done = [s for s in seeds if key("main", calib, bits, group, vlmq, s) in runs
                and all(key("abl", calib, bits, group, label, s) in runs for label in grid)]
        if not done:
            continue

        def mean(part, label, field):
            return statistics.mean(runs[key(part, calib, bits, group, label, s)][field] for s in done)

        cells = []
        for field, scale, sign in (("accuracy", 1, 1), ("kl", 1e3, -1)):  # sign: +1 where higher is better
            # ranked as printed (3 decimals), so a tie in the table is a tie in the rank
            own = round(scale * mean("main", vlmq, field), 3)
            others = sorted(round(scale * mean("abl", label, field), 3) for label in grid)
            rank = 1 + sum(sign * (x - own) > 0 for x in others)  # 1 + the random settings strictly better
            cells += [f"{own:.3f}", f"{rank} of {len(grid) + 1}",
                      f"{others[0]:.3f} / {statistics.median(others):.3f} / {others[-1]:.3f}"]
        lines.append(f"| W{bits} g{group} | {','.join(map(str, done))} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    return [f"\n### Gradient G against the {len(grid)} random G settings (the paper's Table 5)\n",
            "Means over the seeds at which all of them ran; rank 1 = best of the gradient and the random settings.\n",
            "| setting | seeds | VLMQ exact match | its rank | random: min / median / max | VLMQ answer KL ×10⁻³ | "
            "its rank | random: min / median / max |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(lines)]


def layer_error_section(runs, part, calib, settings, seeds, labels) -> list[str]:
    """Relative output error of the first and the last decoder layer on held-out tokens (×10⁻³), all, vision
    and text tokens apart, mean over seeds; nothing if no run has it."""
    lines = [f"\n### Decoder-layer output error on {LAYER_ERROR_QUESTIONS} held-out questions (×10⁻³)\n",
             "| setting | method | first layer: all / vision / text | last layer: all / vision / text | seeds |",
             "|---|---|---|---|---|"]
    for bits, group in settings:
        for label in labels:
            done = [r for r in seed_runs(runs, part, calib, bits, group, label, seeds) if r.get("layer_errors")]
            if not done:
                continue
            cells = []
            for layer in (0, -1):
                cells.append(" / ".join(f"{1e3 * statistics.mean(r['layer_errors'][t][layer] for r in done):.3f}"
                                        for t in ("all", "vision", "text")))
            lines.append(f"| W{bits} g{group} | {label} | {cells[0]} | {cells[1]} | {len(done)} |")
    return ["\n".join(lines)] if len(lines) > 3 else []


def part_minutes(runs, part: str, labels=None) -> float:
    """Quantization minutes of a part's runs (only those of `labels`, if given)."""
    return sum(r.get("seconds") or 0 for k, r in runs.items()
               if k.startswith(part + "|") and (labels is None or k.split("|")[3] in labels)) / 60


# ---- charts ---------------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def main_chart(runs, calib, settings, seeds, path: Path, title: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / (len(MAIN) + 1)
    for ax, metric in zip(axes, ("accuracy", "kl")):
        for j, label in enumerate(["RTN", *MAIN]):
            xs, ys, es = [], [], []
            for i, (bits, group) in enumerate(settings):
                done = ([runs[k]] if (k := f"rtn|w{bits}g{group}") in runs else []) if label == "RTN" else \
                    seed_runs(runs, "main", calib, bits, group, label, seeds)
                if done:
                    mean, sd = mean_sd([r[metric] for r in done])
                    xs.append(i), ys.append(mean), es.append(sd)
            ax.bar([x + (j - (len(MAIN) + 1) / 2 + 0.5) * width for x in xs], ys, width, yerr=es, label=label,
                   capsize=2)
        if metric == "accuracy":
            ax.axhline(runs["FP"]["accuracy"], color="k", ls="--", lw=1, label="FP")
            ax.set_ylabel("exact match")
        else:
            ax.set_ylabel("answer-token KL vs FP (lower is better)")
            ax.set_yscale("log")
        ax.set_xticks(range(len(settings)), [f"W{b} g{g}" for b, g in settings])
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_chart(runs, sizes, settings, seeds, path: Path, title: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.2), squeeze=False)
    for ax, (bits, group) in zip(axes[0], settings):
        for label in MAIN:
            xs, ys = [], []
            for calib in sizes:
                done = seed_runs(runs, "sweep", calib, bits, group, label, seeds)
                if done:
                    xs.append(calib), ys.append(statistics.mean(1e3 * r["kl"] for r in done))
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("calibration samples")
        ax.set_ylabel("answer KL vs FP ×10⁻³ (lower is better)")
        ax.set_title(f"W{bits} g{group}")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- run ------------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="FP model directory (default: the shipped synthvlm)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    p.add_argument("--settings", default="w4g128,w3g128,w2g128,w3g32,w2g32", help="settings of the main part")
    p.add_argument("--seeds", default="0,1,2,3,4", help="calibration seeds of the main part")
    p.add_argument("--methods", default=",".join(MAIN), help="methods of the main, attention-only and sweep parts")
    p.add_argument("--calib", type=int, default=512, help="calibration images per seed (the paper: 512)")
    p.add_argument("--eval", type=int, default=320,
                   help="images scored (about 3.3 questions each: 320 gives over 1,000 questions)")
    p.add_argument("--split", choices=("eval", "select"), default="eval",
                   help="eval: the held-out evaluation split (reporting only); select: the selection split, on "
                        "which settings may be chosen")
    p.add_argument("--world", choices=tuple(WORLDS), default=None,
                   help="score questions from this world's final stage instead of the model's own world (same "
                        "vocabulary and image size; e.g. deep-meaning: a deep-recall model's meaning questions)")
    p.add_argument("--dtype", default="float32",
                   help="layer dtype while quantizing (auto = GPTQModel's choice, bf16 on CPU)")
    p.add_argument("--serve", choices=tuple(SERVE_DTYPE), default="dequantized",
                   help="score checkpoints as dequantized fp32 weights, or through GPTQModel's TorchLinear in bf16")
    p.add_argument("--attention-settings", default="w3g128,w2g128")
    p.add_argument("--attention-seeds", default=None, help="calibration seeds of the attention-only part "
                                                               "(default: --seeds)")
    p.add_argument("--sweep-sizes", default="64,128,256,512,1024")
    p.add_argument("--sweep-settings", default="w3g128,w2g128")
    p.add_argument("--sweep-seeds", default="0")
    p.add_argument("--ablation-settings", default="w2g128")
    p.add_argument("--ablation-seeds", default="0,1,2")
    p.add_argument("--ablation-precursor", choices=("gptq", "gptaq"), default="gptaq")
    p.add_argument("--ablation-variants", default=None,
                   help="semicolon-separated subset of the ablations (their labels hold commas; default: all)")
    p.add_argument("--study-settings", default="w2g128")
    p.add_argument("--study-seeds", default="0,1,2")
    p.add_argument("--study-scope", choices=tuple(STUDY_PARTS), default="attention-only",
                   help="what the GPTAQ study quantizes: q/k/v/o only (where VLMQ's weighting acts and its gap to "
                        "GPTAQ was measured) or every linear")
    p.add_argument("--study-variants", default=None,
                   help="comma-separated subset of the study's variants (default: all of them)")
    p.add_argument("--engine-settings", default="w3g128,w2g128")
    p.add_argument("--engine-seeds", default="0,1,2")
    p.add_argument("--engine-methods", default="GPTQ,VLMQ(gptaq)")
    p.add_argument("--results", default=None,
                   help="folder for quality.json/.md/.png (default benchmarks/results/quality/<model>[-select]); "
                        "runs already in its quality.json are reused")
    p.add_argument("--fresh", action="store_true", help="ignore earlier results in quality.json")
    p.add_argument("--report-only", action="store_true",
                   help="quantize nothing: write quality.md/.png from the runs stored in quality.json (a grid still "
                        "running, or stopped part-way) and list the runs asked for that are not stored yet")
    p.add_argument("--merge", action="append", default=[], metavar="DIR",
                   help="also take the runs in DIR/quality.json (a part run in a parallel process with its own "
                        "--results; same model, split, images, dtype and scoring); repeatable")
    args = p.parse_args(argv)
    parts = [s for s in args.parts.split(",") if s]
    unknown = [s for s in parts if s not in PARTS]
    if unknown:
        raise SystemExit(f"--parts: {unknown} not among {PARTS}")
    if args.report_only and (args.fresh or args.merge):
        raise SystemExit("--report-only reads quality.json as it is: drop --fresh and --merge")
    if args.calib < 1 or args.eval < 1:
        raise SystemExit("--calib and --eval must be at least 1")
    args.parts = parts
    args.study_variants = parse_subset(args.study_variants, ",", tuple(gptaq_study()), "study-variants")
    args.ablation_variants = parse_subset(args.ablation_variants, ";", tuple(ablations(VLMQConfig())),
                                          "ablation-variants")
    args.methods = [m for m in args.methods.split(",") if m]
    args.engine_methods = [m for m in args.engine_methods.split(",") if m]
    for flag, methods in (("--methods", args.methods), ("--engine-methods", args.engine_methods)):
        if not methods or set(methods) - set(MAIN):
            raise SystemExit(f"{flag}: give a comma-separated subset of {tuple(MAIN)}")
    if args.results is None:
        name = Path(args.model).name if args.model else "synthvlm"
        args.results = str(RESULTS / (name + ("-select" if args.split == "select" else "")))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    settings = [parse_setting(s) for s in args.settings.split(",")]
    attn_settings = [parse_setting(s) for s in args.attention_settings.split(",")]
    sweep_settings = [parse_setting(s) for s in args.sweep_settings.split(",")]
    abl_settings = [parse_setting(s) for s in args.ablation_settings.split(",")]
    study_settings = [parse_setting(s) for s in args.study_settings.split(",")]
    engine_settings = [parse_setting(s) for s in args.engine_settings.split(",")]
    engine_seeds = parse_ints(args.engine_seeds, "engine-seeds")
    seeds, sizes = parse_ints(args.seeds, "seeds"), parse_ints(args.sweep_sizes, "sweep-sizes")
    sweep_seeds, abl_seeds = parse_ints(args.sweep_seeds, "sweep-seeds"), parse_ints(args.ablation_seeds, "ablation-seeds")
    study_seeds = parse_ints(args.study_seeds, "study-seeds")
    attn_seeds = parse_ints(args.attention_seeds, "attention-seeds") if args.attention_seeds else seeds
    bench = Bench(args)
    methods = {label: MAIN[label] for label in args.methods}
    abl = {name: cfg for name, cfg in ablations(VLMQConfig(precursor=args.ablation_precursor)).items()
           if args.ablation_variants is None or name in args.ablation_variants}
    study = {name: spec for name, spec in gptaq_study().items()
             if args.study_variants is None or name in args.study_variants}
    if "main" in args.parts:
        for bits, group in settings:
            bench.rtn(bits, group)
        for seed in seeds:
            for bits, group in settings:
                for label, (method, cfg) in methods.items():
                    bench.quantized(key("main", args.calib, bits, group, label, seed), bits, group, seed, args.calib,
                                    method, cfg)
    if "attention-only" in args.parts:
        for bits, group in attn_settings:
            bench.rtn(bits, group, attention_only=True)
        for seed in attn_seeds:
            for bits, group in attn_settings:
                for label, (method, cfg) in methods.items():
                    bench.quantized(key("attn", args.calib, bits, group, label, seed), bits, group, seed, args.calib,
                                    method, cfg, attention_only=True)
    if "sweep" in args.parts:
        for seed in sweep_seeds:
            for calib in sizes:
                for bits, group in sweep_settings:
                    for label, (method, cfg) in methods.items():
                        bench.quantized(key("sweep", calib, bits, group, label, seed), bits, group, seed, calib,
                                        method, cfg)
    if "ablations" in args.parts:
        for seed in abl_seeds:
            for bits, group in abl_settings:
                for name, cfg in abl.items():
                    bench.quantized(key("abl", args.calib, bits, group, name, seed), bits, group, seed, args.calib,
                                    "vlmq", cfg)
    if "gptaq-study" in args.parts:
        part, attention_only = STUDY_PARTS[args.study_scope], args.study_scope == "attention-only"
        for seed in study_seeds:
            for bits, group in study_settings:
                for name, (method, cfg, alpha) in study.items():
                    name_key = key(part, args.calib, bits, group, name, seed)
                    same = key("attn", args.calib, bits, group, STUDY_SAME_AS_ATTN.get(name, ""), seed)
                    if attention_only and name_key not in bench.runs and same in bench.runs:
                        bench.runs[name_key] = bench.runs[same]
                        continue
                    bench.quantized(name_key, bits, group, seed, args.calib, method, cfg, alpha=alpha,
                                    attention_only=attention_only)
    if "engine" in args.parts:  # the act-order runs it is compared with are the main part's, same seeds
        for seed in engine_seeds:
            for bits, group in engine_settings:
                for label in args.engine_methods:
                    method, cfg = MAIN[label]
                    for name, target in ((label, DEFAULT_TARGET), (ENGINE_LABEL.format(label), ENGINES[0])):
                        bench.quantized(key("main", args.calib, bits, group, name, seed), bits, group, seed,
                                        args.calib, method, cfg, target=target)
    write_report(bench, args, settings, attn_settings, sweep_settings, sizes, abl_settings, study_settings,
                 seeds, attn_seeds, sweep_seeds, abl_seeds, study_seeds, abl, study, engine_settings, engine_seeds)


def write_report(bench, args, settings, attn_settings, sweep_settings, sizes, abl_settings, study_settings,
                 seeds, attn_seeds, sweep_seeds, abl_seeds, study_seeds, abl, study, engine_settings,
                 engine_seeds) -> None:
    runs, calib = bench.runs, args.calib
    results = Path(args.results)
    model = bench.identity["model"]
    text = [f"# Quantization quality on {model}\n",
            f"{len(runs['FP']['correct'])} questions ({args.eval} images of the {args.split} split, world "
            f"{bench.world!r}), {calib} calibration images per seed unless the sweep says otherwise, quantized in "
            f"{args.dtype}, act-order on, asymmetric, damp 0.01, GPTAQ alpha 0.25; {SERVED[args.serve]}. "
            f"Paired differences: method minus its precursor, per calibration seed and question, 95 % bootstrap "
            f"interval over seeds and questions; \"no difference\" where it contains 0. Questions with lower KL: "
            f"share of the (seed, question) pairs, among those that differ, where the method's KL is the lower one "
            f"(a few extreme questions cannot swing it; the mean KL is often carried by ten of them).\n"]
    if any(k.startswith("main|") for k in runs):
        text += [f"## Main (seeds {seeds}; {part_minutes(runs, 'main', MAIN):.0f} min of quantization so far)\n",
                 method_rows(runs, "main", calib, settings, seeds, MAIN, "rtn"),
                 "\n### VLMQ minus its own precursor\n", paired_rows(runs, "main", calib, settings, seeds)]
        text += layer_error_section(runs, "main", calib, settings, seeds, MAIN)
        main_chart(runs, calib, settings, seeds, results / "quality.png",
                   f"{model}, {calib} calibration samples, mean ± sd over seeds {seeds}")
    if any(k.startswith("attn|") for k in runs):
        text += [f"\n## Attention only: q/k/v/o quantized, MLP kept FP (seeds {attn_seeds}; "
                 f"{part_minutes(runs, 'attn'):.0f} min)\n",
                 method_rows(runs, "attn", calib, attn_settings, attn_seeds, MAIN, "rtn-attn"),
                 "\n### VLMQ minus its own precursor\n", paired_rows(runs, "attn", calib, attn_settings, attn_seeds)]
        text += layer_error_section(runs, "attn", calib, attn_settings, attn_seeds, MAIN)
    if any(k.startswith("sweep|") for k in runs):
        text += [f"\n## Calibration-size sweep (seeds {sweep_seeds}; {part_minutes(runs, 'sweep'):.0f} min)\n",
                 "Effective tokens: Kish's effective sample size (Σg²)²/Σg⁴ of each projection's Hessian weights, "
                 "mean over layers 1 and up, for the VLMQ rows.\n", sweep_rows(runs, sizes, sweep_settings, sweep_seeds)]
        sweep_chart(runs, sizes, sweep_settings, sweep_seeds, results / "sweep.png",
                    f"{model}: answer KL vs calibration samples, seeds {sweep_seeds}")
    if any(k.startswith("abl|") for k in runs):
        text += [f"\n## Ablations (VLMQ, precursor {args.ablation_precursor}, seeds {abl_seeds}; "
                 f"{part_minutes(runs, 'abl'):.0f} min)\n",
                 "The unablated rows are the main part's.\n",
                 ablation_rows(runs, calib, abl_settings, abl_seeds, args.ablation_precursor, list(abl)),
                 "\n### Each ablation minus the precursor and minus VLMQ (paired over seeds)\n",
                 paired_rows(runs, "abl", calib, abl_settings, abl_seeds,
                             [(label, base) for label in abl for base in (args.ablation_precursor.upper(),
                                                                          f"VLMQ({args.ablation_precursor})")],
                             base_part="main")]
        text += random_grid_rows(runs, calib, abl_settings, abl_seeds, args.ablation_precursor, abl)
    for scope, part in STUDY_PARTS.items():
        if not any(k.startswith(part + "|") for k in runs):
            continue
        text += [f"\n## GPTAQ study, {scope} (seeds {study_seeds}; {part_minutes(runs, part):.0f} min)\n",
                 variant_rows(runs, part, calib, study_settings, study_seeds, list(study)),
                 "\n### Paired\n",
                 paired_rows(runs, part, calib, study_settings, study_seeds,
                             [(f"VLMQ(gptaq) alpha={a}", f"GPTAQ alpha={a}") for a in (0.1, 0.25, 0.5)]
                             + [(variant, baseline) for variant in STUDY_VARIANTS
                                for baseline in ("GPTAQ alpha=0.25", "VLMQ(gptaq) alpha=0.25")])]
        text += layer_error_section(runs, part, calib, study_settings, study_seeds, list(study))
    engine_labels = [label for label in MAIN if any(k.startswith("main|") and f"|{ENGINE_LABEL.format(label)}|" in k
                                                    for k in runs)]
    if engine_labels:
        pairs = [(ENGINE_LABEL.format(label), label) for label in engine_labels]
        minutes = part_minutes(runs, "main", [engine for engine, _ in pairs])
        text += [f"\n## The vLLM/SGLang-ready export: act-order off, true zero points (seeds {engine_seeds}; "
                 f"{minutes:.0f} min)\n",
                 "`vlmq quantize --target vllm` (or sglang): what the engines' 2-4-bit route (humming) can read. "
                 "Each row pair has the same calibration seeds; the paired difference is the export's cost.\n",
                 variant_rows(runs, "main", calib, engine_settings, engine_seeds, [x for pair in pairs for x in pair[::-1]]),
                 "\n### Engine-ready minus act-order\n",
                 paired_rows(runs, "main", calib, engine_settings, engine_seeds, pairs)]
    if bench.missing:
        text += [f"\n{len(bench.missing)} runs of the command below are not stored yet: the tables hold the seeds done "
                 f"(their seeds column); the command runs the rest (runs already stored are reused)."]
    text += ["\n" + reproduce_line("quality.py", [a for a in sys.argv[1:] if a != "--report-only"]) + "\n"]
    write_text(results / "quality.md", "\n".join(text))
    print("\n".join(text))
    if bench.missing:
        print(f"--report-only: {len(bench.missing)} of the runs asked for are not stored yet (not in the report): "
              + ", ".join(bench.missing[:8]) + (", …" if len(bench.missing) > 8 else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
