"""Train a text-only language model of the synthetic VLM's language-model size on real text (the Python
standard library's source; vlmq_gptqmodel/synth/text_lm.py), then report held-out perplexity under RTN and
the reference GPTQ (sequential, act-order, damp 0.01, g128) and, per linear, how many directions its inputs
span and GPTQ's layer error next to RTN W4's. The question (issue 15): do the synthetic worlds fail as
yardsticks because their templated language fills few directions, where real text fills many?

    python tools/text_lm_probe.py --out runs/textlm --report benchmarks/results/headroom/text-lm-4x256.md
    python tools/text_lm_probe.py --layers 8 --out runs/textlm8 --report ...
    python tools/text_lm_probe.py --device cuda --layers 8 --steps 4000 ...   # a lent GPU: benchmarks/gpu_check.sh --text-lm

Training resumes from OUT/ckpt.pt (the same command); its clock is carried across resumes.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from vlmq_gptqmodel.synth import text_lm

SETTINGS = ("rtn4", "rtn3", "rtn2", "gptq4", "gptq3", "gptq2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/textlm", help="tokenizer, token ids, checkpoint and log")
    p.add_argument("--report", default=None, help="also write the results table here (markdown, with a .json twin)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256, help="hidden size; the MLP is twice it, as synthvlm's")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=2048, help="byte-level BPE vocabulary size")
    p.add_argument("--seq", type=int, default=256, help="tokens per training and evaluation window")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=600,
                   help="training steps (cosine decay over them; resuming with another value reshapes the rest)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-minutes", type=float, default=60.0, help="stop training (and save) after this wall time")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--calib", type=int, default=128, help="calibration windows from the training text")
    p.add_argument("--eval-windows", type=int, default=96, help="held-out windows scored, spread evenly over the held-out text")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {','.join(SETTINGS)}")
    p.add_argument("--max-files", type=int, default=None, help="use only the first N files (tests)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device to train and score on (cpu, cuda, ...)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.settings.split(",")) - set(SETTINGS))
    if unknown:
        p.error(f"--settings {','.join(unknown)}: not one of {','.join(SETTINGS)}")
    if args.hidden % args.group_size:
        p.error(f"--group-size {args.group_size} must divide --hidden {args.hidden} (every linear's input width)")
    return args


def config(args, vocab_size: int):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads,
                       num_key_value_heads=args.kv_heads, max_position_embeddings=args.seq, tie_word_embeddings=False)


def corpus(args, out: Path):
    """Tokenizer and (train, held-out) token streams, built once and cached in OUT."""
    from tokenizers import Tokenizer

    files = text_lm.stdlib_files()[: args.max_files]
    train_texts, held_texts = text_lm.split_texts(files)
    if not held_texts:  # a short file list (tests) may hold none out by the hash: hold out its last file
        held_texts = train_texts[-1:]
        train_texts = train_texts[:-1]
    tokenizer_path, ids_path, made_with = out / "tokenizer.json", out / "ids.pt", out / "corpus.json"
    wanted = {"vocab": args.vocab, "max_files": args.max_files}
    if made_with.exists() and json.loads(made_with.read_text()) != wanted:
        raise SystemExit(f"{out} holds a corpus made with {made_with.read_text().strip()}, not {json.dumps(wanted)}: "
                         f"use another --out or the same --vocab/--max-files")
    made_with.write_text(json.dumps(wanted))
    if tokenizer_path.exists():
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    else:
        tokenizer = text_lm.train_bpe(train_texts, args.vocab)
        tokenizer.save(str(tokenizer_path))
    if ids_path.exists():
        train_ids, held_ids = torch.load(ids_path)
    else:
        train_ids, held_ids = text_lm.encode(tokenizer, train_texts), text_lm.encode(tokenizer, held_texts)
        torch.save((train_ids, held_ids), ids_path)
    return tokenizer, train_ids, held_ids, {"files": len(files), "held_out_files": len(held_texts),
                                            "train_tokens": len(train_ids), "held_out_tokens": len(held_ids)}


def train(args, out: Path, model, train_ids) -> dict:
    model.to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    checkpoint, state = out / "ckpt.pt", {"step": 0, "elapsed": 0.0}
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False, map_location=args.device)
        try:
            model.load_state_dict(saved["model"])
        except RuntimeError:
            raise SystemExit(f"{checkpoint} was trained with other sizes: use another --out or the same --layers, "
                             f"--hidden, --heads, --kv-heads") from None
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
    save = lambda: torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),  # noqa: E731
                               "state": state}, checkpoint)
    start = time.time() - state["elapsed"]
    model.train()
    with (out / "log.jsonl").open("a") as log:
        while state["step"] < args.steps and state["elapsed"] / 60 < args.max_minutes:
            step = state["step"]
            lr = args.lr * min(1.0, (step + 1) / 50) * (0.05 + 0.475 * (1 + math.cos(math.pi * step / args.steps)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = text_lm.windows(train_ids, args.batch_size, args.seq, seed=step).to(args.device)
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            state["step"] += 1
            state["elapsed"] = time.time() - start
            if state["step"] % 25 == 0 or state["step"] == args.steps:
                entry = {"step": state["step"], "loss": round(loss.item(), 4), "lr": lr,
                         "minutes": round(state["elapsed"] / 60, 2)}
                print(json.dumps(entry), file=log, flush=True)
                print(json.dumps(entry), flush=True)
            if state["step"] % 100 == 0:
                save()
    save()
    model.eval()
    return state


def evaluate(args, out: Path, train_ids, held_ids, vocab_size: int) -> dict:
    from transformers import Qwen2ForCausalLM

    def trained():
        model = Qwen2ForCausalLM(config(args, vocab_size))
        model.load_state_dict(torch.load(out / "ckpt.pt", weights_only=False, map_location="cpu")["model"])
        return model.to(args.device).eval()

    held = text_lm.spread_windows(held_ids, args.seq, args.eval_windows)
    calibration = text_lm.windows(train_ids, args.calib, args.seq, seed=12345)  # not a training step's seed
    results = {"FP": {"perplexity": text_lm.perplexity(trained(), held)}}
    for setting in args.settings.split(","):
        method, bits = setting[:-1], int(setting[-1])
        model = trained()
        rows = text_lm.quantize_sequentially(model, model.model.layers, calibration, method, bits,
                                              args.group_size)
        results[setting] = {"perplexity": text_lm.perplexity(model, held)}
        if rows:
            results[setting].update(
                participation=statistics.median(r["participation"] for r in rows),
                top_share=statistics.median(r["top_share"] for r in rows),
                error_over_rtn4=statistics.median(r["error"] / r["rtn4_error"] for r in rows))
        print(setting, json.dumps(results[setting]), flush=True)
    return results


def device_name(args) -> str:
    if args.device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(args.device))
    return f"the CPU ({args.threads} threads)"


def report(args, argv, results: dict, corpus_facts: dict, state: dict) -> str:
    fp = results["FP"]["perplexity"]
    lines = [
        f"# A text-only LM ({args.layers} layers x {args.hidden}, MLP {2 * args.hidden}) on the Python standard "
        f"library's source: held-out perplexity under rounding", "",
        "```", "python tools/text_lm_probe.py " + " ".join(argv), "```", "",
        f"Corpus: {corpus_facts['files']} files, {corpus_facts['train_tokens']:,} training tokens, "
        f"{corpus_facts['held_out_tokens']:,} held-out tokens ({corpus_facts['held_out_files']} files; byte-level "
        f"BPE, {args.vocab} tokens), of which {args.eval_windows} windows of {args.seq} spread evenly over the "
        f"held-out stream are scored. Trained {state['step']} steps of {args.batch_size} x {args.seq} tokens in "
        f"{state['elapsed'] / 60:.1f} min on {device_name(args)} (the last call's device, if resumed). Group size {args.group_size}; GPTQ = the reference GPTQ of "
        f"`vlmq_gptqmodel/synth/headroom.py` solved layer by layer on {args.calib} training windows. The last "
        "three columns are medians over the linears: participation ratio over width, the strongest input "
        "direction's share of the energy, GPTQ's layer error over RTN W4's on the same inputs.", "",
        "| setting | held-out perplexity | vs FP | participation / width | top share | error / RTN W4 |",
        "|---|---|---|---|---|---|",
    ]
    for setting, row in results.items():
        extra = (f"{row['participation']:.3f} | {row['top_share']:.2f} | {row['error_over_rtn4']:.2f}"
                 if "participation" in row else " | | ")
        lines.append(f"| {setting} | {row['perplexity']:.3f} | {100 * (row['perplexity'] / fp - 1):+.1f} % | {extra} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, train_ids, held_ids, facts = corpus(args, out)
    from transformers import Qwen2ForCausalLM

    state = train(args, out, Qwen2ForCausalLM(config(args, tokenizer.get_vocab_size())), train_ids)
    results = evaluate(args, out, train_ids, held_ids, tokenizer.get_vocab_size())
    text = report(args, sys.argv[1:] if argv is None else argv, results, facts, state)
    print(text)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(text)
        Path(args.report).with_suffix(".json").write_text(json.dumps(
            {"args": vars(args), "corpus": facts, "trained": state, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
