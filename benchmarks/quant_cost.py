"""Quantization cost of GPTQ, GPTAQ and VLMQ on the same model and calibration set, in one run.

Each method runs in its own fresh Python process (so peak memory is its own), on the same
deterministically built random VLM (Qwen2-VL, or LLaVA-OneVision with --preset ov-7b; the language
model at the preset's dimensions) and the same synthetic calibration images, `--repeats`
times in interleaved order. Printed: wall time of `quantize()` (model loading excluded), peak
memory (CUDA: max allocated; CPU: peak RSS of the process, and the part above the RSS measured
right before `quantize()`), as absolute values and as ratios to GPTAQ.

    python benchmarks/quant_cost.py                       # Qwen2-VL-2B text dims, 2 layers, CPU
    python benchmarks/quant_cost.py --preset ov-7b        # LLaVA-OneVision-7B text dims (Qwen2-7B)
    python benchmarks/quant_cost.py --device cuda --layers 4 --samples 64
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from results_io import RESULTS, reproduce_line, write_text

PRESETS = {  # arch and language-model dims; the vision tower is tiny (it is not quantized)
    "2b": dict(arch="qwen2_vl", hidden_size=1536, intermediate_size=8960, num_attention_heads=12,
               num_key_value_heads=2),
    "small": dict(arch="qwen2_vl", hidden_size=512, intermediate_size=1536, num_attention_heads=8,
                  num_key_value_heads=2),
    "7b": dict(arch="qwen2_vl", hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
               num_key_value_heads=4),  # Qwen2-VL-7B
    # LLaVA-OneVision-7B's language model is Qwen2-7B: hidden 3584, MLP 18944, 28 heads, 4 KV heads
    "ov-7b": dict(arch="llava_onevision", hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                  num_key_value_heads=4),
}
# --image-size default per arch: Qwen2-VL resizes images to it (448 px: 256 image tokens); for LLaVA-OneVision it
# is the vision tower's tile side (112 px: 64 tokens a tile, 336 for an image filling the 2x2 grid)
DEFAULT_IMAGE_SIZE = {"qwen2_vl": 448, "llava_onevision": 112}


def preset_arch(preset: str) -> str:
    return PRESETS[preset]["arch"]


def language_dims(preset: str) -> dict:
    return {k: v for k, v in PRESETS[preset].items() if k != "arch"}
METHODS = {  # label -> (runner method, VLMQ precursor)
    "GPTQ": ("gptq", None),
    "GPTAQ": ("gptaq", None),
    "VLMQ(gptaq)": ("vlmq", "gptaq"),
    "VLMQ(gptq)": ("vlmq", "gptq"),
}


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker(args) -> None:
    import torch

    import vlmq_gptqmodel  # noqa: F401
    from vlmq_gptqmodel.config import VLMQConfig
    from vlmq_gptqmodel.runner import QuantSpec
    from vlmq_gptqmodel.streams import StreamPlan
    from vlmq_gptqmodel.synth.tiny_vlm import full_budget_image_size
    from vlmq_gptqmodel.synth.world import calibration_conversations
    from gptqmodel import GPTQModel

    method, precursor = METHODS[args.worker]
    spec = QuantSpec(bits=args.bits, group_size=args.group_size, device=args.device, dtype=args.dtype)
    vlmq = VLMQConfig(precursor=precursor) if method == "vlmq" else None
    image_size = full_budget_image_size(preset_arch(args.preset), args.image_size)
    calib = calibration_conversations(args.samples, seed=0, image_size=image_size)
    model = GPTQModel.load(args.model, spec.quantize_config(StreamPlan.of(method, vlmq).gptaq_quantizer),
                           dtype=spec.torch_dtype())
    kwargs = {"method": "vlmq", "vlmq": vlmq} if vlmq is not None else {}
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = rss_kib()
    start = time.perf_counter()
    model.quantize(calib, batch_size=1, **kwargs)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "rss_before_mib": before / 1024,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if cuda:
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.result).write_text(json.dumps(result))


def build_model(args, root: Path) -> Path:
    from vlmq_gptqmodel.synth.tiny_vlm import save_tiny_vlm

    return save_tiny_vlm(root / "model", preset_arch(args.preset), seed=0, image_size=args.image_size,
                         num_hidden_layers=args.layers, **language_dims(args.preset))


def run_one(label: str, args, model: Path, root: Path) -> dict:
    out = root / f"{label}.json"
    cmd = [sys.executable, __file__, "--worker", label, "--model", str(model), "--result", str(out),
           "--bits", str(args.bits), "--group-size", str(args.group_size), "--samples", str(args.samples),
           "--image-size", str(args.image_size), "--device", args.device, "--dtype", args.dtype,
           "--preset", args.preset]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return json.loads(out.read_text())


def summarize(runs: dict) -> dict:
    table = {}
    for label, rs in runs.items():
        row = {"seconds": statistics.median(r["seconds"] for r in rs),
               "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
               "peak_above_start_mib": statistics.median(r["peak_rss_mib"] - r["rss_before_mib"] for r in rs),
               "repeats": len(rs)}
        if "peak_cuda_mib" in rs[0]:
            row["peak_cuda_mib"] = statistics.median(r["peak_cuda_mib"] for r in rs)
        table[label] = row
    base = table["GPTAQ"]
    for row in table.values():
        for key in ("seconds", "peak_rss_mib", "peak_above_start_mib", "peak_cuda_mib"):
            if key in row and base.get(key):
                row[f"{key}_vs_gptaq"] = row[key] / base[key]
    return table


def markdown(table: dict, args) -> str:
    cuda = "peak_cuda_mib" in table["GPTAQ"]
    head = "| method | quantize time | vs GPTAQ | peak RSS | vs GPTAQ | peak RSS above start | vs GPTAQ |"
    head += " peak CUDA | vs GPTAQ |" if cuda else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, r in table.items():
        line = (f"| {label} | {r['seconds']:.1f} s | {r['seconds_vs_gptaq']:.3f}x | {r['peak_rss_mib']:.0f} MiB | "
                f"{r['peak_rss_mib_vs_gptaq']:.3f}x | {r['peak_above_start_mib']:.0f} MiB | "
                f"{r['peak_above_start_mib_vs_gptaq']:.3f}x |")
        if cuda:
            line += f" {r['peak_cuda_mib']:.0f} MiB | {r['peak_cuda_mib_vs_gptaq']:.3f}x |"
        lines.append(line)
    setting = (f"device {args.device}, dtype {args.dtype}, preset {args.preset} ({PRESETS[args.preset]}), {args.layers} layers, "
               f"W{args.bits} g{args.group_size}, {args.samples} calibration images ({image_note(args)}), "
               f"median of {args.repeats} run(s) per method, one fresh process per run")
    return setting + "\n\n" + "\n".join(lines)


def image_note(args) -> str:
    from vlmq_gptqmodel.synth.tiny_vlm import full_budget_image_size

    side = full_budget_image_size(preset_arch(args.preset), args.image_size)
    return f"{side} px" if side == args.image_size else f"{side} px, {args.image_size} px tiles"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="2b")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--image-size", type=int, default=None,
                   help="px; Qwen2-VL: image side (default 448 -> 256 image tokens a sample); LLaVA-OneVision: tile "
                        "side (default 112 -> 336 image tokens a sample)")
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="layer dtype while quantizing (auto = GPTQModel's choice)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/quant_cost.*")
    p.add_argument("--worker", choices=sorted(METHODS), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.image_size is None:
        args.image_size = DEFAULT_IMAGE_SIZE[preset_arch(args.preset)]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    labels = [m.strip() for m in args.methods.split(",")]
    if "GPTAQ" not in labels or any(m not in METHODS for m in labels):
        raise SystemExit(f"--methods must list GPTAQ (the reference) and only {list(METHODS)}")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_model(args, root)
        runs = {label: [] for label in labels}
        for rep in range(args.repeats):
            for label in labels:  # interleaved, so slow drift of the machine hits every method alike
                runs[label].append(run_one(label, args, model, root))
                print(f"[{rep + 1}/{args.repeats}] {label}: {runs[label][-1]['seconds']:.1f} s", file=sys.stderr)
    table = summarize(runs)
    text = markdown(table, args)
    print(text)
    if not args.no_save:
        write_text(RESULTS / "quant_cost.json", json.dumps({"settings": vars(args), "results": table}, indent=2))
        write_text(RESULTS / "quant_cost.md", text + "\n\n" + reproduce_line("quant_cost.py") + "\n")


if __name__ == "__main__":
    main()
