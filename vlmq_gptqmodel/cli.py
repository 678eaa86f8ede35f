"""The `vlmq` command: `vlmq quantize ...`, `vlmq quantize --demo`, `vlmq eval ...`."""
from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path

from .config import (
    ATTENTION_PROJECTIONS,
    GRANULARITIES,
    IMPORTANCE_SOURCES,
    LAYER0_POLICIES,
    NORMS,
    PRECURSORS,
    VLMQConfig,
)
from .runner import BASELINES, DTYPES, PAPER_DAMP_PERCENT, QuantSpec

DEFAULT_DEMO_OUT = "out/vlmq-demo"


def build_parser() -> argparse.ArgumentParser:
    from .evaluation import add_eval_command

    parser = argparse.ArgumentParser(prog="vlmq", description="VLMQ post-training quantization for VLMs (GPTQModel)")
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize", help="quantize a Qwen-VL model to a standard GPTQ checkpoint",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--demo", action="store_true",
                   help="offline demo on the built-in demo model and synthetic data: GPTQ vs GPTAQ vs VLMQ")
    q.add_argument("--model", help="model directory (a local save_pretrained folder)")
    q.add_argument("--calib", help="calibration records: .json/.jsonl (ShareGPT4V / COCO-caption) or a "
                                   "datasets save_to_disk folder")
    q.add_argument("--image-root", help="folder that relative image paths in --calib are resolved against")
    q.add_argument("--split", default="train", help="split to use when --calib is a DatasetDict")
    q.add_argument("--num-samples", type=int, default=512, help="calibration samples (random subset, --seed)")
    q.add_argument("--max-length", type=int, default=512,
                   help="max tokens per sample: samples whose vision tokens would be cut are dropped")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", help=f"output checkpoint directory (--demo default: {DEFAULT_DEMO_OUT})")
    q.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    q.add_argument("--method", choices=BASELINES + ("vlmq",), default="vlmq",
                   help="vlmq, or one of GPTQModel's own baselines for comparison")
    q.add_argument("--bits", type=int, choices=(2, 3, 4, 8), default=3)
    q.add_argument("--group-size", type=int, default=128)
    q.add_argument("--no-desc-act", dest="desc_act", action="store_false", help="disable act-order")
    q.add_argument("--sym", action="store_true", help="symmetric quantization (default: asymmetric)")
    q.add_argument("--damp-percent", type=float, default=PAPER_DAMP_PERCENT)
    q.add_argument("--gptaq-alpha", type=float, default=0.25)
    q.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ...")
    q.add_argument("--dtype", choices=("auto",) + DTYPES, default="auto",
                   help="dtype of the layer forwards while quantizing (auto: GPTQModel's choice, bf16 on CPU; "
                        "float32 is much faster on CPUs without bf16 matrix units)")
    q.add_argument("--precursor", choices=PRECURSORS, default="gptaq")
    q.add_argument("--importance", choices=IMPORTANCE_SOURCES, default="gradient")
    q.add_argument("--granularity", choices=GRANULARITIES, default="block")
    q.add_argument("--norm", choices=NORMS, default="l1")
    q.add_argument("--targets", default=",".join(ATTENTION_PROJECTIONS), help="comma-separated projections")
    q.add_argument("--layer0", choices=LAYER0_POLICIES, default="uniform")
    q.add_argument("--min-weight", type=float, default=1e-3)
    q.set_defaults(func=run_quantize)
    add_eval_command(sub)
    return parser


def vlmq_config(args) -> VLMQConfig:
    return VLMQConfig(importance=args.importance, granularity=args.granularity, norm=args.norm,
                      targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()),
                      precursor=args.precursor, layer0=args.layer0, min_weight=args.min_weight)


def quant_spec(args) -> QuantSpec:
    return QuantSpec(bits=args.bits, group_size=args.group_size, desc_act=args.desc_act, sym=args.sym,
                     damp_percent=args.damp_percent, gptaq_alpha=args.gptaq_alpha, device=args.device,
                     dtype=args.dtype)


def run_quantize(args) -> int:
    cfg, spec = vlmq_config(args), quant_spec(args)  # validate settings before any heavy work
    if args.demo:
        from .demo import run_demo

        run_demo(Path(args.out or DEFAULT_DEMO_OUT), spec, cfg, overwrite=args.overwrite, seed=args.seed)
        return 0
    missing = [flag for flag, value in (("--model", args.model), ("--calib", args.calib), ("--out", args.out))
               if not value]
    if missing:
        raise SystemExit(f"vlmq quantize: {', '.join(missing)} required (or --demo for the built-in example).")
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"vlmq quantize: --model {args.model} has no config.json; give a local model directory.")
    from .output_dir import check_output_dir, staged_output
    from .runner import quantize_to_dir

    check_output_dir(args.out, args.overwrite)
    calib = load_calibration(args)
    with staged_output(args.out, args.overwrite) as stage:
        quantize_to_dir(args.model, calib, stage, spec, args.method, cfg)
    print(f"wrote a standard GPTQ checkpoint (W{spec.bits} g{spec.group_size}, {args.method}) to {args.out}")
    return 0


def load_calibration(args) -> list:
    from transformers import AutoProcessor

    from .calibration import fit_to_length, load_records, records_to_conversations

    records = load_records(args.calib, split=args.split)
    if args.num_samples < len(records):
        records = records.select(sorted(random.Random(args.seed).sample(range(len(records)), args.num_samples)))
    conversations = records_to_conversations(records, image_root=args.image_root)
    kept, report = fit_to_length(conversations, AutoProcessor.from_pretrained(args.model), args.max_length)
    print(report)
    if not kept:
        raise SystemExit(f"vlmq quantize: no calibration sample fits --max-length {args.max_length}.")
    return kept


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log = logging.getLogger("vlmq_gptqmodel")  # own handler: GPTQModel configures the root logger
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"vlmq {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
