"""How close a model's answers are to flipping: exact match and teacher-forced answer margins per question kind and
per contrast of the item asked about (the faint worlds), on the selection split (never the evaluation split).

A question's margin is the smallest, over its answer tokens, of log p(gold) minus the largest other log p
(evaluation.answer_margins). A quantizer can only cost answers whose margins its error reaches: a yardstick with
headroom needs many answers right by about a nat or less (tools/TRAINING.md).

    python tools/answer_margins.py --model runs/faint-model --n 120
    python tools/answer_margins.py --model runs/faint-model --n 120 --out benchmarks/results/headroom/margins.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from vlmq_gptqmodel.synth.evaluation import (
    answer_margins, eval_samples, evaluate, load_for_eval, processor_image_size, questions_of, resolve_model, world_of,
)

CONTRAST_BUCKETS = (0.2, 0.4, 0.6, 0.8)  # upper edges; the last bucket runs to 1


def contrast_bucket(subject) -> str:
    contrast = getattr(subject, "contrast", None)
    if contrast is None:
        return "no item (count, caption)"
    low = max([0.0] + [edge for edge in CONTRAST_BUCKETS if contrast >= edge])
    high = min([1.0] + [edge for edge in CONTRAST_BUCKETS if contrast < edge])
    return f"contrast {low:.1f}-{high:.1f}"


def table(groups: dict[str, list[tuple[bool, float]]]) -> list[str]:
    lines = ["| group | questions | exact match | median margin (nats) | margin < 1 nat |", "|---|---|---|---|---|"]
    for name, rows in groups.items():
        margins = [m for _, m in rows]
        lines.append(f"| {name} | {len(rows)} | {sum(ok for ok, _ in rows) / len(rows):.3f} | "
                     f"{statistics.median(margins):.2f} | {sum(m < 1 for m in margins) / len(rows):.3f} |")
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="synthvlm", help="a shipped model's name or a model folder")
    p.add_argument("--n", type=int, default=60, help="selection-split images (about 3.3 questions each)")
    p.add_argument("--out", default=None, help="also write the tables (markdown) here")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n {args.n}: use at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    model_dir = resolve_model(args.model)
    model, processor = load_for_eval(model_dir)
    samples = eval_samples(args.n, world=world_of(model), image_size=processor_image_size(processor), split="select")
    questions = questions_of(samples)
    result = evaluate(model, processor, samples)
    margins = answer_margins(result.answer_logprobs, questions, processor.tokenizer)
    by_kind, by_contrast = defaultdict(list), defaultdict(list)
    for question, ok, margin in zip(questions, result.correct, margins):
        by_kind[question.qa.kind].append((ok, margin))
        by_contrast[contrast_bucket(question.qa.subject)].append((ok, margin))
    command = "python tools/answer_margins.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([f"{model_dir}: {len(questions)} questions of {args.n} selection-split images "
                      f"(world {world_of(model)!r})", "", *table(dict(sorted(by_kind.items()))), "",
                      *table(dict(sorted(by_contrast.items()))), "", f"reproduce: `{command}`"])
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
