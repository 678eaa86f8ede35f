"""Per decoder linear of a trained synthetic VLM: how many directions its inputs span and how much of RTN's
error GPTQ removes (vlmq_gptqmodel/synth/headroom.py). A candidate yardstick needs GPTQ at 2 bits to do
clearly more harm than RTN at 4 bits; check a training run's checkpoint with this before a quality run. The
last column scores the same GPTQ weights on the text tokens alone: where vision tokens dominate H, GPTQ
may move its error onto the directions only the text tokens use, which is the harm VLMQ's weighting targets.

    python tools/headroom_probe.py --model /work/runs/deep2-model --samples 16
    python tools/headroom_probe.py --model synthvlm --out benchmarks/results/headroom/synthvlm.md
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

from vlmq_gptqmodel.families import family_of
from vlmq_gptqmodel.synth.evaluation import load_for_eval, processor_image_size, resolve_model, world_of
from vlmq_gptqmodel.synth.headroom import headroom_rows, input_moments
from vlmq_gptqmodel.synth.rtn_baseline import decoder_linears
from vlmq_gptqmodel.synth.world.samples import calibration_conversations


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="synthvlm", help="a shipped model's name or a model folder")
    p.add_argument("--samples", type=int, default=16, help="calibration conversations (image + caption)")
    p.add_argument("--seed", type=int, default=0, help="calibration seed")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = p.parse_args(argv)
    if args.samples < 1:
        p.error(f"--samples {args.samples}: use at least 1")
    return args


def table(rows: list[dict], command: str) -> str:
    lines = [f"`{command}`", "",
             "| linear | in | participation ratio | top direction | RTN W2 | GPTQ W2 | RTN W3 | GPTQ W3 | RTN W4 | "
             "GPTQ W2 / RTN W4 | on text tokens: GPTQ W2 / RTN W4 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['linear'].split('layers.')[-1]} | {r['in_features']} | {r['participation']:.1f} | {r['top_share']:.2f} | "
                     f"{r['rtn2']:.2e} | {r['gptq2']:.2e} | {r['rtn3']:.2e} | {r['gptq3']:.2e} | {r['rtn4']:.2e} | "
                     f"{r['gptq2'] / r['rtn4']:.2f} | {r['text_gptq2'] / r['text_rtn4']:.2f} |")
    median = lambda f: statistics.median(f(r) for r in rows)  # noqa: E731
    lines += ["", f"Medians over {len(rows)} linears: participation ratio / in_features "
                  f"{median(lambda r: r['participation'] / r['in_features']):.3f}; "
                  f"strongest direction's share of the input energy {median(lambda r: r['top_share']):.2f}; "
                  f"GPTQ removes {median(lambda r: r['rtn2'] / r['gptq2']):.0f}x of RTN's W2 error and "
                  f"{median(lambda r: r['rtn3'] / r['gptq3']):.0f}x of its W3 error; "
                  f"GPTQ W2 / RTN W4 = {median(lambda r: r['gptq2'] / r['rtn4']):.2f}, "
                  f"GPTQ W3 / RTN W4 = {median(lambda r: r['gptq3'] / r['rtn4']):.2f}; on the text tokens alone "
                  f"(GPTQ solved on all tokens) GPTQ W2 / RTN W4 = "
                  f"{median(lambda r: r['text_gptq2'] / r['text_rtn4']):.2f}, GPTQ W3 / RTN W4 = "
                  f"{median(lambda r: r['text_gptq3'] / r['text_rtn4']):.2f}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    model_dir = resolve_model(args.model)
    model, processor = load_for_eval(model_dir)
    widths = sorted({module.in_features for module in decoder_linears(model).values()})
    if args.group_size < 1 or any(width % args.group_size for width in widths):
        raise SystemExit(f"--group-size {args.group_size} does not divide the decoder linears' input widths "
                         f"{widths}; use a divisor of all of them (e.g. {math.gcd(*widths)}).")
    conversations = calibration_conversations(args.samples, seed=args.seed, image_size=processor_image_size(processor),
                                              world=world_of(model))
    batches = [processor(text=[processor.apply_chat_template(c, tokenize=False)],
                         images=[c[0]["content"][0]["image"]], return_tensors="pt") for c in conversations]
    image_token = family_of(model.config.model_type).image_token_id(model.config)
    text_moments = input_moments(model, batches, keep_token=lambda ids: ids != image_token)
    rows = headroom_rows(model, input_moments(model, batches), group_size=args.group_size, text_moments=text_moments)
    text = table(rows, "python tools/headroom_probe.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
