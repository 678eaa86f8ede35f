"""Quantization quality on the project's own VLM: FP, RTN, GPTQ, GPTAQ, VLMQ(gptq), VLMQ(gptaq) at
W4/W3/W2, plus the paper's ablations as VLMQConfig switches, each over several calibration seeds.

Every quantized model is saved as a GPTQ checkpoint and scored on the held-out evaluation split (never
used for training, calibration or any choice of settings): exact-match accuracy and the mean KL of the
answer-token distributions against the FP model. By default the saved checkpoint's weights are
dequantized into the FP model and everything runs in fp32 (`--serve dequantized`: the same weights as
served, without bf16 rounding, and many times faster on CPUs without bf16 units); `--serve gptqmodel`
loads it with GPTQModel's TorchLinear and scores FP and quantized models in bf16. Calibration samples for
seed s are the same for every method.

    python benchmarks/quality.py                 # everything; resumes from benchmarks/results/quality.json
    python benchmarks/quality.py --no-ablations --settings w3g32 --seeds 0
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

import torch

import vlmq_gptqmodel  # noqa: F401  (registers method="vlmq")
from vlmq_gptqmodel.config import VLMQConfig
from vlmq_gptqmodel.dequantized import load_dequantized
from vlmq_gptqmodel.evaluation import eval_samples, evaluate, load_for_eval, processor_image_size, synthvlm_dir
from vlmq_gptqmodel.rtn import apply_rtn
from vlmq_gptqmodel.runner import QuantSpec, quantize_to_dir
from vlmq_gptqmodel.world import calibration_conversations

RESULTS = Path(__file__).resolve().parent / "results"
# GPTQModel's TorchLinear (the only 2/3-bit CPU kernel) runs in half precision; with --serve gptqmodel
# FP is scored in the same dtype so that the KL measures quantization, not rounding.
SERVE_DTYPE = {"dequantized": torch.float32, "gptqmodel": torch.bfloat16}
SERVED = {"dequantized": "each saved checkpoint's weights dequantized and scored in fp32, as is FP",
          "gptqmodel": "each saved checkpoint loaded by GPTQModel (TorchLinear) and scored in bf16, as is FP"}

MAIN = {  # label -> (runner method, VLMQ config)
    "GPTQ": ("gptq", None),
    "GPTAQ": ("gptaq", None),
    "VLMQ(gptq)": ("vlmq", VLMQConfig(precursor="gptq")),
    "VLMQ(gptaq)": ("vlmq", VLMQConfig(precursor="gptaq")),
}


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
    }
    for ratio in (0.25, 0.5, 0.75):
        for factor in (0.01, 0.05, 0.1):
            out[f"random LI={ratio} DW={factor}"] = replace(base, importance="random", random_ratio=ratio,
                                                            random_factor=factor)
    return out


def parse_setting(text: str) -> tuple:
    bits, group = text.lower().removeprefix("w").split("g")
    return int(bits), int(group)


class Bench:
    def __init__(self, args):
        self.args = args
        self.model_dir = Path(args.model) if args.model else synthvlm_dir()
        self.store = Path(args.results) / "quality.json"
        self.runs = json.loads(self.store.read_text())["runs"] if self.store.exists() and not args.fresh else {}
        self.dtype = SERVE_DTYPE[args.serve]
        self.fp_model, self.processor = load_for_eval(self.model_dir, dtype=self.dtype)
        self.size = processor_image_size(self.processor)
        self.samples = eval_samples(args.eval, seed=0, image_size=self.size)
        self.fp = evaluate(self.fp_model, self.processor, self.samples)

    def record(self, key: str, result, **extra) -> None:
        self.runs[key] = {"accuracy": result.accuracy, "per_kind": result.per_kind, "kl": result.mean_kl, **extra}
        self.store.parent.mkdir(parents=True, exist_ok=True)
        self.store.write_text(json.dumps({"settings": vars(self.args), "runs": self.runs}, indent=1))

    def fp_and_rtn(self, settings) -> None:
        self.record("FP", self.fp, seconds=None)
        for bits, group in settings:
            key = f"w{bits}g{group}|RTN"
            if key not in self.runs:
                rtn = apply_rtn(self.fp_model, bits, group)
                self.record(key, evaluate(rtn, self.processor, self.samples, reference_logits=self.fp), seconds=None)
                del rtn

    def quantized(self, key: str, bits: int, group: int, seed: int, method: str, cfg) -> None:
        if key in self.runs:
            return
        calib = calibration_conversations(self.args.calib, seed=seed, image_size=self.size)
        spec = QuantSpec(bits=bits, group_size=group, dtype=self.args.dtype)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            model = quantize_to_dir(self.model_dir, calib, Path(tmp), spec, method, cfg)
            seconds = time.perf_counter() - start
            report = getattr(model, "vlmq_report", None)
            del model
            if self.args.serve == "dequantized":
                q_model = load_dequantized(tmp, self.fp_model)
            else:
                q_model, _ = load_for_eval(tmp, dtype=self.dtype)
            result = evaluate(q_model, self.processor, self.samples, reference_logits=self.fp)
        self.record(key, result, seconds=seconds, g=summarize_g(report))
        print(f"{key}: acc {result.accuracy:.3f} kl {result.mean_kl:.4f} ({seconds:.0f} s)", file=sys.stderr, flush=True)


def summarize_g(report) -> dict | None:
    """Mean over layers >= 1 and projections of the vision/text ratio of G: does G down-weight vision?"""
    if not report:
        return None
    ratios = [s["vision_mean"] / s["text_mean"] for r in report if r["layer"] > 0 and r["policy"] is None
              for s in r["projections"].values() if s["vision_mean"] is not None and s["text_mean"]]
    return {"vision_over_text": statistics.mean(ratios) if ratios else None,
            "fallbacks": sum(1 for r in report if r["policy"] and "fallback" in r["policy"])}


def aggregate(runs: dict, prefix: str, labels, seeds) -> dict:
    """label -> (mean acc, std acc, mean kl, std kl, mean delta-acc vs `paired` per seed) over seeds."""
    out = {}
    for label in labels:
        accs = [runs[f"{prefix}|{label}|s{s}"]["accuracy"] for s in seeds if f"{prefix}|{label}|s{s}" in runs]
        kls = [runs[f"{prefix}|{label}|s{s}"]["kl"] for s in seeds if f"{prefix}|{label}|s{s}" in runs]
        if accs:
            out[label] = {"acc": statistics.mean(accs), "acc_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                          "kl": statistics.mean(kls), "kl_sd": statistics.stdev(kls) if len(kls) > 1 else 0.0,
                          "n": len(accs), "per_seed_acc": accs, "per_seed_kl": kls}
    return out


def fmt(mean, sd, digits=3) -> str:
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def main_table(runs, settings, seeds) -> str:
    lines = ["| setting | method | exact match (mean ± sd) | answer KL vs FP (mean ± sd) | seeds |", "|---|---|---|---|---|"]
    fp = runs["FP"]
    for bits, group in settings:
        prefix = f"w{bits}g{group}"
        lines.append(f"| W{bits} g{group} | FP | {fp['accuracy']:.3f} | 0 | - |")
        rtn = runs.get(f"{prefix}|RTN")
        if rtn:
            lines.append(f"| W{bits} g{group} | RTN | {rtn['accuracy']:.3f} | {rtn['kl']:.4f} | - |")
        for label, r in aggregate(runs, prefix, MAIN, seeds).items():
            lines.append(f"| W{bits} g{group} | {label} | {fmt(r['acc'], r['acc_sd'])} | {fmt(r['kl'], r['kl_sd'], 4)} | {r['n']} |")
    return "\n".join(lines)


def delta_table(runs, settings, seeds) -> str:
    """VLMQ minus its own precursor, paired per calibration seed (positive = VLMQ better accuracy)."""
    lines = ["| setting | VLMQ(gptq) - GPTQ: acc | KL | VLMQ(gptaq) - GPTAQ: acc | KL |", "|---|---|---|---|---|"]
    for bits, group in settings:
        prefix, cells = f"w{bits}g{group}", []
        for vlmq, base in (("VLMQ(gptq)", "GPTQ"), ("VLMQ(gptaq)", "GPTAQ")):
            pairs = [(runs[f"{prefix}|{vlmq}|s{s}"], runs[f"{prefix}|{base}|s{s}"]) for s in seeds
                     if f"{prefix}|{vlmq}|s{s}" in runs and f"{prefix}|{base}|s{s}" in runs]
            if not pairs:
                cells += ["-", "-"]
                continue
            da = [a["accuracy"] - b["accuracy"] for a, b in pairs]
            dk = [a["kl"] - b["kl"] for a, b in pairs]
            sd = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0)
            cells += [f"{statistics.mean(da):+.3f} ± {sd(da):.3f}", f"{statistics.mean(dk):+.4f} ± {sd(dk):.4f}"]
        lines.append(f"| W{bits} g{group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ablation_table(runs, settings, seeds, labels, precursor: str) -> str:
    lines = ["| setting | variant | exact match | answer KL vs FP |", "|---|---|---|---|"]
    names = {f"VLMQ({precursor})": f"**VLMQ({precursor}): gradient, block, l1, q/k/v/o, layer0 uniform**",
             precursor.upper(): f"importance=constant (G=I) = {precursor.upper()}"}
    for bits, group in settings:
        prefix = f"w{bits}g{group}"
        for label, r in aggregate(runs, prefix, names, seeds).items():
            lines.append(f"| W{bits} g{group} | {names[label]} | {fmt(r['acc'], r['acc_sd'])} | {fmt(r['kl'], r['kl_sd'], 4)} |")
        for name, r in aggregate(runs, prefix + "|abl", labels, seeds).items():
            lines.append(f"| W{bits} g{group} | {name} | {fmt(r['acc'], r['acc_sd'])} | {fmt(r['kl'], r['kl_sd'], 4)} |")
    return "\n".join(lines)


def chart(runs, settings, seeds, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["RTN", *MAIN]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(labels)
    for ax, metric in zip(axes, ("acc", "kl")):
        for j, label in enumerate(labels):
            xs, ys, es = [], [], []
            for i, (bits, group) in enumerate(settings):
                prefix = f"w{bits}g{group}"
                if label == "RTN":
                    r = runs.get(f"{prefix}|RTN")
                    if r:
                        xs.append(i), ys.append(r["accuracy"] if metric == "acc" else r["kl"]), es.append(0)
                    continue
                agg = aggregate(runs, prefix, [label], seeds).get(label)
                if agg:
                    xs.append(i), ys.append(agg[metric]), es.append(agg[metric + "_sd"])
            ax.bar([x + (j - len(labels) / 2 + 0.5) * width for x in xs], ys, width, yerr=es, label=label, capsize=2)
        if metric == "acc":
            ax.axhline(runs["FP"]["accuracy"], color="k", ls="--", lw=1, label="FP")
            ax.set_ylabel("exact match (held-out)")
        else:
            ax.set_ylabel("answer-token KL vs FP (lower is better)")
            ax.set_yscale("log")
        ax.set_xticks(range(len(settings)), [f"W{b} g{g}" for b, g in settings])
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle(f"synthvlm, mean ± sd over calibration seeds {list(seeds)}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="FP model directory (default: the shipped synthvlm)")
    p.add_argument("--settings", default="w4g128,w3g128,w2g128,w4g32,w3g32,w2g32")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--calib", type=int, default=64, help="calibration images per seed")
    p.add_argument("--eval", type=int, default=100, help="held-out evaluation images (about 5 questions each)")
    p.add_argument("--dtype", default="float32",
                   help="layer dtype while quantizing (auto = GPTQModel's choice, bf16 on CPU)")
    p.add_argument("--serve", choices=tuple(SERVE_DTYPE), default="dequantized",
                   help="score checkpoints as dequantized fp32 weights, or through GPTQModel's TorchLinear in bf16")
    p.add_argument("--no-ablations", dest="ablations", action="store_false")
    p.add_argument("--ablation-settings", default="w3g32,w2g32")
    p.add_argument("--ablation-seeds", default=None, help="calibration seeds of the ablations (default: --seeds)")
    p.add_argument("--ablation-precursor", choices=("gptq", "gptaq"), default="gptaq")
    p.add_argument("--results", default=str(RESULTS),
                   help="folder for quality.json/.md/.png; runs already in its quality.json are reused")
    p.add_argument("--fresh", action="store_true", help="ignore earlier results in quality.json")
    args = p.parse_args()
    settings = [parse_setting(s) for s in args.settings.split(",")]
    abl_settings = [parse_setting(s) for s in args.ablation_settings.split(",")] if args.ablations else []
    seeds = [int(s) for s in args.seeds.split(",")]
    abl_seeds = [int(s) for s in args.ablation_seeds.split(",")] if args.ablation_seeds else seeds
    bench = Bench(args)
    bench.fp_and_rtn(settings)
    for seed in seeds:
        for bits, group in settings:
            for label, (method, cfg) in MAIN.items():
                bench.quantized(f"w{bits}g{group}|{label}|s{seed}", bits, group, seed, method, cfg)
    abl = ablations(VLMQConfig(precursor=args.ablation_precursor))
    for seed in abl_seeds:
        for bits, group in abl_settings:
            for name, cfg in abl.items():
                bench.quantized(f"w{bits}g{group}|abl|{name}|s{seed}", bits, group, seed, "vlmq", cfg)
    runs = bench.runs
    command = "python benchmarks/quality.py " + " ".join(sys.argv[1:])
    text = [f"# Quantization quality on synthvlm\n",
            f"{len(bench.fp.correct)} held-out questions ({args.eval} eval images), {args.calib} calibration "
            f"images per seed, seeds {seeds}, quantized in {args.dtype}, act-order on, asymmetric, damp 0.01; "
            f"{SERVED[args.serve]}.\n",
            "## Main table\n", main_table(runs, settings, seeds),
            "\n## VLMQ minus its precursor (paired by calibration seed)\n", delta_table(runs, settings, seeds)]
    if abl_settings:
        text += [f"\n## Ablations (VLMQ, precursor {args.ablation_precursor}, seeds {abl_seeds})\n",
                 ablation_table(runs, abl_settings, abl_seeds, list(abl), args.ablation_precursor)]
    text += [f"\nreproduce: `{command}`\n"]
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "quality.md").write_text("\n".join(text))
    chart(runs, settings, seeds, results / "quality.png")
    print("\n".join(text))


if __name__ == "__main__":
    main()
