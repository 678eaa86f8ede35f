"""Layer 0 under VLMQ: the quantized-path input equals the FP input there, so the block gradient, and with it
G, is exactly zero. VLMQConfig.layer0 decides what happens instead: "uniform" quantizes layer 0 with G = I
(= the precursor), "rtn_probe" takes the gradient against a round-to-nearest copy of the block. This runs
both on the same model and calibration set and prints, per bit width, the G that layer 0 got (coefficient
of variation, vision/text mean ratio per projection) and every decoder layer's relative output error
||h_q - h_fp||^2 / ||h_fp||^2 against FP (both in bf16, as GPTQModel serves 2/3-bit checkpoints on CPU).

    python benchmarks/layer0.py                       # the shipped synthvlm, W3 and W2 -> results/layer0.md
    python benchmarks/layer0.py --model DIR --bits 3 --precursor gptq --out layer0.md
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import vlmq_gptqmodel  # noqa: F401  (registers method="vlmq")
from vlmq_gptqmodel.synth.compare import layer_output_errors
from vlmq_gptqmodel.config import LAYER0_POLICIES, PRECURSORS, VLMQConfig
from vlmq_gptqmodel.layer_importance import describe_projections
from vlmq_gptqmodel.synth.demo import LAYER_ERROR_QUESTIONS
from vlmq_gptqmodel.synth.evaluation import (encode_scored, eval_samples, load_for_eval, processor_image_size, questions_of,
                                       resolve_model)
from vlmq_gptqmodel.runner import QuantSpec, quantize_to_dir
from vlmq_gptqmodel.synth.world import calibration_conversations
from results_io import RESULTS, reproduce_line, write_text



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="FP model directory (default: the shipped synthvlm)")
    p.add_argument("--bits", default="3,2")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--calib", type=int, default=32, help="calibration images")
    p.add_argument("--precursor", choices=PRECURSORS, default="gptaq")
    p.add_argument("--dtype", default="float32", help="layer dtype while quantizing (auto = GPTQModel's choice)")
    p.add_argument("--out", default=str(RESULTS / "layer0.md"))
    args = p.parse_args()
    rows = []
    model_dir = resolve_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        fp_model, processor = load_for_eval(model_dir, dtype=torch.bfloat16)
        size = processor_image_size(processor)
        calib = calibration_conversations(args.calib, 0, image_size=size)
        batch, _ = encode_scored(processor, questions_of(eval_samples(8, image_size=size))[:LAYER_ERROR_QUESTIONS])
        for bits in (int(b) for b in args.bits.split(",")):
            for policy in LAYER0_POLICIES:
                out = Path(tmp) / f"w{bits}-{policy}"
                spec = QuantSpec(bits=bits, group_size=args.group_size, dtype=args.dtype)
                model = quantize_to_dir(model_dir, calib, out, spec, "vlmq",
                                        VLMQConfig(precursor=args.precursor, layer0=policy))
                report = model.vlmq_report[0]
                del model
                quantized, _ = load_for_eval(out)
                errors = layer_output_errors(fp_model, quantized, [batch])
                rows.append((bits, policy, report["policy"], "; ".join(describe_projections(report)), errors))
                del quantized
    n_layers = len(rows[0][4])
    lines = ["# Layer-0 policies\n",
             f"{model_dir.name}, VLMQ({args.precursor}) g{args.group_size}, {args.calib} calibration images (seed 0); "
             f"errors on {LAYER_ERROR_QUESTIONS} evaluation questions\n",
             "| bits | layer0 | what layer 0 used | layer-0 G per projection | "
             + " | ".join(f"error L{i}" for i in range(n_layers)) + " |",
             "|---|---|---|---|" + "---|" * n_layers]
    for bits, policy, used, g, errors in rows:
        lines.append(f"| W{bits} | {policy} | {used} | {g} | " + " | ".join(f"{e:.3e}" for e in errors) + " |")
    lines.append("\n" + reproduce_line("layer0.py") + "\n")
    text = "\n".join(lines)
    print(text)
    write_text(args.out, text)


if __name__ == "__main__":
    main()
