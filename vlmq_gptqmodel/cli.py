"""The `vlmq` command: `vlmq quantize ...`, `vlmq quantize --demo`, `vlmq eval ...`, `vlmq check ...`.

Exit codes: 0 success; 2 refused before any work (bad arguments, input or settings: BadInput and the
argparse usage errors); 1 the run started and failed (RunFailed, an OS error); 128 + signal number when
stopped by SIGINT or SIGTERM. Every error is one line on stderr, and no output folder is left behind."""
from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import shutil
import sys
from pathlib import Path

from .config import (
    ATTENTION_PROJECTIONS,
    GRADIENT_PATHS,
    GRANULARITIES,
    IMPORTANCE_SOURCES,
    LAYER0_POLICIES,
    NORMS,
    PRECURSORS,
    PROJECTIONS,
    RESIDUALS,
    VLMQConfig,
)
from .engines import DEFAULT_TARGET, ENGINE_VERSIONS, ENGINES, TARGETS
from .errors import BadInput, RunFailed
from .families import FAMILIES, family_of
from .runner import DTYPES, PAPER_DAMP_PERCENT, QUANT_BITS, QuantSpec
from .streams import METHODS

DEFAULT_DEMO_OUT = "out/vlmq-demo"
EVAL_IMAGES = 100  # `vlmq eval` default: about 500 questions
EXIT_RUN_FAILED, EXIT_BAD_INPUT = 1, 2
# refused before any work: the user's input or settings are the cause
BAD_INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError)
# the demo brings its own model and calibration data: these flags would be silently ignored
DEMO_IGNORES = ("model", "calib", "image_root", "split", "num_samples", "max_length", "method")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmq", description="VLMQ post-training quantization for VLMs (GPTQModel)")
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize", help="quantize a Qwen-VL or LLaVA-OneVision model to a standard GPTQ checkpoint",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--demo", action="store_true",
                   help="offline demo on the built-in demo model and synthetic data: GPTQ vs GPTAQ vs VLMQ")
    q.add_argument("--model", help="model directory (a local save_pretrained folder)")
    add_calibration_flags(q, "calibration records")
    q.add_argument("--out", help=f"output checkpoint directory (--demo default: {DEFAULT_DEMO_OUT})")
    q.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    q.add_argument("--remove-stale", action="store_true",
                   help="delete staging folders of --out left by killed runs (otherwise they are only listed)")
    q.add_argument("--method", choices=METHODS, default="vlmq",
                   help="vlmq, or one of GPTQModel's own baselines for comparison")
    add_run_flags(q)
    q.set_defaults(func=run_quantize, demo_ignored_defaults={dest: q.get_default(dest) for dest in DEMO_IGNORES})
    add_eval_command(sub)
    add_inspect_command(sub)
    c = sub.add_parser("check", help="check that a saved GPTQ checkpoint means the same weights in vLLM/SGLang")
    c.add_argument("checkpoint", help="a checkpoint directory saved by vlmq quantize or GPTQModel")
    c.add_argument("--target", choices=ENGINES, default=ENGINES[0])
    c.set_defaults(func=run_check)
    return parser


def add_calibration_flags(q, what: str) -> None:
    q.add_argument("--calib", help=f"{what}: .json/.jsonl (ShareGPT4V / COCO-caption) or a datasets "
                                   "save_to_disk folder")
    q.add_argument("--image-root", help="folder that relative image paths in --calib are resolved against")
    q.add_argument("--split", default="train", help="split to use when --calib is a DatasetDict")
    q.add_argument("--num-samples", type=int, default=512, help="calibration samples (random subset, --seed)")
    q.add_argument("--max-length", type=int, default=None,
                   help="max tokens per sample: samples whose vision tokens would be cut are dropped (default: the "
                        "paper's length for the model's family, " + ", ".join(
                            f"{f.name} {f.calibration_length}" for f in FAMILIES) + ")")
    q.add_argument("--seed", type=int, default=0)


def add_run_flags(q) -> None:
    """The quantization and VLMQ settings of a run (QuantSpec and VLMQConfig), shared by quantize and inspect."""
    q.add_argument("--bits", type=int, choices=QUANT_BITS, default=3)
    q.add_argument("--group-size", type=int, default=128)
    q.add_argument("--no-desc-act", dest="desc_act", action="store_false", help="disable act-order")
    q.add_argument("--target", choices=TARGETS, default=DEFAULT_TARGET,
                   help="who serves the checkpoint: gptqmodel, or vllm / sglang (their 2-4-bit route, "
                        f"{ENGINE_VERSIONS}: act-order off, true zero points, vision tower excluded)")
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
    q.add_argument("--targets", default=",".join(ATTENTION_PROJECTIONS),
                   help=f"comma-separated projections, of {','.join(PROJECTIONS)} (the paper weights q/k/v/o; the MLP's "
                        "are this project's extension, off by default)")
    q.add_argument("--layer0", choices=LAYER0_POLICIES, default="uniform")
    q.add_argument("--power", type=float, default=1.0,
                   help="g raised to this power before normalization (1: the paper; 0.5: H weighted by g, not g^2)")
    q.add_argument("--min-weight", type=float, default=1e-3)
    q.add_argument("--residual", choices=RESIDUALS, default="weighted",
                   help="with --precursor gptaq: how GPTAQ's asymmetric term is token-weighted")
    q.add_argument("--gradient-at", choices=GRADIENT_PATHS, default="quantized",
                   help="which path's projection outputs the block loss is differentiated at (fp: a diagnostic)")
    q.add_argument("--random-ratio", type=float, default=0.5, help="--importance random: share of vision tokens down-weighted")
    q.add_argument("--random-factor", type=float, default=0.01, help="--importance random: their weight")
    q.add_argument("--random-seed", type=int, default=0, help="--importance random: seed (VLMQConfig.seed)")


def add_eval_command(subparsers) -> None:
    """`vlmq eval --model DIR [--n N] [--reference FP_DIR]`: the synthetic world's evaluation split."""
    e = subparsers.add_parser(
        "eval", help="exact-match VQA accuracy (and KL vs an FP reference) on the synthetic world's eval split")
    e.add_argument("--model", default=None,
                   help="FP model directory, GPTQ checkpoint directory or a shipped model's name (default: synthvlm)")
    e.add_argument("--n", type=int, default=EVAL_IMAGES, help=f"evaluation images (about 5 questions each; default {EVAL_IMAGES})")
    e.add_argument("--reference", default=None, help="FP model directory for the answer-token KL")
    e.add_argument("--seed", type=int, default=0, help="evaluation split seed (default 0)")
    e.add_argument("--batch-size", type=int, default=None, help="questions per forward pass (default: the evaluator's)")
    e.add_argument("--json", default=None, help="also write the summary as JSON to this file")
    e.set_defaults(func=run_eval)


def add_inspect_command(subparsers) -> None:
    """`vlmq inspect --model DIR --image PATH --question TEXT --out g.png`: one sample's G as a run computed it."""
    i = subparsers.add_parser(
        "inspect", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="draw the token weights G that a VLMQ run computes for one image and question (Qwen-VL), as a PNG")
    i.add_argument("--model", required=True, help="model directory (a local save_pretrained folder)")
    i.add_argument("--image", required=True, help="the image (any format PIL reads)")
    i.add_argument("--question", required=True, help="the user's text after the image")
    i.add_argument("--answer", default=None, help="the assistant's reply: a calibration sample is a conversation")
    i.add_argument("--layer", type=int, default=None,
                   help="decoder layer (default: the middle one; layer 0's G is uniform under --layer0 uniform)")
    i.add_argument("--projection", choices=PROJECTIONS, default=None,
                   help="whose G to draw (default: the first of --targets)")
    i.add_argument("--out", required=True, help="the PNG to write")
    i.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_calibration_flags(i, "more calibration records for the run besides the sample (default: the sample alone)")
    add_run_flags(i)
    i.set_defaults(func=run_inspect)


def vlmq_config(args) -> VLMQConfig:
    return VLMQConfig(importance=args.importance, granularity=args.granularity, norm=args.norm,
                      targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()),
                      precursor=args.precursor, layer0=args.layer0, power=args.power, min_weight=args.min_weight,
                      residual=args.residual, gradient_at=args.gradient_at,
                      random_ratio=args.random_ratio, random_factor=args.random_factor,
                      seed=args.random_seed)


def quant_spec(args) -> QuantSpec:
    return QuantSpec(bits=args.bits, group_size=args.group_size, desc_act=args.desc_act and args.target not in ENGINES,
                     sym=args.sym, damp_percent=args.damp_percent, gptaq_alpha=args.gptaq_alpha, device=args.device,
                     dtype=args.dtype, target=args.target)


def run_quantize(args) -> int:
    cfg, spec = vlmq_config(args), quant_spec(args)  # validate settings before any heavy work
    if args.demo:
        from .synth.demo import run_demo

        check_demo_flags(args)
        out = Path(args.out or DEFAULT_DEMO_OUT)
        report_stale_staging(out, args.remove_stale)
        run_demo(out, spec, cfg, overwrite=args.overwrite, seed=args.seed)
        return 0
    missing = [flag for flag, value in (("--model", args.model), ("--calib", args.calib), ("--out", args.out))
               if not value]
    if missing:
        raise BadInput(f"{', '.join(missing)} required (or --demo for the built-in example).")
    from .model_dir import check_model_dir
    from .output_dir import check_output_dir, staged_output
    from .runner import quantize_to_dir

    config = check_model_dir(args.model)
    check_output_dir(args.out, args.overwrite)
    report_stale_staging(Path(args.out), args.remove_stale)
    max_length = family_of(config["model_type"]).calibration_length if args.max_length is None else args.max_length
    calib = load_calibration(args, max_length)
    with staged_output(args.out, args.overwrite) as stage:
        model = quantize_to_dir(args.model, calib, stage, spec, args.method, cfg)
    print_importance_summary(getattr(model, "vlmq_report", None))
    served = "GPTQModel" if spec.target not in ENGINES else f"GPTQModel and {ENGINE_VERSIONS}"
    print(f"wrote a standard GPTQ checkpoint (W{spec.bits} g{spec.group_size}, {args.method}) to {args.out}; "
          f"served by {served}")
    return 0


def run_inspect(args) -> int:
    from .inspect_g import check_png_out, check_request, conversation, read_image
    from .model_dir import check_model_dir, is_quantized

    cfg, spec = vlmq_config(args), quant_spec(args)  # validate settings before any heavy work
    config = check_model_dir(args.model)
    if is_quantized(config, args.model):
        raise BadInput(f"--model {args.model} is a quantized checkpoint; inspect quantizes, so give the "
                       "full-precision model it was made from.")
    layer, projection = check_request(config, args.layer, args.projection, cfg)
    if not args.question.strip():
        raise BadInput("--question is empty; give the text that follows the image.")
    image = read_image(args.image)
    out = check_png_out(args.out, args.overwrite)
    extra = []
    if args.calib:
        max_length = family_of(config["model_type"]).calibration_length if args.max_length is None else args.max_length
        extra = load_calibration(args, max_length)
    from .g_picture import draw_g, save_png
    from .inspect_g import run_and_capture, title

    sample = conversation(image, args.question, args.answer)
    g = run_and_capture(args.model, sample, spec, cfg, layer, projection, extra)
    save_png(draw_g(image, g.grid, g.vision, g.text, g.image_position,
                    title(g, spec, cfg, f"{Path(args.image).name}, {args.question!r}", 1 + len(extra))), out)
    hottest = max(range(len(g.vision)), key=g.vision.__getitem__)
    row, col = divmod(hottest, g.grid[1])
    print(f"wrote {out}: G at layer {layer} {projection} ({g.policy}) of a VLMQ run calibrated on the sample"
          f"{f' and {len(extra)} more' if extra else ' alone'}; hottest image patch: row {row}, column {col} of "
          f"{g.grid[0]}x{g.grid[1]} (g {g.vision[hottest]:.3g}; image mean {sum(g.vision) / len(g.vision):.3g})")
    return 0


def run_check(args) -> int:
    from .engines import check_engine_ready
    from .model_dir import read_config

    read_config(args.checkpoint, "checkpoint")
    check_engine_ready(args.checkpoint, args.target)
    print(f"{args.checkpoint}: ready for {args.target} ({ENGINE_VERSIONS})")
    return 0


def run_eval(args) -> int:
    from .synth.evaluation import evaluate_dir, resolve_model

    if args.n < 1:
        raise BadInput(f"--n {args.n}: evaluate at least one image")
    batch = {} if args.batch_size is None else {"batch_size": args.batch_size}
    result = evaluate_dir(resolve_model(args.model), n=args.n, seed=args.seed, reference_dir=args.reference, **batch)
    print(result.table())
    if args.json:
        Path(args.json).write_text(json.dumps(result.summary(), indent=2) + "\n")
    return 0


def print_importance_summary(report) -> None:
    """The per-layer G lines again, together at the end: during the run they are among GPTQModel's many."""
    if report:
        from .layer_importance import format_report

        print("token importance G per decoder layer (cv: how far from uniform; vis/txt: vision over text mean):")
        print("\n".join(format_report(layer) for layer in report))


def load_calibration(args, max_length: int) -> list:
    from transformers import AutoProcessor

    from .calibration import fit_to_length, load_records, records_to_conversations

    records = load_records(args.calib, split=args.split)
    if args.num_samples < len(records):
        records = records.select(sorted(random.Random(args.seed).sample(range(len(records)), args.num_samples)))
    conversations = records_to_conversations(records, image_root=args.image_root)
    kept, report = fit_to_length(conversations, AutoProcessor.from_pretrained(args.model), max_length)
    print(report)
    if not kept:
        shortest = (f" (the shortest vision segment ends at token {report.shortest_dropped})"
                    if report.shortest_dropped is not None else "")
        raise BadInput(f"no calibration sample fits --max-length {max_length}{shortest}; raise it.")
    return kept


def check_demo_flags(args) -> None:
    given = [dest for dest, default in args.demo_ignored_defaults.items() if getattr(args, dest) != default]
    if given:
        flags = ", ".join("--" + dest.replace("_", "-") for dest in given)
        raise BadInput(f"--demo uses the built-in model and calibration data and runs every method; drop {flags} "
                       "(or drop --demo).")


def report_stale_staging(out: Path, remove: bool) -> None:
    from .output_dir import stale_staging_dirs

    stale = stale_staging_dirs(out)
    if not stale:
        return
    names = ", ".join(p.name for p in stale)
    if remove:
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        print(f"removed {len(stale)} staging folders of killed runs beside {out}: {names}", file=sys.stderr)
    else:
        print(f"note: {len(stale)} staging folders of killed runs lie beside {out} ({names}); "
              "pass --remove-stale to delete them.", file=sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log = logging.getLogger("vlmq_gptqmodel")  # own handler: GPTQModel configures the root logger
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    signal.signal(signal.SIGTERM, _exit_on_signal)  # like SIGINT: unwind, so staging folders are removed
    try:
        return args.func(args)
    except BAD_INPUT_ERRORS as e:
        return _error(args, e, EXIT_BAD_INPUT)
    except (RunFailed, OSError) as e:
        return _error(args, e, EXIT_RUN_FAILED)
    except KeyboardInterrupt:
        return _error(args, "interrupted; nothing was written", 128 + signal.SIGINT)


def _error(args, error, code: int) -> int:
    print(f"vlmq {args.command}: error: {error}", file=sys.stderr)
    return code


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
