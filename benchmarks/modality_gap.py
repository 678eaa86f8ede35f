"""The modality gap of a synthetic-world VLM (the paper's Fig. 2 and §3): how far apart vision and text tokens
sit in the language model's hidden states, layer by layer, and how over-represented vision tokens are.

On calibration samples (captioned images of the model's world, as the quantizers see them) it reports per
layer input (0 = embeddings; the last row is after the final norm) the mean hidden-state norm of vision and of text tokens, and the separation:
the distance between the two modality means over the mean within-modality spread (root mean squared
distance of a token to its own modality's mean). A separation well above 1 means the modalities form two
clouds; the PNG shows them in the first two principal components at three depths.

    python benchmarks/modality_gap.py                       # the shipped synthvlm
    python benchmarks/modality_gap.py --model DIR --samples 32
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vlmq_gptqmodel.families import family_of
from vlmq_gptqmodel.synth.evaluation import load_for_eval, processor_image_size, resolve_model, world_of
from vlmq_gptqmodel.synth.world import calibration_conversations
from results_io import RESULTS as RESULTS_ROOT, reproduce_line, write_text

RESULTS = RESULTS_ROOT / "modality_gap"


def modality_statistics(hidden: torch.Tensor, vision: torch.Tensor) -> dict:
    """hidden [N, D] token states, vision [N] bool. Norms, separation and the token counts."""
    h = hidden.double()
    v, t = h[vision], h[~vision]
    mean_v, mean_t = v.mean(0), t.mean(0)
    spread = 0.5 * ((v - mean_v).pow(2).sum(-1).mean().sqrt() + (t - mean_t).pow(2).sum(-1).mean().sqrt())
    return {"vision_norm": float(v.norm(dim=-1).mean()), "text_norm": float(t.norm(dim=-1).mean()),
            "separation": float((mean_v - mean_t).norm() / spread), "vision_tokens": int(vision.sum()),
            "text_tokens": int((~vision).sum())}


@torch.no_grad()
def hidden_states(model, processor, conversations) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per layer input (embeddings, then each decoder layer's output): every token's state [N, D], and a
    vision mask [N]; samples one at a time (no padding)."""
    image_token = family_of(model.config.model_type).image_token_id(model.config)
    layers, vision = None, []
    for conversation in conversations:
        text = processor.apply_chat_template(conversation, tokenize=False)
        images = [part["image"] for turn in conversation for part in turn["content"] if part["type"] == "image"]
        batch = processor(text=[text], images=images, return_tensors="pt")
        states = model(**batch, output_hidden_states=True).hidden_states
        layers = [[] for _ in states] if layers is None else layers
        for i, s in enumerate(states):
            layers[i].append(s[0].float())
        vision.append(batch["input_ids"][0] == image_token)
    return [torch.cat(per_layer) for per_layer in layers], torch.cat(vision)


def pca_chart(states: list[torch.Tensor], vision: torch.Tensor, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted({1, len(states) // 2, len(states) - 1})
    fig, axes = plt.subplots(1, len(depths), figsize=(5 * len(depths), 4.4), squeeze=False)
    for ax, depth in zip(axes[0], depths):
        h = states[depth].double()
        centred = h - h.mean(0)
        _, _, vt = torch.linalg.svd(centred, full_matrices=False)
        xy = (centred @ vt[:2].T).numpy()
        ax.scatter(*xy[vision.numpy()].T, s=3, alpha=0.35, label="vision tokens", color="tab:orange")
        ax.scatter(*xy[~vision.numpy()].T, s=3, alpha=0.6, label="text tokens", color="tab:blue")
        last = " (after the final norm)" if depth == len(states) - 1 else ""
        ax.set_title(f"output of decoder layer {depth - 1}{last}" if depth else "embeddings")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    axes[0][0].legend(markerscale=4)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="FP model directory (default: the shipped synthvlm)")
    p.add_argument("--samples", type=int, default=32, help="calibration samples (captioned images)")
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.samples < 1:
        raise SystemExit("--samples must be at least 1")
    model_dir = resolve_model(args.model)
    model, processor = load_for_eval(model_dir)
    world = world_of(model)
    conversations = calibration_conversations(args.samples, seed=0, image_size=processor_image_size(processor),
                                              world=world)
    states, vision = hidden_states(model, processor, conversations)
    stats = [modality_statistics(s, vision) for s in states]
    name = model_dir.name
    ratio = stats[0]["vision_tokens"] / stats[0]["text_tokens"]
    lines = [f"# Modality gap of {name}\n",
             f"{args.samples} calibration samples of world {world!r}: {stats[0]['vision_tokens']} vision and "
             f"{stats[0]['text_tokens']} text tokens ({ratio:.1f} vision tokens per text token).\n",
             "| input of layer | vision norm | text norm | separation (mean distance / spread) |", "|---|---|---|---|"]
    for i, s in enumerate(stats):
        where = "0 (embeddings)" if i == 0 else (str(i) if i < len(stats) - 1 else f"{i} (last layer output, after the final norm)")
        lines.append(f"| {where} | {s['vision_norm']:.2f} | {s['text_norm']:.2f} | {s['separation']:.2f} |")
    lines.append("\n" + reproduce_line("modality_gap.py", argv) + "\n")
    results = Path(args.results)
    write_text(results / f"{name}.md", "\n".join(lines))
    pca_chart(states, vision, results / f"{name}.png", f"{name}: hidden states, first two principal components")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
