"""`vlmq quantize --demo`: quantize the demo VLM with GPTQ, GPTAQ and VLMQ on the same synthetic
calibration set and compare them against the full-precision model on held-out questions.

The demo VLM is the project's trained synthetic-world model, shipped as package data (tools/TRAINING.md)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from .compare import decoder_layers, layer_output_errors, top1_agreement
from ..config import VLMQConfig
from ..g_picture import draw_g, save_png
from ..g_record import GRecorder
from ..inspect_g import capture, default_layer, title
from .evaluation import (
    encode_scored, eval_samples, evaluate, load_for_eval, processor_image_size, questions_of, synthvlm_dir,
)
from ..output_dir import staged_output
from ..runner import QuantSpec, quantize_to_dir
from .world import calibration_conversations

log = logging.getLogger("vlmq_gptqmodel")
DEMO_CALIBRATION = 32
DEMO_EVAL_IMAGES = 40
LAYER_ERROR_QUESTIONS = 16


def run_demo(out: Path, spec: QuantSpec, vlmq: VLMQConfig, overwrite: bool = False,
             n_calib: int = DEMO_CALIBRATION, n_eval: int = DEMO_EVAL_IMAGES, seed: int = 0,
             model_dir: Path | None = None) -> dict:
    """model_dir: the FP model to quantize (default: the shipped synthetic-world VLM)."""
    model_dir = model_dir or synthvlm_dir()
    with staged_output(out, overwrite) as stage:
        # bf16 like the quantized models (TorchLinear runs in half precision): errors measure quantization only
        fp_model, processor = load_for_eval(model_dir, dtype=torch.bfloat16)
        size = processor_image_size(processor)
        calib = calibration_conversations(n_calib, seed, image_size=size)
        samples = eval_samples(n_eval, seed, image_size=size)
        error_batch, _ = encode_scored(processor, questions_of(samples)[:LAYER_ERROR_QUESTIONS])
        fp = evaluate(fp_model, processor, samples)
        rows = {"FP": {"accuracy": fp.accuracy, "agreement": 1.0, "kl": 0.0, "layers": None, "seconds": None}}
        methods = [("GPTQ", "gptq"), ("GPTAQ", "gptaq"), (f"VLMQ ({vlmq.precursor})", "vlmq")]
        # the VLMQ run keeps one layer's G, drawn for calibration sample 0 (what `vlmq inspect` draws)
        recorder = GRecorder(layers=(default_layer(len(decoder_layers(fp_model))),), projections=vlmq.targets[:1])
        for label, method in methods:
            log.info(f"demo: quantizing with {label} (W{spec.bits} g{spec.group_size}) ...")
            start = time.perf_counter()
            model = quantize_to_dir(model_dir, calib, stage / method, spec, method, vlmq,
                                    recorder if method == "vlmq" else None)
            seconds = time.perf_counter() - start
            if method == "vlmq":
                picture = draw_g_of_first_sample(model, recorder, calib[0], processor, spec, vlmq, stage)
            del model
            q_model, _ = load_for_eval(stage / method)
            result = evaluate(q_model, processor, samples, reference_logits=fp)
            rows[label] = {
                "accuracy": result.accuracy, "kl": result.mean_kl, "seconds": seconds,
                "agreement": top1_agreement(fp.answer_logprobs, result.answer_logprobs),
                "layers": layer_output_errors(fp_model, q_model, [error_batch]),
            }
            del q_model
    print(format_comparison(rows, spec, n_calib, len(fp.correct), out))
    print(f"G of calibration sample 0 in the VLMQ run drawn in {out / picture}")
    return rows


def draw_g_of_first_sample(model, recorder: GRecorder, sample: list, processor, spec: QuantSpec, vlmq: VLMQConfig,
                           stage: Path) -> str:
    """Draw the G the VLMQ run computed for `sample` (a calibration conversation) into the demo's folder."""
    (layer,), (projection,) = recorder.layers, recorder.projections
    g = capture(model, recorder, sample, layer, projection, processor.tokenizer)
    image = sample[0]["content"][0]["image"]
    name = f"g-layer{layer}-{projection}.png"
    save_png(draw_g(image, g.grid, g.vision, g.text, g.image_position,
                    title(g, spec, vlmq, "demo calibration sample 0", len(recorder.batches))), stage / name)
    return name


def format_comparison(rows: dict, spec: QuantSpec, n_calib: int, n_questions: int, out: Path) -> str:
    quantized = [k for k in rows if rows[k]["layers"] is not None]
    n_layers = len(rows[quantized[0]]["layers"])
    lines = [
        f"W{spec.bits} g{spec.group_size} act-order={spec.desc_act}, {n_calib} calibration images, "
        f"{n_questions} held-out questions",
        "",
        "relative output error of each decoder layer, ||h_q - h_fp||^2 / ||h_fp||^2 (lower is better):",
        "| layer | " + " | ".join(quantized) + " |",
        "|---|" + "---|" * len(quantized),
    ]
    for i in range(n_layers):
        lines.append(f"| {i} | " + " | ".join(f"{rows[k]['layers'][i]:.2e}" for k in quantized) + " |")
    lines += ["", "| model | exact match | top-1 agreement with FP | answer KL vs FP | quantize time |",
              "|---|---|---|---|---|"]
    for k, r in rows.items():
        secs = "" if r["seconds"] is None else f"{r['seconds']:.1f} s"
        lines.append(f"| {k} | {r['accuracy']:.3f} | {r['agreement']:.3f} | {r['kl']:.2e} | {secs} |")
    lines += ["", f"checkpoints (standard GPTQ) written to {out}/<method>/"]
    return "\n".join(lines)
