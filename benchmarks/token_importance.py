"""Does VLMQ's token importance find the salient tokens of the shipped model?

VLMQ rests on a premise: most vision tokens are redundant, and the block gradient g marks the few that
matter. The synthetic world knows which image tokens hold an object or a glyph (world.render.tile_labels)
and which are plain background, so the premise can be checked directly. This quantizes the shipped model
with VLMQ (the pipeline's own run, which also records its G statistics), recomputes the per-token G of
every decoder layer >= 1 from the same two streams (FP inputs, and the inputs the quantized layers
produce), and reports per layer and projection:

- vis/txt: mean g of vision tokens over mean g of text tokens;
- obj/bg: mean g of the image tokens that hold an object or glyph over that of background image tokens;
- top-k: share of the k highest-g image tokens of each sample that hold an item (k = items in the image;
  the share of item tokens among image tokens is what a random ranking gets);
- bg H share: the background tokens' share of the Hessian weight sum(g^2), against their share under G = I;
- eff. tokens: Kish's effective sample size of the Hessian weights, (sum g^2)^2 / sum g^4 (every token under
  G = I): how many calibration tokens the weighted Hessian effectively rests on.

The FastV-style attention score (importance="attention") gets the same columns, as a second opinion.

    python benchmarks/token_importance.py                  # shipped model, W2 g128, VLMQ(gptaq), calib seed 0
    python benchmarks/token_importance.py --bits 3 --group-size 32 --precursor gptq
"""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

import vlmq_gptqmodel  # noqa: F401  (registers method="vlmq")
from vlmq_gptqmodel.families import family_of
from vlmq_gptqmodel.synth.compare import decoder_layers
from vlmq_gptqmodel.config import PRECURSORS, VLMQConfig
from vlmq_gptqmodel.synth.dequantized import load_dequantized
from vlmq_gptqmodel.synth.evaluation import load_for_eval, processor_image_size, resolve_model
from vlmq_gptqmodel.importance import effective_tokens
from vlmq_gptqmodel.layer_importance import LayerStreams, layer_importance
from vlmq_gptqmodel.runner import QuantSpec, quantize_to_dir
from vlmq_gptqmodel.synth.world import make_samples
from vlmq_gptqmodel.synth.world.render import tile_labels
from vlmq_gptqmodel.synth.world.samples import caption_conversation
from results_io import RESULTS, reproduce_line, write_text



@torch.no_grad()
def layer_inputs(model, batches) -> list[list[tuple]]:
    """Per decoder layer, per batch: (input hidden states, position embeddings), as the layer received them."""
    layers = decoder_layers(model)
    seen = [[] for _ in layers]

    def keeper(index):
        def keep(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen[index].append((hidden.float().clone(), tuple(t.clone() for t in kwargs["position_embeddings"])))
        return keep

    handles = [layer.register_forward_pre_hook(keeper(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for batch in batches:
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return seen


def token_classes(batch, scene, image_token_id: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(vision [1, S], item [1, S]) masks: image tokens, and those of them that hold an object or glyph."""
    vision = batch["input_ids"] == image_token_id
    holds = torch.from_numpy(tile_labels(scene, image_size).any(axis=1))
    if int(vision.sum()) != len(holds):
        raise ValueError(f"{int(vision.sum())} image tokens but {len(holds)} tiles: the processor's image size "
                         "does not match the world's tile grid")
    item = torch.zeros_like(vision)
    item[vision] = holds
    return vision, item


def structure(g: list[torch.Tensor], vision: list[torch.Tensor], item: list[torch.Tensor]) -> dict:
    """The columns of the table for one projection's G (one [1, S] tensor per sample)."""
    g_all, v_all, i_all = (torch.cat([t.flatten() for t in ts]) for ts in (g, vision, item))
    g_all = g_all.float()
    background = v_all & ~i_all
    hits, ks = 0, 0
    for gs, vs, its in zip(g, vision, item):
        k = int(its.sum())
        if k:
            top = gs[vs].topk(k).indices
            hits, ks = hits + int(its[vs][top].sum()), ks + k
    h = g_all.pow(2)
    return {
        "vis/txt": float(g_all[v_all].mean() / g_all[~v_all].mean()),
        "obj/bg": float(g_all[i_all].mean() / g_all[background].mean()),
        "top-k": hits / ks,
        "bg H share": float(h[background].sum() / h.sum()),
        "eff. tokens": effective_tokens(g_all),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="FP model directory (default: the shipped synthvlm)")
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--precursor", choices=PRECURSORS, default="gptaq")
    p.add_argument("--calib", type=int, default=64, help="calibration images (the quality benchmark's default)")
    p.add_argument("--seed", type=int, default=0, help="calibration seed")
    p.add_argument("--out", default=str(RESULTS / "token_importance.md"))
    args = p.parse_args()

    model_dir = resolve_model(args.model)
    fp_model, processor = load_for_eval(model_dir)
    size = processor_image_size(processor)
    samples = make_samples("calib", args.calib, args.seed, image_size=size)
    conversations = [caption_conversation(s) for s in samples]
    # GPTQModel's calibration text ends with a generation prompt; the same tokens here give the same streams
    batches = [processor(text=[processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True)],
                         images=[s.image], return_tensors="pt") for c, s in zip(conversations, samples)]
    image_token_id = family_of(fp_model.config.model_type).image_token_id(fp_model.config)
    classes = [token_classes(b, s.scene, image_token_id, size) for b, s in zip(batches, samples)]  # before quantizing
    vision, item = [c[0] for c in classes], [c[1] for c in classes]
    cfg = VLMQConfig(precursor=args.precursor)
    with tempfile.TemporaryDirectory() as tmp:
        spec = QuantSpec(bits=args.bits, group_size=args.group_size, dtype="float32")
        run = quantize_to_dir(model_dir, conversations, Path(tmp), spec, "vlmq", cfg)
        pipeline_report = {r["layer"]: r for r in run.vlmq_report}
        del run
        q_model = load_dequantized(tmp, fp_model)
    fp_in, q_in = layer_inputs(fp_model, batches), layer_inputs(q_model, batches)

    item_share = float(sum(i.sum() for i in item) / sum(v.sum() for v in vision))
    uniform_bg = float(sum((v & ~i).sum() for v, i in zip(vision, item)) / sum(v.numel() for v in vision))
    rows, cv_gap = [], 0.0
    for index, layer in enumerate(decoder_layers(fp_model)):
        if index == 0:  # X_hat == X: the gradient is zero and VLMQConfig.layer0 decides (benchmarks/layer0.py)
            continue
        streams = LayerStreams(fp=[x for x, _ in fp_in[index]], quant=[x for x, _ in q_in[index]],
                               position_embeddings=[pe for _, pe in fp_in[index]], keep=[None] * len(batches),
                               vision=vision)
        weights, report = layer_importance(cfg, layer, index, streams, torch.device("cpu"))
        for name, g in weights.items():
            ours, pipeline = report["projections"][name]["cv"], pipeline_report[index]["projections"][name]["cv"]
            cv_gap = max(cv_gap, abs(ours - pipeline) / max(pipeline, 1e-6))  # relative: cv reaches ~7 here
            rows.append((index, f"gradient {name}", structure(g, vision, item)))
        attention, _ = layer_importance(replace(cfg, importance="attention"), layer, index, streams, torch.device("cpu"))
        rows.append((index, "attention (FastV)", structure(next(iter(attention.values())), vision, item)))

    tokens = sum(v.numel() for v in vision)
    columns = ["vis/txt", "obj/bg", "top-k", "bg H share", "eff. tokens"]
    lines = [
        "# Token importance on synthvlm: does G find the salient image tokens?\n",
        f"VLMQ({args.precursor}) W{args.bits} g{args.group_size}, {args.calib} calibration images (seed {args.seed}), "
        f"{tokens} tokens, {int(sum(v.sum() for v in vision))} of them image tokens. {item_share:.3f} of the image "
        f"tokens hold an object or glyph (the top-k share of a random ranking); background image tokens are "
        f"{uniform_bg:.3f} of all tokens (their bg H share under G = I). G recomputed here from the quantized "
        f"run's streams; its coefficient of variation differs from the pipeline's own report by at most "
        f"{cv_gap:.2%} (relative).\n",
        "| layer | source | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for index, source, stats in rows:
        lines.append(f"| {index} | {source} | " + " | ".join(f"{stats[c]:.0f}" if c == "eff. tokens" else f"{stats[c]:.3f}"
                                                             for c in columns) + " |")
    lines.append("\n" + reproduce_line("token_importance.py") + "\n")
    text = "\n".join(lines)
    write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
