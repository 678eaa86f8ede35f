"""Train the synthetic-world VLM (shipped as vlmq_gptqmodel/synth/assets/synthvlm) from scratch on CPU.

A Qwen2-VL model (transformers' own class) learns the synthetic world through a curriculum: one big shape
and "what colour / what shape" first, then two or three objects of both sizes (the object asked about
has to be found among them), then the final distribution with position and text questions and
captions (world.STAGES). A stage ends when held-out accuracy on its questions reaches
--advance-at (or after --max-stage-steps); each batch replays earlier stages so nothing is forgotten.
Validation uses a separate seed of the train split; the evaluation split is never looked at here.

    python tools/train_synthvlm.py --out runs/synthvlm --export runs/synthvlm-model   # resumes from OUT/ckpt.pt

With the defaults this trained the shipped model in one run of 38 minutes on 2 CPU cores (1,500 steps): 0.955
exact match on the evaluation split, 0.924 after 2-bit round-to-nearest. At lr 1e-3 the same recipe reached
0.988, but 2-bit rounding did not change its answers, so it could not rank quantizers (tools/TRAINING.md).
Runs are not bit-identical on CPU: check a retrained model's RTN grid before using it as a yardstick.

A training-only auxiliary loss (--tile-loss) asks linear heads on the vision tower's merged tokens what each
token holds (colour, shape, size, glyph and its place in the text, or nothing) and which tile it is; the
heads are not exported, so the shipped model is a plain Qwen2-VL.

Two more training-only losses (--bind-loss) supervise attention in the language model, at the position that
predicts each answer word: head 0 of the layer before --bind-layer should attend to the question's words
that name the object asked about ("red" in "what shape is the red object ?"), and head 0 of --bind-layer
to that object's image token (for text, to the glyph being read). Finding the object is the step the
answer loss alone did not teach in thousands of steps (tools/TRAINING.md); the exported model is an
ordinary Qwen2-VL, only its weights learned it.

A last training-only loss (--read-loss) puts the tile probe's heads on the residual stream after --bind-layer,
at those same answer positions: it must hold what the read token holds (its colour, shape, size, glyph) and
which tile that is. Without it the read hop copied the object's colour and shape but not its place, and
position questions stayed at 0.4-0.5 (tools/TRAINING.md).

In the names world --copy-readout reads the residual stream after the copy layer (--bind-layer + 1) at the
positions predicting a name through the model's own final norm and the names' output rows, and asks for the
right name: the copy head's attention alone (--copy-loss) found the name but did not carry which name it was.

--spread-loss penalises the mean squared cosine similarity between tokens' residual vectors at every decoder
layer's input. Trained without it, layer 0 writes one large vector shared by every token (norm ~1000 against
embeddings of ~1), so the inputs of every linear span a few directions: GPTQ then hides nearly all rounding error
where no input looks and cannot lose accuracy (tools/TRAINING.md), and a token's own identity is drowned.
--spread-at linears applies it to the inputs of the linears themselves instead (what GPTQ's H is made of).

--text-vocab/--text-steps/--text-rows make the language model a language model of real text first: the world's
templated language alone left every linear's inputs spanning a few directions, where GPTQ hides its rounding error,
while a text-only LM of the same size trained on the Python standard library's source did not (tools/TRAINING.md).
The stdlib's most frequent words join the vocabulary, the language model trains on that text alone for
--text-steps, then every curriculum step adds --text-rows text windows to its image rows.

--fact-rows R teaches a facts world's table (vlmq_gptqmodel/synth/world/facts.py) from text alone: every step adds
R windows of its entries ("9 6 A means w0412 , ...") whose meaning words are targets, as a language model learns
facts from its pretraining text; the images then ask what their text means.

Every --eval-every steps it logs the current stage's teacher-forced exact match on the validation set (what
advancing a stage needs); every --report-every steps and at the end, per-kind exact match on the current and the
final stage, and the same with every image replaced by an empty background (if the model ignored the image,
blanking would not change its accuracy). Logs go to OUT/log.jsonl; a checkpoint is kept at OUT/ckpt.pt, and the
one taken as the final stage began at OUT/final-stage.pt: copied to another run's OUT/ckpt.pt, the same command with
another --final-steps trains a different final stage without repeating what came before.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from vlmq_gptqmodel.families import QWEN_VL
from vlmq_gptqmodel.synth import text_lm, tiny_vlm
from vlmq_gptqmodel.synth.evaluation import evaluate
from vlmq_gptqmodel.synth.world import (
    WORLDS, Scene, assistant_turn, final_stage, make_sample, user_turn,
)
from vlmq_gptqmodel.synth.world.render import TILE_ATTRIBUTES, TOKEN_PIXELS, item_tiles, render_scene, tile_labels
from vlmq_gptqmodel.synth.world.facts import FactTable
from vlmq_gptqmodel.synth.world.scene import SceneText, get_stage
from vlmq_gptqmodel.synth.world.vocab import NAMES

SIZES = tiny_vlm.SYNTHVLM_SIZES
VALIDATION_SEED = 1  # train split, seed 1: disjoint from the training stream (seed 0) and from eval
ARCH = tiny_vlm.SYNTHVLM_ARCH
SPREAD_TOKENS = 512  # tokens per step whose residual vectors --spread-loss compares (a 512 x 512 Gram per layer)
FINAL_STAGE_CKPT = "final-stage.pt"  # OUT/ckpt.pt as the final stage began: copy it to another OUT/ckpt.pt to branch


# Named recipes: each sets the defaults below (explicit flags still win). "synthvlm" is the shipped 4-layer
# model; "deep" is the headroom yardstick (synthvlm-deep): 8 layers, 392 px images (196 image tokens, about
# five times a caption's text tokens) and the deep world's longer texts and busier scenes.
PRESETS = {
    "synthvlm": {},
    "deep": dict(world="deep", image_size=WORLDS["deep"].image_size, layers=8, batch_size=24,
                 max_stage_steps=400, max_minutes=170.0, out="runs/deep"),
    # the deep model's sizes in the names world (many token identities in every prompt; vocab.py), with the
    # copy hop supervised
    "names": dict(world="names", image_size=WORLDS["names"].image_size, layers=8, batch_size=24,
                  max_stage_steps=400, max_minutes=170.0, copy_loss=1.0, out="runs/names"),
}
# the deep recipe in the faint world (items at low contrast in the final stage: answers with small margins)
PRESETS["faint"] = dict(PRESETS["deep"], world="faint", out="runs/faint")
# the deep recipe in the deep-facts world, with a language model of real text that also learns the world's table
# of facts from text (from its first step): stored knowledge, what 2-bit rounding destroys first (tools/TRAINING.md)
# (700 text steps of 48 table windows: with 16 a from-scratch run was still at chance after 600 steps, and with
# 450 text steps the table had not left chance at step 400; TRAINING.md)
PRESETS["facts"] = dict(PRESETS["deep"], world="deep-facts", text_vocab=4000, text_steps=700, text_pretrain_rows=16,
                        fact_pretrain_rows=48, text_rows=4, fact_rows=8, final_steps=1000, max_minutes=300.0,
                        out="runs/facts")
# the facts recipe with the deep-recall world's final stage (position, text and meaning questions only, a text in
# every image): on the facts model, colour and shape answers never flipped under rounding (TRAINING.md)
PRESETS["recall"] = dict(PRESETS["facts"], world="deep-recall", out="runs/recall")
# the shipped synthvlm-recall: a facts export (the facts recipe, 9.9 min on one H200) fine-tuned into the deep-recall
# world's final stage, `--preset recall-ft --init-from <facts export>` (48 min on 2 CPU cores; tools/TRAINING.md). Its
# meanings learned in 400 steps at a quarter of the learning rate: the recall recipe run longer gave a model that
# GPTQ hurt less (benchmarks/results/quality/deep-recall-gpu-select)
PRESETS["recall-ft"] = dict(PRESETS["recall"], init_stage=4, text_steps=0, lr=5e-4, warmup=20, final_steps=400,
                            eval_every=50, out="runs/recall-ft")
# Recipes of several presets, run one after another by one command: each part trains in OUT/<preset> (resuming
# from its own checkpoint) and starts from the previous part's export; the last part exports to --export (default
# OUT/model). synthvlm-recall: the shipped synthvlm-recall from scratch.
CHAINS = {"synthvlm-recall": ("facts", "recall-ft")}
CHAIN_OWN = ("--init-from", "--init-stage", "--export-only")  # flags a chain sets per part itself


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=tuple(PRESETS) + tuple(CHAINS), default="synthvlm",
                   help="a named recipe that sets the defaults of the other flags (synthvlm: the shipped model; "
                        "deep: the 8-layer, 196-image-token headroom model; names: deep's sizes in the names world; "
                        "faint: deep's recipe in the faint world; facts: deep's recipe in the deep-facts world, with "
                        "a language model of real text that learns the world's facts from text; recall: facts' recipe in the "
                        "deep-recall world; recall-ft: the shipped synthvlm-recall, a facts export given by --init-from "
                        "fine-tuned into the deep-recall world; synthvlm-recall: facts then recall-ft in one command, "
                        "the shipped synthvlm-recall from scratch, other flags applying to both parts)")
    p.add_argument("--world", choices=tuple(WORLDS), default="synthvlm",
                   help="which synthetic world to learn (its final stage is the evaluation distribution; "
                        "world/scene.py says what each is)")
    p.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda, ...)")
    p.add_argument("--out", default="runs/synthvlm")
    p.add_argument("--export", default=None, help="write the final model (fp16, save_pretrained) here")
    p.add_argument("--export-only", action="store_true", help="export OUT/ckpt.pt to --export without training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=WORLDS["synthvlm"].image_size)
    p.add_argument("--hidden", type=int, default=SIZES["hidden_size"])
    p.add_argument("--layers", type=int, default=SIZES["num_hidden_layers"])
    p.add_argument("--heads", type=int, default=SIZES["num_attention_heads"])
    p.add_argument("--kv-heads", type=int, default=SIZES["num_key_value_heads"])
    p.add_argument("--intermediate", type=int, default=SIZES["intermediate_size"])
    p.add_argument("--vision-depth", type=int, default=SIZES["vision_depth"])
    p.add_argument("--vision-hidden", type=int, default=SIZES["vision_hidden"])
    p.add_argument("--vision-heads", type=int, default=SIZES["vision_heads"])
    p.add_argument("--batch-size", type=int, default=48, help="rows (single-question conversations) per step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--tile-loss", type=float, default=1.0,
                   help="weight of the per-token auxiliary loss on the vision tower's output (0: off)")
    p.add_argument("--bind-loss", type=float, default=1.0,
                   help="weight of each of the two attention-supervision losses (0: off)")
    p.add_argument("--bind-layer", type=int, default=1,
                   help="language-model layer whose head 0 reads the subject's image token; head 0 of the layer "
                        "before it gathers the question's words naming the subject")
    p.add_argument("--read-loss", type=float, default=1.0,
                   help="weight of the probe that reads the read token's labels and tile off the residual stream "
                        "after --bind-layer (0: off; needs --bind-loss > 0)")
    p.add_argument("--copy-loss", type=float, default=0.0,
                   help="weight of a third attention-supervision loss (names world): head 0 of the layer after "
                        "--bind-layer should attend, from the position predicting a name, to that name in the "
                        "prompt's list (0: off)")
    p.add_argument("--copy-readout", type=float, default=0.0,
                   help="weight of a readout of the residual stream after that copy layer, through the model's "
                        "final norm and the names' output rows, asking for the right name (0: off; needs "
                        "--copy-loss > 0)")
    p.add_argument("--spread-loss", type=float, default=0.0,
                   help="weight of the mean squared cosine similarity between the residual vectors of sampled "
                        "tokens at every decoder layer's input, the inverse participation ratio of their "
                        "normalised second moment (0: off)")
    p.add_argument("--spread-at", choices=("residual", "linears"), default=None,
                   help="where --spread-loss looks: each decoder layer's input (the default), or each distinct input of its "
                        "linears (the attention and MLP inputs after their norms, o_proj's and down_proj's)")
    p.add_argument("--text-vocab", type=int, default=0, metavar="N",
                   help="add the N most frequent words of the Python standard library's source (the text of "
                        "--text-steps/--text-rows) to the vocabulary")
    p.add_argument("--text-steps", type=int, default=0,
                   help="train the language model on that text alone for this many steps before the curriculum")
    p.add_argument("--text-rows", type=int, default=0,
                   help="text windows added to every curriculum step (next-word loss): keeps the language model a "
                        "language model while it learns the world")
    p.add_argument("--text-pretrain-rows", type=int, default=32, help="text windows per --text-steps step")
    p.add_argument("--text-length", type=int, default=128, help="words per text window")
    p.add_argument("--text-loss", type=float, default=1.0, help="weight of the text rows' loss in curriculum steps")
    p.add_argument("--fact-rows", type=int, default=0,
                   help="windows of the facts world's table (--text-length words each) added to every step")
    p.add_argument("--fact-pretrain-rows", type=int, default=None,
                   help="table windows per --text-steps step (default: --fact-rows): the cheap text-only steps are "
                        "where a from-scratch run learns the table")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start a new run from another run's checkpoint, or from an exported model folder (e.g. the "
                        "shipped vlmq_gptqmodel/synth/assets/synthvlm), instead of a fresh model: its language and "
                        "vision weights (words this world adds to the vocabulary get rows as load_overlapping says); "
                        "training starts at --init-stage (ignored once OUT/ckpt.pt exists)")
    p.add_argument("--init-stage", type=int, default=1, help="the curriculum stage an --init-from run starts at")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--replay", type=float, default=0.3, help="share of each batch drawn from earlier stages")
    p.add_argument("--caption-probability", type=float, default=0.3,
                   help="share of images whose question pool includes the caption, in stages that train captions")
    p.add_argument("--advance-at", type=float, default=0.9, help="validation accuracy that ends a stage")
    p.add_argument("--max-stage-steps", type=int, default=300)
    p.add_argument("--final-steps", type=int, default=1100, help="steps in the last stage (cosine LR decay)")
    p.add_argument("--max-minutes", type=float, default=55.0, help="stop (and save) after this wall time")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--report-every", type=int, default=500,
                   help="steps between full validation reports (final stage, blanked images); the --eval-every "
                        "validations in between score the current stage alone")
    p.add_argument("--val-samples", type=int, default=40)
    p.add_argument("--data-workers", type=int, default=0,
                   help="processes that prepare the next steps' batches (rendering, processor, targets) while this "
                        "one trains: about 0.5 s of one core per step, more than a GPU step; the same batches "
                        "whatever the number (0: prepare each step here)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads; use 1 when other jobs share the cores (2 threads then wait on each other)")
    p.add_argument("--bf16", action="store_true",
                   help="bf16 autocast: faster only on CPUs with bf16 matrix units (AVX512-BF16/AMX); on an "
                        "AVX2-only CPU one step took 37-50 s instead of 1.4 s in fp32")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the MLPs of the vision tower and the language model (their elementwise "
                        "ops fused: about 9%% off a CPU step, tools/TRAINING.md); on a CPU it needs a C++ compiler")
    preset, _ = p.parse_known_args(argv)
    if preset.preset in CHAINS:
        raise SystemExit(f"--preset {preset.preset} runs the presets {CHAINS[preset.preset]} one after another: "
                         f"run it through main(), not parse_args()")
    p.set_defaults(**PRESETS[preset.preset])
    args = p.parse_args(argv)
    args.fact_pretrain_rows = args.fact_rows if args.fact_pretrain_rows is None else args.fact_pretrain_rows
    # Checked here, before --out is created: a refused run leaves nothing behind.
    for flag in ("eval_every", "report_every"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} {getattr(args, flag)}: it counts steps between validations; "
                             f"give 1 or more")
    if args.bind_loss > 0 and not 1 <= args.bind_layer < args.layers:
        raise SystemExit(f"--bind-layer {args.bind_layer} does not fit a {args.layers}-layer language model: the "
                         f"layer before it gathers the question's words, so use 1..{args.layers - 1}, or --bind-loss 0")
    if args.copy_loss > 0 and not (args.bind_loss > 0 and args.bind_layer + 1 < args.layers):
        raise SystemExit(f"--copy-loss supervises the layer after --bind-layer {args.bind_layer}: it needs "
                         f"--bind-loss > 0 and --bind-layer below {args.layers - 1}")
    if args.copy_readout > 0 and not args.copy_loss > 0:
        raise SystemExit("--copy-readout reads the copy layer's output where the copy hop's targets are: it needs "
                         "--copy-loss > 0 (the names world's preset sets it)")
    if args.spread_at and not args.spread_loss > 0:
        raise SystemExit(f"--spread-at {args.spread_at} says where --spread-loss looks, but --spread-loss is "
                         f"{args.spread_loss}: give --spread-loss W > 0 too, or drop --spread-at")
    args.spread_at = args.spread_at or "residual"
    negative = [f"--{name.replace('_', '-')} {getattr(args, name)}" for name in ("text_vocab", "text_steps", "text_rows",
                                                                               "fact_rows", "fact_pretrain_rows")
                if getattr(args, name) < 0] + [f"--{name.replace('_', '-')} {getattr(args, name)}"
                                               for name in ("text_pretrain_rows", "text_length") if getattr(args, name) < 1]
    if negative:
        raise SystemExit(f"{negative[0]} is out of range: the --text-* and --fact-* counts are whole numbers, 0 (off) or more, and "
                         f"--text-pretrain-rows/--text-length at least 1")
    if (args.text_steps > 0 or args.text_rows > 0) and args.text_vocab <= 0:
        raise SystemExit("--text-steps/--text-rows train on the standard library's source, whose words the world's "
                         "vocabulary lacks: give --text-vocab N too (e.g. 4000)")
    if max(args.fact_rows, args.fact_pretrain_rows) > 0 and fact_table(args.world) is None:
        facts_worlds = [name for name in WORLDS if fact_table(name) is not None]
        raise SystemExit(f"--fact-rows/--fact-pretrain-rows teach a facts world's table, and the {args.world} world "
                         f"has none: give --world {' or '.join(facts_worlds)}, or drop them")
    if args.init_from and not (Path(args.init_from).is_file() or (Path(args.init_from) / EXPORTED_WEIGHTS).is_file()):
        raise SystemExit(f"--init-from {args.init_from}: no such checkpoint file or exported model; give a run's "
                         f"OUT/ckpt.pt or a folder holding {EXPORTED_WEIGHTS}")
    if args.init_stage != 1 and not args.init_from:
        raise SystemExit(f"--init-stage {args.init_stage} (from the {args.preset} preset or given) starts a run from "
                         f"trained weights: give --init-from with a checkpoint or an exported model")
    if not 1 <= args.init_stage <= final_stage(args.world):
        raise SystemExit(f"--init-stage {args.init_stage}: the {args.world} world has stages 1..{final_stage(args.world)}")
    return args


def vocabulary(args) -> list[str]:
    """The world's words, then (--text-vocab) the text's most frequent ones."""
    words = list(WORLDS[args.world].vocab)
    if args.text_vocab > 0:
        train, _ = text_lm.stdlib_texts()
        words += text_lm.frequent_words(train, args.text_vocab, tiny_vlm.word_pre_tokenizer())
    return words


def build_fresh_model(args, words: list[str] | None = None):
    """A fresh model over `words` (default: vocabulary(args); a resumed run passes its checkpoint's)."""
    tokenizer = tiny_vlm.build_tokenizer(vocabulary(args) if words is None else words)
    processor = tiny_vlm.build_processor(tokenizer, ARCH, args.image_size)
    config = tiny_vlm.tiny_config(
        ARCH, len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, intermediate_size=args.intermediate,
        vision_depth=args.vision_depth, vision_hidden=args.vision_hidden, vision_heads=args.vision_heads,
        **tiny_vlm.special_token_ids(tokenizer),
    )
    model = tiny_vlm.build_model(config, seed=args.seed)
    model.config.synth_world = args.world  # evaluation and the benchmarks read the world off the config
    model.generation_config = tiny_vlm.greedy_generation_config(tokenizer)
    return model, processor


ROWS_PER_IMAGE = 2


def training_rows(sample, rng: np.random.Generator, with_caption: bool) -> list[tuple[list[dict], object]]:
    """Up to ROWS_PER_IMAGE single-question conversations about one image, in the evaluation's format, drawn
    without repeats from the sample's questions and (with_caption) its caption, each with the question's
    subject (None for the caption). One question per conversation: in a multi-turn one, later questions
    come after the image (so image tokens cannot see them) and earlier answers give later ones away."""
    pool = [(qa.question, qa.answer, qa.subject) for qa in sample.qa]
    if with_caption:
        pool.append((sample.caption_prompt, sample.caption, None))
    picks = rng.choice(len(pool), size=min(ROWS_PER_IMAGE, len(pool)), replace=False)
    return [([user_turn(sample.image, pool[j][0]), assistant_turn(pool[j][1])], pool[j][2]) for j in picks]


def assistant_mask(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """True on the tokens the assistant writes: its answer words and the closing <|im_end|>."""
    im_start = tokenizer.convert_tokens_to_ids(tiny_vlm.IM_START)
    im_end = tokenizer.convert_tokens_to_ids(tiny_vlm.IM_END)
    assistant = tokenizer.convert_tokens_to_ids("assistant")
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, ids in enumerate(input_ids.tolist()):
        inside = False
        for pos, tok in enumerate(ids):
            if inside:
                mask[row, pos] = True
                inside = tok != im_end
            elif tok == assistant and pos > 0 and ids[pos - 1] == im_start:
                inside = True
    return mask


# The streams of per-step draws besides the image rows' (CurriculumStream): each a pure function of (seed, step,
# stream), so resuming is exact. Text windows and the spread loss's tokens have shared stream 0 since they exist.
TEXT_STREAM, SPREAD_STREAM, FACT_STREAM = 0, 0, 1


def step_seed(args, step: int, stream: int) -> int:
    return args.seed * 1_000_003 + step + (stream << 40)


class TextStream:
    """The standard library's source as word windows for the language model (text_lm's split by file): training
    windows are a pure function of (seed, step), so resuming is exact; held-out windows are fixed."""

    HELD_OUT_WINDOWS = 32

    def __init__(self, args, tokenizer):
        self.args = args
        self.unknown = tokenizer.unk_token_id
        train, held = text_lm.stdlib_texts()
        self.train = text_lm.word_stream(tokenizer, train, tiny_vlm.PAD_TOKEN)
        self.held_out = text_lm.spread_windows(text_lm.word_stream(tokenizer, held, tiny_vlm.PAD_TOKEN),
                                               args.text_length, self.HELD_OUT_WINDOWS)

    def batch(self, step: int, rows: int) -> torch.Tensor:
        return text_lm.windows(self.train, rows, self.args.text_length, step_seed(self.args, step, TEXT_STREAM))


def fact_table(world: str) -> FactTable | None:
    """The table a world's final stage draws its texts from (None outside the facts worlds)."""
    return get_stage(None, world).facts


class FactStream:
    """A facts world's table as text windows (--fact-rows): whole entries, "9 6 A means w0412 ,", drawn uniformly,
    as many as fit in --text-length words; a pure function of (seed, step). Only the meaning words are targets
    (the texts are drawn at random, "means" always follows them)."""

    def __init__(self, args, tokenizer):
        table = fact_table(args.world)
        self.args = args
        self.entries = torch.tensor([tokenizer.convert_tokens_to_ids(f"{table.statement(key)} ,".split())
                                     for key in table.keys])
        self.per_window = max(1, args.text_length // self.entries.shape[1])

    def batch(self, step: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(step_seed(self.args, step, FACT_STREAM))
        picks = torch.randint(len(self.entries), (rows, self.per_window), generator=generator)
        windows = self.entries[picks].flatten(1)
        meaning = self.entries.shape[1] - 2  # the word before the closing comma
        targets = torch.full_like(windows, -100)
        targets[:, meaning::self.entries.shape[1]] = windows[:, meaning::self.entries.shape[1]]
        return windows, targets


def predicting(later: torch.Tensor) -> torch.Tensor:
    """(batch, length - 1) marks on tokens 1.. -> the (batch, length) marks on the positions that predict them."""
    return torch.cat([later, torch.zeros_like(later[:, :1])], dim=1)


def next_token_logits(model, predictors: torch.Tensor, **inputs) -> torch.Tensor:
    """The logits at the positions `predictors` marks, those alone, in row-major order: the LM head over every
    position (most of them image tokens, whose next token is never a target) was a fifth of a step on the CPU."""
    hidden = model.model(**inputs).last_hidden_state
    return model.lm_head(hidden[predictors])


def next_word_loss(model, windows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each window's next words (no image) against `targets` (-100: not a target)."""
    later = targets[:, 1:]
    scored = later != -100
    logits = next_token_logits(model, predicting(scored), input_ids=windows)
    return F.cross_entropy(logits.float(), later[scored])


def text_loss(model, windows: torch.Tensor, unknown: int) -> torch.Tensor:
    """Next-word cross-entropy over text windows (no image); words outside the vocabulary are not targets."""
    return next_word_loss(model, windows, windows.masked_fill(windows == unknown, -100))


@torch.no_grad()
def held_out_text_loss(model, text: TextStream) -> float:
    was_training = model.training
    model.eval()
    loss = text_loss(model, text.held_out.to(next(model.parameters()).device), text.unknown).item()
    model.train(was_training)
    return round(loss, 4)


class Rows(NamedTuple):
    conversations: list
    images: list
    scenes: list
    subjects: list


class CurriculumStream:
    """Fresh training samples per step: a pure function of (seed, stage, step), so resuming is exact and batches
    can be prepared ahead in worker processes (--data-workers) without changing them."""

    def __init__(self, args):
        self.args = args

    def batch(self, stage: int, step: int) -> Rows:
        """batch_size single-question conversations (rows), their images, scenes and question subjects,
        ROWS_PER_IMAGE per image."""
        rng = np.random.default_rng([self.args.seed, step])
        index = step * self.args.batch_size  # a sample gives at least one row: no two steps share an image
        rows = Rows([], [], [], [])
        while len(rows.conversations) < self.args.batch_size:
            s = stage if stage == 1 or rng.random() >= self.args.replay else int(rng.integers(1, stage))
            sample = make_sample("train", index, self.args.seed, image_size=self.args.image_size, stage=s,
                                 world=self.args.world)
            index += 1
            captions = WORLDS[self.args.world].stages[s - 1].captions and rng.random() < self.args.caption_probability
            for conversation, subject in training_rows(sample, rng, captions)[:self.args.batch_size - len(rows.conversations)]:
                rows.conversations.append(conversation)
                rows.images.append(sample.image)
                rows.scenes.append(sample.scene)
                rows.subjects.append(subject)
        return rows


def encode_training_batch(processor, conversations, images):
    texts = [processor.apply_chat_template(c, tokenize=False) for c in conversations]
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    batch["labels_mask"] = assistant_mask(batch["input_ids"], processor.tokenizer)
    return batch


def embed_patches_by_matmul(model) -> None:
    """The vision tower's patch embedding is a Conv3d whose stride is its kernel: on the processor's flattened
    patches the same map is one matmul, a third of the convolution's time on the CPU (forward and backward)."""
    embed = model.model.visual.patch_embed

    def forward(patches: torch.Tensor) -> torch.Tensor:
        weight = embed.proj.weight  # (embed_dim, channels, frames, patch, patch): a patch row's own layout
        return patches.to(weight.dtype).reshape(-1, weight[0].numel()) @ weight.flatten(1).T

    embed.forward = forward


CPP_COMPILERS = ("g++", "c++", "clang++")  # any one lets torch.compile build its CPU kernels


def compile_mlps(model, device: torch.device) -> None:
    """torch.compile each MLP of the vision tower and the language model, in place (their weights keep their names):
    fused activations and products instead of one pass over memory per elementwise op (tools/TRAINING.md). Only the
    MLPs: the attention modules carry the hooks the auxiliary losses read."""
    if device.type == "cpu" and not any(map(shutil.which, CPP_COMPILERS)):
        raise SystemExit("--compile on a CPU needs a C++ compiler (torch.compile builds C++ kernels): install g++ "
                         "or drop --compile")
    for block in model.model.visual.blocks:
        block.mlp.compile(dynamic=True)
    for layer in model.model.language_model.layers:
        layer.mlp.compile(dynamic=True)


class TileProbe(torch.nn.Module):
    """Training-only linear heads on the vision tower's merged tokens (the language model's image inputs):
    each token's colour, shape, size and glyph (or none) and its tile row and column. The answer loss alone
    reaches these only through the language model; this dense per-token signal makes them linearly
    readable so the language model only has to find and copy them. Not exported."""

    def __init__(self, hidden: int, n_tiles: int):
        super().__init__()
        self.n_tiles = n_tiles
        self.sizes = [1 + len(values) for values in TILE_ATTRIBUTES.values()] + [n_tiles, n_tiles]
        self.head = torch.nn.Linear(hidden, sum(self.sizes))

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
        """tokens (n, hidden), their tile_labels rows (n, attributes) and row-major tile indices (n,)."""
        where = torch.stack([tiles // self.n_tiles, tiles % self.n_tiles], 1)
        targets = torch.cat([labels, where], 1)
        logits = self.head(tokens.float()).split(self.sizes, dim=1)
        return sum(F.cross_entropy(part, targets[:, i]) for i, part in enumerate(logits)) / len(self.sizes)


class VisionTokens:
    """Keeps the vision tower's merged output of the last forward pass (a forward hook)."""

    def __init__(self, model):
        self.tokens = None
        model.model.visual.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self.tokens = output.pooler_output


class LayerOutput:
    """Keeps one language-model layer's output hidden states of the last forward pass (a forward hook)."""

    def __init__(self, model, layer: int):
        self.hidden = None
        QWEN_VL.decoder_layers(model)[layer].register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self.hidden = output[0] if isinstance(output, tuple) else output


class SpreadInputs:
    """Keeps, for --spread-loss, the vectors of the last forward pass whose directions it spreads (forward
    pre-hooks): every decoder layer's input (`residual`), or the input of each distinct decoder linear input
    (`linears`: q_proj's, which k_proj and v_proj share; o_proj's; gate_proj's, which up_proj shares;
    down_proj's), what GPTQ's H is made of."""

    LINEARS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")

    def __init__(self, model, where: str):
        self.hidden = {}
        for i, layer in enumerate(QWEN_VL.decoder_layers(model)):
            if where == "residual":
                layer.register_forward_pre_hook(self._keeper(i), with_kwargs=True)
                continue
            for name in self.LINEARS:
                layer.get_submodule(name).register_forward_pre_hook(self._keeper(f"{i}.{name}"), with_kwargs=True)

    def _keeper(self, key):
        def keep(module, args, kwargs):
            self.hidden[key] = args[0] if args else kwargs["hidden_states"]
        return keep


def attention_with_log_weights(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention that returns the log-weights (log-softmax of the scores) instead of the weights: a binding
    loss of -log(weight) has no gradient once a weight underflows to 0 in float32 (scores 100+ apart, as layer 1's
    were after the facts recipe's text steps in a CPU run), and a log-weight never underflows."""
    key, value = (t.repeat_interleave(module.num_key_value_groups, dim=1) for t in (key, value))
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    log_weights = F.log_softmax(scores.float(), dim=-1)
    weights = F.dropout(log_weights.exp().to(query.dtype), p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), log_weights


def attend_keeping_log_weights_where_marked(module, *args, **kwargs):
    """attention_with_log_weights in the attention modules HeadAttention marked, SDPA elsewhere (eager attention
    in every layer cost a tenth of a step on the CPU). Both take the eager (additive) mask registered with it."""
    attend = attention_with_log_weights if getattr(module, "keeps_log_weights", False) else sdpa_attention_forward
    return attend(module, *args, **kwargs)


LOG_WEIGHTS_WHERE_MARKED = "log_weights_where_marked"
AttentionInterface.register(LOG_WEIGHTS_WHERE_MARKED, attend_keeping_log_weights_where_marked)
AttentionMaskInterface.register(LOG_WEIGHTS_WHERE_MARKED, eager_mask)


class HeadAttention:
    """Keeps head 0's attention log-weights in some language-model layers (forward hooks on the attention modules
    it marks; the other layers keep SDPA)."""

    def __init__(self, model, layers):
        self.log_weights = {}
        model.model.language_model.set_attn_implementation(LOG_WEIGHTS_WHERE_MARKED)
        decoder = QWEN_VL.decoder_layers(model)
        for layer in layers:
            attention = getattr(decoder[layer], QWEN_VL.attention)
            attention.keeps_log_weights = True
            attention.register_forward_hook(self._keeper(layer))

    def _keeper(self, layer: int):
        def keep(module, inputs, output):
            self.log_weights[layer] = output[1][:, 0]
        return keep


def binding_targets(input_ids: torch.Tensor, labels_mask: torch.Tensor, subjects, image_size: int,
                    tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the position that predicts each answer word should look, in up to three hops, as rows (row, query,
    key, group); a group is one query, and its keys share one target. gather: the question's words that name
    the subject (its colour and/or shape; none for text), after the names world's list. read: the subject's
    image token, or for text the glyph that word spells. copy: for an answer that is a name, that name in the
    list. Rows without a subject (captions) get none."""
    image_pad_id = tokenizer.convert_tokens_to_ids(tiny_vlm.IMAGE_PAD)
    list_end = tokenizer.convert_tokens_to_ids(".")
    name_ids = set(tokenizer.convert_tokens_to_ids(list(NAMES)))
    gather, read, copy, gather_groups = [], [], [], 0
    for row, subject in enumerate(subjects):
        if subject is None:
            continue
        ids = input_ids[row]
        image_positions = (ids == image_pad_id).nonzero()[:, 0]
        tiles = item_tiles(subject, image_size)
        answer_words = labels_mask[row].nonzero()[:-1, 0]  # the closing <|im_end|> reads nothing
        naming = [] if isinstance(subject, SceneText) else tokenizer.convert_tokens_to_ids([subject.colour, subject.shape])
        for k, position in enumerate(answer_words.tolist()):
            if isinstance(subject, SceneText) and k >= len(tiles):
                break  # a meaning answer's words after the spelled text are recalled, not read (facts.py)
            query = position - 1
            tile = tiles[k] if isinstance(subject, SceneText) else tiles[0]
            read.append((row, query, int(image_positions[tile]), len(read)))
            ends = (ids[:query] == list_end).nonzero()[:, 0]
            question_start = int(ends[-1]) + 1 if len(ends) else 0
            words = [i for i in range(question_start, query) if int(ids[i]) in naming]
            if words:
                gather += [(row, query, key, gather_groups) for key in words]
                gather_groups += 1
            answer = int(ids[position])
            if answer in name_ids:
                listed = (ids[:query] == answer).nonzero()[:, 0]
                copy += [(row, query, int(listed[0]), len(copy))] if len(listed) else []
    return tuple(torch.tensor(hop, dtype=torch.long).reshape(-1, 4) for hop in (gather, read, copy))


def read_tiles(input_ids: torch.Tensor, read: torch.Tensor, image_pad_id: int) -> torch.Tensor:
    """The tile index (row-major, within its row's image) of each read target's key."""
    before = torch.cumsum(input_ids == image_pad_id, dim=1) - 1
    return before[read[:, 0], read[:, 2]]


def binding_loss(log_weights: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over queries of minus the log of the attention the query gives its target keys, from the attention's
    log-weights (a logsumexp over each query's target keys)."""
    if len(targets) == 0:
        return log_weights.flatten()[0] * 0
    picked = log_weights[targets[:, 0], targets[:, 1], targets[:, 2]].float()
    query = targets[:, 3]
    peak = torch.full((int(query.max()) + 1,), -torch.inf, device=picked.device)
    peak = peak.scatter_reduce(0, query, picked.detach(), "amax")
    per_query = torch.zeros_like(peak).index_add(0, query, (picked - peak[query]).exp()).log() + peak
    return -per_query.mean()


def copy_readout_loss(model, hidden: torch.Tensor, answers: torch.Tensor, name_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the names of the residual stream hidden (n, hidden) after the copy layer, at the
    positions predicting a name, against their answers' token ids, read as if that layer were the last: final
    norm, then the names' output rows. Norm and rows are detached, so the loss trains what writes the residual
    stream (the copy head's values and output projection) and leaves the readout to the answer loss."""
    norm = model.model.language_model.norm
    normed = F.rms_norm(hidden.float(), hidden.shape[-1:], norm.weight.detach().float(), norm.variance_epsilon)
    logits = normed @ model.get_output_embeddings().weight[name_ids].detach().float().T
    return F.cross_entropy(logits, (answers[:, None] == name_ids).float().argmax(1))


def spread_loss(hidden: list[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """Mean over the tensors of `hidden` (layer or linear inputs) of the mean squared cosine similarity between
    their vectors at `tokens`
    ((n, 2) row/position pairs). For unit vectors x_i this is ‖H‖²_F / (tr H)² with H = Σ x_i x_iᵀ, the
    inverse participation ratio: 1 when every token points the same way, about 1/n + 1/d when n tokens are
    spread over all d dimensions."""
    per_layer = []
    for h in hidden:
        x = F.normalize(h[tokens[:, 0], tokens[:, 1]].float(), dim=-1)
        per_layer.append((x @ x.T).pow(2).mean())
    return torch.stack(per_layer).mean()


def spread_tokens(attention_mask: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Up to n (row, position) pairs drawn without replacement from the batch's non-padding tokens."""
    every = attention_mask.nonzero()
    return every[torch.randperm(len(every), generator=generator)[:n].to(every.device)]


def training_loss(model, batch) -> torch.Tensor:
    """Cross-entropy of the answer tokens (the batch's labels_mask), each predicted from the position before it."""
    answers = batch.pop("labels_mask")[:, 1:]
    logits = next_token_logits(model, predicting(answers), **batch)
    return F.cross_entropy(logits.float(), batch["input_ids"][:, 1:][answers])


def learning_rate(step: int, args, final_start: int | None) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    if final_start is None:
        return args.lr
    progress = min(1.0, (step - final_start) / max(1, args.final_steps))
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def blanked(samples, image_size: int, seed: int):
    """The same questions over empty backgrounds (same texture statistics, no objects or text)."""
    out = []
    for i, sample in enumerate(samples):
        image = render_scene(Scene((), None, lit=sample.scene.lit), np.random.default_rng([9, seed, i]), image_size)
        out.append(replace(sample, image=image))
    return out


def validate(model, processor, args, stage: int, text: TextStream | None = None, full: bool = True) -> dict:
    """Per-kind exact match on the validation images of `stage` and of the final stage, each also with the images
    blanked; with `text`, the next-word loss on its held-out windows. Not `full`: `stage`'s exact match alone, what
    advancing needs (an eighth of the full report's time on the CPU: the rest is diagnostics)."""
    model.eval()
    report = {} if text is None else {"text_held_out_loss": held_out_text_loss(model, text)}
    for s in sorted({stage, final_stage(args.world)}) if full else (stage,):
        samples = [make_sample("train", i, VALIDATION_SEED, image_size=args.image_size, stage=s, world=args.world)
                   for i in range(args.val_samples)]
        real = evaluate(model, processor, samples)
        report[f"stage{s}"] = {"accuracy": round(real.accuracy, 4),
                               "per_kind": {k: round(v, 3) for k, v in real.per_kind.items()}}
        if full:
            blank = evaluate(model, processor, blanked(samples, args.image_size, s))
            report[f"stage{s}"]["blank_accuracy"] = round(blank.accuracy, 4)
    model.train()
    return report


EXPORTED_WEIGHTS = "model.safetensors"


def initial_weights(path: Path, model, device) -> dict:
    """A training checkpoint, or {"model": weights, "words": its vocabulary in id order} of an exported folder,
    loaded the way evaluation loads it (transformers maps the saved names onto the model's and fills the tied
    matrices), in the model's dtype. A checkpoint's "words" (its run's word list) become its vocabulary in id order."""
    if path.is_file():
        start = torch.load(path, weights_only=False, map_location=device)
        if "words" in start:
            vocab = tiny_vlm.build_tokenizer(start["words"], ARCH).get_vocab()
            start["words"] = sorted(vocab, key=vocab.get)
        return start
    from transformers import AutoModelForImageTextToText, PreTrainedTokenizerFast

    exported = AutoModelForImageTextToText.from_pretrained(path, dtype=next(model.parameters()).dtype)
    vocab = PreTrainedTokenizerFast.from_pretrained(path).get_vocab()
    return {"model": {name: value.to(device) for name, value in exported.state_dict().items()},
            "words": sorted(vocab, key=vocab.get)}


def load_overlapping(model, saved: dict, saved_words: list[str] | None = None, words: list[str] | None = None) -> None:
    """Load another run's weights. The embedding and output matrices may have other rows: with both vocabularies
    (an exported folder's, a training checkpoint's), each word's rows go where this vocabulary has the word; without
    (a checkpoint from before the vocabulary was saved in it), a smaller vocabulary whose words this world's
    vocabulary starts with fills the first rows.
    The added words' input embeddings are scaled to the loaded rows' mean norm (at the initialiser's scale they
    would be invisible next to trained words), and their output rows start as those embeddings at the loaded
    output rows' norm: a word a head copies into the residual stream then already scores itself, where an
    output row at its random initialisation, updated only when that word is the answer (1 in 256 names), took
    hundreds of steps to point anywhere (tools/TRAINING.md)."""
    current = model.state_dict()
    unknown, missing = [k for k in saved if k not in current], [k for k in current if k not in saved]
    if unknown or missing:
        raise SystemExit(f"--init-from: the checkpoint's weights and this model's differ ({(unknown + missing)[:3]}); "
                         f"give a run of the same architecture (--layers, --vision-depth, ...)")
    embedding, output = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    word_matrices = {k for k, p in model.named_parameters() if p is embedding or p is output}
    loaded = torch.zeros(len(embedding), dtype=torch.bool)
    by_word = saved_words is not None and words is not None
    if by_word:
        at = {word: i for i, word in enumerate(saved_words)}
        pairs = [(i, at[word]) for i, word in enumerate(words) if word in at]
        mine = torch.tensor([i for i, _ in pairs], dtype=torch.long)
        theirs = torch.tensor([j for _, j in pairs], dtype=torch.long)
    with torch.no_grad():
        for name, value in saved.items():
            target = current[name]
            if name in word_matrices and by_word:
                target[mine.to(target.device)] = value[theirs.to(value.device)]
                loaded[mine] = True
            elif value.shape == target.shape:
                target.copy_(value)
                loaded |= name in word_matrices
            elif name in word_matrices and value.shape[1:] == target.shape[1:] and value.shape[0] < target.shape[0]:
                target[:value.shape[0]].copy_(value)
                loaded[:value.shape[0]] = True
            else:
                raise SystemExit(f"--init-from: {name} is {tuple(value.shape)} there and {tuple(target.shape)} "
                                 f"here; give a run with the same sizes (--hidden, --layers, ...)")
        added = ~loaded
        if added.any():
            norm = lambda rows: rows.norm(dim=1).mean()  # noqa: E731
            embedding[added] *= norm(embedding[~added]) / norm(embedding[added])
            output[added] = embedding[added] * (norm(output[~added]) / norm(embedding[added]))


def resumable(weights: dict, model, ckpt: Path) -> None:
    """Refuse, in one line, a checkpoint whose weights this run's model cannot take (a checkpoint from before the
    vocabulary was saved in it, resumed under another Python; or other model sizes)."""
    current = model.state_dict()
    clash = next((name for name, w in weights.items() if name in current and w.shape != current[name].shape), None)
    if clash is not None:
        raise SystemExit(f"{ckpt} holds {clash} of shape {tuple(weights[clash].shape)}, this run builds "
                         f"{tuple(current[clash].shape)}: resume with the flags and the Python that started the run, "
                         f"or give another --out")


def save_checkpoint(path: Path, model, optimizer, probes, probe_optimizer, state: dict, words: list[str]) -> None:
    """`words` is the run's vocabulary: --text-vocab reads it off this Python's standard library, which another
    Python version words differently, so a resume rebuilds the model from the checkpoint's words, not its own."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "probe": probes.state_dict(),
                "probe_optimizer": probe_optimizer.state_dict(), "words": words, **state}, tmp)
    os.replace(tmp, path)


def export(model, processor, out_dir: Path) -> None:
    """fp16 weights plus tokenizer/processor/generation config, loadable offline by transformers and GPTQModel."""
    half = model.to(torch.float16)
    half.config.dtype = torch.float16
    out_dir.mkdir(parents=True, exist_ok=True)
    half.save_pretrained(out_dir)
    # A padded call (validation) leaves padding switched on in the fast tokenizer, and tokenizer.json would
    # keep it; the shipped tokenizer pads only when asked.
    processor.tokenizer.backend_tokenizer.no_padding()
    processor.save_pretrained(out_dir)
    model.to(torch.float32)


class Clock:
    """Wall and process-CPU minutes, carried across resumes (CPU time is less distorted by busy neighbours)."""

    def __init__(self, state: dict):
        self.wall0 = time.time() - state["elapsed"]
        self.cpu0 = time.process_time() - state["cpu"]

    def record(self, state: dict) -> dict:
        state["elapsed"], state["cpu"] = time.time() - self.wall0, time.process_time() - self.cpu0
        return {"minutes": round(state["elapsed"] / 60, 2), "cpu_minutes": round(state["cpu"] / 60, 2)}


class PreparedStep(NamedTuple):
    """Everything a step needs from its rows, on the CPU: the encoded batch, each image token's tile labels,
    the attention hops' targets (None without --bind-loss) and the number of images."""
    batch: dict
    labels: torch.Tensor
    targets: tuple | None
    n_images: int


def prepare_step(args, processor, stage: int, step: int) -> PreparedStep:
    rows = CurriculumStream(args).batch(stage, step)
    batch = encode_training_batch(processor, rows.conversations, rows.images)
    labels = torch.from_numpy(np.concatenate([tile_labels(scene, args.image_size) for scene in rows.scenes]))
    targets = None
    if args.bind_loss > 0:
        targets = binding_targets(batch["input_ids"], batch["labels_mask"], rows.subjects, args.image_size,
                                  processor.tokenizer)
    return PreparedStep(dict(batch), labels, targets, len(rows.scenes))


_worker_context = None  # (args, processor) in a --data-workers process


def _start_worker(args) -> None:
    global _worker_context
    torch.set_num_threads(1)
    tokenizer = tiny_vlm.build_tokenizer(vocabulary(args))
    _worker_context = (args, tiny_vlm.build_processor(tokenizer, ARCH, args.image_size))


def _prepare_in_worker(stage: int, step: int) -> tuple:
    # a plain tuple: the worker runs this script as __mp_main__, so its classes would pickle under that name
    return tuple(prepare_step(*_worker_context, stage, step))


class StepFeeder:
    """Prepared steps, made here (workers=0) or up to `ahead` steps in advance by worker processes: rendering and
    the processor cost about 0.5 s a step on one CPU core, longer than a GPU step. The same steps either way;
    steps prepared for a stage the run has left are dropped."""

    def __init__(self, args, processor, workers: int, ahead: int):
        self.args, self.processor, self.ahead = args, processor, ahead
        self.pending = {}
        self.pool = None
        if workers > 0:
            # an executor, not multiprocessing.Pool: a Pool whose worker is killed (out of memory, say) loses
            # that worker's job and the trainer waits for it forever; the executor fails the job instead.
            # spawn: a forked child would inherit the trainer's thread pools (and, on a GPU, its CUDA context)
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_start_worker, initargs=(args,))

    def get(self, stage: int, step: int) -> PreparedStep:
        if self.pool is None:
            return prepare_step(self.args, self.processor, stage, step)
        for key in [key for key in self.pending if key[0] != stage or key[1] < step]:
            self.pending.pop(key).cancel()  # a stage the run has left: dropped (finished if already started)
        try:
            for ahead in range(step, step + self.ahead):
                if (stage, ahead) not in self.pending:
                    self.pending[(stage, ahead)] = self.pool.submit(_prepare_in_worker, stage, ahead)
            return PreparedStep(*self.pending.pop((stage, step)).result())
        except BrokenProcessPool:
            raise SystemExit(f"a --data-workers process died while preparing step {step} (killed, or out of "
                             f"memory): run the same command again to resume from the last checkpoint, with "
                             f"fewer --data-workers if memory is short") from None

    def close(self) -> None:
        """Let the workers finish what was asked of them, then stop them: a worker stopped while the trainer is
        still unpickling its last result would take the result's shared tensors with it. At most `ahead` steps
        are left to finish."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def train_step(model, optimizers, batch, bf16: bool, auxiliary=None, device_type: str = "cpu") -> tuple[float, dict[str, float]]:
    """One update. auxiliary maps a name to (weight, loss function); each function is called after the
    forward pass, in order (it reads what the hooks kept), and its weighted loss is added to the answer loss."""
    auxiliary = auxiliary or {}
    # optional bf16 autocast: fp32 master weights and loss, bf16 matmuls
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        # batch None: a text-only step (--text-steps), whose one loss is auxiliary
        loss = training_loss(model, batch) if batch is not None else torch.zeros((), device=device_type)
        extra = {name: compute() for name, (_, compute) in auxiliary.items()}
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    (loss + sum(auxiliary[name][0] * value for name, value in extra.items())).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    for optimizer in optimizers:
        optimizer.step()
    return loss.item(), {name: value.item() for name, value in extra.items()}


def text_pretraining_step(model, optimizer, text: TextStream, facts: FactStream | None, args, step: int,
                          device) -> dict:
    """One --text-steps update: text windows alone, no image (with --fact-rows, the table's windows too, as a
    language model meets facts in its pretraining text); returns the losses."""
    windows = text.batch(step, args.text_pretrain_rows).to(device)
    losses = {"text_loss": (1.0, lambda: text_loss(model, windows, text.unknown))}
    if facts is not None and args.fact_pretrain_rows > 0:
        fact_windows, fact_targets = (t.to(device) for t in facts.batch(step, args.fact_pretrain_rows))
        losses["fact_loss"] = (1.0, lambda: next_word_loss(model, fact_windows, fact_targets))
    return train_step(model, (optimizer,), None, args.bf16, losses, device.type)[1]


def smooth(running: dict, values: dict) -> None:
    """Exponential moving averages of the logged losses."""
    for name, value in values.items():
        running[name] = value if name not in running else 0.95 * running[name] + 0.05 * value


def next_stage(state: dict, stage_accuracy: float, args) -> None:
    """Advance when the current stage is learned (or has had its step budget); the last stage has a fixed length."""
    stage, last = state["stage"], final_stage(args.world)
    if stage < last and (stage_accuracy >= args.advance_at
                                or state["step"] - state["stage_start"] >= args.max_stage_steps):
        state["stage"], state["stage_start"] = stage + 1, state["step"]
        if stage + 1 == last:
            state["final_start"] = state["step"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chain = argparse.ArgumentParser(add_help=False)
    for flag in ("--preset", "--out", "--export"):
        chain.add_argument(flag)
    known, rest = chain.parse_known_args(argv)
    if known.preset in CHAINS:
        run_chain(known.preset, Path(known.out or f"runs/{known.preset}"), known.export, rest)
    else:
        train(parse_args(argv))
    return 0


def run_chain(name: str, out: Path, export_dir: str | None, flags: list[str]) -> None:
    """The presets of CHAINS[name] one after another, each from the previous one's export. Rerunning resumes the
    part that was stopped (a finished part only re-validates and re-exports)."""
    own = [flag for flag in flags if flag.split("=")[0] in CHAIN_OWN]
    if own:
        raise SystemExit(f"{own[0]}: the {name} chain sets it for each part itself (the first part starts from "
                         f"scratch, each later one from the previous export): drop it")
    previous = None
    parts = CHAINS[name]
    for i, preset in enumerate(parts):
        last = i == len(parts) - 1
        part_export = Path(export_dir) if last and export_dir else out / ("model" if last else f"{preset}-model")
        argv = ["--preset", preset, *flags, "--out", str(out / preset), "--export", str(part_export)]
        args = parse_args(argv + (["--init-from", str(previous)] if previous else []))
        print(f"{name}: part {i + 1} of {len(parts)}, preset {preset}, in {out / preset}", flush=True)
        state = train(args)
        if state["final_start"] is None or state["step"] - state["final_start"] < args.final_steps:
            raise SystemExit(f"{name}: the {preset} part stopped before its schedule ended (--max-minutes "
                             f"{args.max_minutes} of training time spent): rerun the same command with a larger "
                             f"--max-minutes to resume it")
        previous = part_export


def train(args) -> dict:
    """One preset's run (resuming from OUT/ckpt.pt); returns its state (steps, stage, where the final stage began)."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    device = torch.device(args.device)
    ckpt = out / "ckpt.pt"
    saved = torch.load(ckpt, weights_only=False, map_location=device) if ckpt.exists() else None
    words = saved.pop("words", None) if saved else None
    words = vocabulary(args) if words is None else words
    model, processor = build_fresh_model(args, words)
    text = TextStream(args, processor.tokenizer) if args.text_steps > 0 or args.text_rows > 0 else None
    facts = FactStream(args, processor.tokenizer) if max(args.fact_rows, args.fact_pretrain_rows) > 0 else None
    n_tiles = args.image_size // TOKEN_PIXELS
    probes = torch.nn.ModuleDict({name: TileProbe(model.config.text_config.hidden_size, n_tiles)
                                  for name in ("tiles", "read")})
    model.to(device), probes.to(device)
    embed_patches_by_matmul(model)
    if args.compile:
        compile_mlps(model, device)
    vision_tokens = VisionTokens(model)
    hops = (args.bind_layer - 1, args.bind_layer) + ((args.bind_layer + 1,) if args.copy_loss > 0 else ())
    head_attention = HeadAttention(model, hops) if args.bind_loss > 0 else None
    read_output = LayerOutput(model, args.bind_layer) if args.bind_loss > 0 and args.read_loss > 0 else None
    copy_output = LayerOutput(model, args.bind_layer + 1) if args.copy_readout > 0 else None
    spread_inputs = SpreadInputs(model, args.spread_at) if args.spread_loss > 0 else None
    name_ids = torch.tensor(processor.tokenizer.convert_tokens_to_ids(list(NAMES)), device=device)
    optimizer, probe_optimizer = (torch.optim.AdamW(m.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                                    betas=(0.9, 0.98)) for m in (model, probes))
    state = {"step": 0, "stage": 1, "stage_start": 0, "final_start": None, "elapsed": 0.0, "cpu": 0.0}
    if saved is not None:
        resumable(saved["model"], model, ckpt)
        model.load_state_dict(saved.pop("model"))
        optimizer.load_state_dict(saved.pop("optimizer"))
        probe_state, probe_optimizer_state = saved.pop("probe", None), saved.pop("probe_optimizer", None)
        if probe_state and "head.weight" in probe_state:  # from before the read probe: the tile probe alone
            probe_state, probe_optimizer_state = {f"tiles.{k}": v for k, v in probe_state.items()}, None
        # A probe starts afresh where the checkpoint has none of its shape (other tile attributes, older runs).
        current = probes.state_dict()
        usable = {k: v for k, v in (probe_state or {}).items() if k in current and v.shape == current[k].shape}
        probes.load_state_dict(usable, strict=False)
        if probe_optimizer_state and len(usable) == len(current):
            probe_optimizer.load_state_dict(probe_optimizer_state)
        state.update(saved)
        print(f"resumed at step {state['step']} (stage {state['stage']})", flush=True)
    elif args.init_from:
        start = initial_weights(Path(args.init_from), model, device)
        if not isinstance(start, dict) or "model" not in start:
            raise SystemExit(f"--init-from {args.init_from} is not a training checkpoint (no 'model' weights); "
                             f"give a run's OUT/ckpt.pt")
        vocab = processor.tokenizer.get_vocab()
        load_overlapping(model, start["model"], start.get("words"), sorted(vocab, key=vocab.get))
        state["stage"] = args.init_stage
        if args.init_stage == final_stage(args.world):
            state["final_start"] = 0
        print(f"starting from {args.init_from} at stage {args.init_stage}", flush=True)
    torch.manual_seed(args.seed + state["step"])
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused --init-from leaves nothing behind
    log = (out / "log.jsonl").open("a")

    def emit(entry):
        print(json.dumps(entry), flush=True)
        print(json.dumps(entry), file=log, flush=True)

    if args.export_only:
        if not (args.export and ckpt.exists()):
            raise SystemExit(f"--export-only needs --export DIR and a checkpoint at {ckpt}")
        export(model, processor, Path(args.export))
        return state
    emit({"params": sum(p.numel() for p in model.parameters()), "args": vars(args)})
    clock = Clock(state)
    feeder = StepFeeder(args, processor, args.data_workers, ahead=2 * args.data_workers)
    model.train()
    running = {}
    try:
        while state["final_start"] is None or state["step"] - state["final_start"] < args.final_steps:
            if state["elapsed"] / 60 > args.max_minutes:
                emit({"step": state["step"], "stopped": "time budget reached"})
                break
            for group in optimizer.param_groups + probe_optimizer.param_groups:
                group["lr"] = learning_rate(state["step"], args, state["final_start"])
            if state["step"] < args.text_steps:
                smooth(running, text_pretraining_step(model, optimizer, text, facts, args, state["step"], device))
                state["step"] += 1
                state["stage_start"] = state["step"]  # the first stage's step budget starts after the text
                clock.record(state)
                if state["step"] % 50 == 0:
                    losses = " ".join(f"{name} {value:.4f}" for name, value in running.items())
                    print(f"step {state['step']} {losses} wall {state['elapsed'] / 60:.1f} min", flush=True)
                if state["step"] % args.eval_every == 0 or state["step"] == args.text_steps:
                    emit({"step": state["step"], "text_pretraining": True, **{k: round(v, 4) for k, v in running.items()},
                          "lr": optimizer.param_groups[0]["lr"], **clock.record(state),
                          "text_held_out_loss": held_out_text_loss(model, text)})
                    save_checkpoint(ckpt, model, optimizer, probes, probe_optimizer, state, words)
                if state["step"] == args.text_steps:
                    running.clear()  # the curriculum's averages start afresh (no text-phase loss lingers in them)
                continue
            prepared = feeder.get(state["stage"], state["step"])
            batch = {name: value.to(device) for name, value in prepared.batch.items()}
            auxiliary = {}
            labels = prepared.labels.to(device)
            if args.tile_loss > 0:
                every_tile = torch.arange(n_tiles ** 2, device=device).repeat(prepared.n_images)
                auxiliary["tile_loss"] = (args.tile_loss,
                                          lambda: probes["tiles"].loss(vision_tokens.tokens, labels, every_tile))
            if head_attention is not None:
                targets = tuple(t.to(device) for t in prepared.targets)
                weights = (args.bind_loss, args.bind_loss, args.copy_loss)
                names = ("gather_loss", "read_loss", "copy_loss")
                for name, layer, weight, hop_targets in zip(names, hops, weights, targets):
                    auxiliary[name] = (weight, lambda layer=layer, hop_targets=hop_targets:
                                       binding_loss(head_attention.log_weights[layer], hop_targets))
                read = targets[1]
                if read_output is not None and len(read):
                    tiles = read_tiles(batch["input_ids"], read, QWEN_VL.image_token_id(model.config))
                    auxiliary["read_probe_loss"] = (args.read_loss, lambda: probes["read"].loss(
                        read_output.hidden[read[:, 0], read[:, 1]], labels[read[:, 0] * n_tiles ** 2 + tiles], tiles))
                copy = targets[2]
                if copy_output is not None and len(copy):
                    answers = batch["input_ids"][copy[:, 0], copy[:, 2]]  # the listed name is the answer
                    auxiliary["copy_readout_loss"] = (args.copy_readout, lambda: copy_readout_loss(
                        model, copy_output.hidden[copy[:, 0], copy[:, 1]], answers, name_ids))
            if spread_inputs is not None:
                sampled = spread_tokens(prepared.batch["attention_mask"], SPREAD_TOKENS,
                                        torch.Generator().manual_seed(step_seed(args, state["step"], SPREAD_STREAM))).to(device)
                auxiliary["spread_loss"] = (args.spread_loss, lambda: spread_loss(
                    list(spread_inputs.hidden.values()), sampled))
            if facts is not None and args.fact_rows > 0:  # after the image rows: its forward pass overwrites what the hooks kept from them
                fact_windows, fact_targets = (t.to(device) for t in facts.batch(state["step"], args.fact_rows))
                auxiliary["fact_loss"] = (1.0, lambda: next_word_loss(model, fact_windows, fact_targets))
            if text is not None and args.text_rows > 0:
                # last: its forward pass overwrites what the hooks kept from the image rows
                windows = text.batch(state["step"], args.text_rows).to(device)
                auxiliary["text_loss"] = (args.text_loss, lambda: text_loss(model, windows, text.unknown))
            loss, extra = train_step(model, (optimizer, probe_optimizer), batch, args.bf16, auxiliary, device.type)
            smooth(running, {"loss": loss, **extra})
            state["step"] += 1
            clock.record(state)
            if state["step"] % 50 == 0:
                losses = " ".join(f"{name} {value:.4f}" for name, value in running.items())
                print(f"step {state['step']} stage {state['stage']} {losses} "
                      f"wall {state['elapsed'] / 60:.1f} min cpu {state['cpu'] / 60:.1f} min", flush=True)
            if state["step"] % args.eval_every == 0:
                report = validate(model, processor, args, state["stage"], text,
                                  full=state["step"] % args.report_every == 0)
                emit({"step": state["step"], "stage": state["stage"], **{k: round(v, 4) for k, v in running.items()},
                      "lr": optimizer.param_groups[0]["lr"], **clock.record(state), **report})
                next_stage(state, report[f"stage{state['stage']}"]["accuracy"], args)
                if state["final_start"] == state["step"]:  # kept: another final stage branches from here (written
                    # before ckpt.pt, so a run killed in between redoes the step and writes it again)
                    save_checkpoint(out / FINAL_STAGE_CKPT, model, optimizer, probes, probe_optimizer, state, words)
                save_checkpoint(ckpt, model, optimizer, probes, probe_optimizer, state, words)
    finally:
        feeder.close()
    timing = clock.record(state)
    save_checkpoint(ckpt, model, optimizer, probes, probe_optimizer, state, words)
    emit({"step": state["step"], "final": True, **timing, **validate(model, processor, args, state["stage"], text)})
    if args.export:
        export(model, processor, Path(args.export))
    return state


if __name__ == "__main__":
    sys.exit(main())
