"""Offline VQA evaluation on the synthetic world: exact-match accuracy per question kind and answer-token KL.

Answers are one to three words, so instead of generating, every question is scored in one batched,
teacher-forced forward pass over "<question> <gold answer> <|im_end|>": a question counts as correct only
if the argmax at every answer position (and at the closing <|im_end|>) is the gold token, which is exactly
when greedy decoding would produce the gold answer and stop. The same pass gives the answer-token
distributions; the mean KL(FP || model) over those positions measures how far a quantized model drifts
from the full-precision one even where the argmax survives. The FP distributions are computed once and
reused for every quantized variant.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from vlmq_gptqmodel.errors import BadInput
from vlmq_gptqmodel.model_dir import check_model_dir, is_quantized, read_config
from vlmq_gptqmodel.synth.world import DEFAULT_WORLD, QA, WORLDS, Sample, make_samples, user_turn
from vlmq_gptqmodel.synth.tiny_vlm import IM_END

DEFAULT_BATCH_SIZE = 32
# config fields that must agree between a model and its --reference (text_config's where nested)
ARCHITECTURE_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                       "num_attention_heads", "num_key_value_heads", "synth_world")
# The project's own trained VLMs, shipped as package data (tools/TRAINING.md): "synthvlm" (4 layers, 64 image
# tokens) and "synthvlm-recall" (8 layers, 196 image tokens, a table of 8,192 facts: the headroom yardstick, scored
# with `benchmarks/quality.py --model synthvlm-recall --world deep-meaning`; issue 15).
ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED_MODELS = ("synthvlm", "synthvlm-recall")


def has_synthvlm(name: str = "synthvlm") -> bool:
    return (ASSETS / name / "model.safetensors").is_file()


def synthvlm_dir(name: str = "synthvlm") -> Path:
    """Directory of a shipped synthetic-world model; fails clearly if it is not there."""
    if name not in SHIPPED_MODELS:
        raise BadInput(f"{name!r} is not a shipped model; choose one of {SHIPPED_MODELS} or give a directory.")
    if not has_synthvlm(name):
        raise FileNotFoundError(
            f"the trained synthetic-world model is not in {ASSETS / name}: the package data is missing; reinstall "
            f"with `pip install -e .` from a full clone. Or pass --model DIR with a model of your own, e.g. one from "
            f"`python tools/train_synthvlm.py --export DIR` (the shipped model's recipe; CPU runs are not "
            f"bit-identical, so check a retrained model's sensitivity as tools/TRAINING.md does)"
        )
    return ASSETS / name


def resolve_model(value) -> Path:
    """A --model argument: None is the shipped synthvlm, a shipped model's name is its directory, else a path."""
    if value is None:
        return synthvlm_dir()
    if str(value) in SHIPPED_MODELS and not Path(value).exists():
        return synthvlm_dir(str(value))
    return Path(value)


@dataclass(frozen=True)
class Question:
    image: object
    qa: QA


@dataclass
class EvalResult:
    """Per-question outcomes plus the answer-position log-probabilities (reusable as a KL reference)."""

    kinds: list[str]
    correct: list[bool]
    answer_logprobs: list[torch.Tensor] = field(repr=False)
    mean_kl: float | None = None
    # per question: KL(FP || model) summed over its answer tokens (with a reference; for paired statistics)
    question_kl: list[float] | None = field(default=None, repr=False)

    @property
    def answer_lengths(self) -> list[int]:
        return [len(lp) for lp in self.answer_logprobs]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct)

    @property
    def per_kind(self) -> dict[str, float]:
        hits, totals = defaultdict(int), defaultdict(int)
        for kind, ok in zip(self.kinds, self.correct):
            hits[kind] += ok
            totals[kind] += 1
        return {kind: hits[kind] / totals[kind] for kind in sorted(totals)}

    def summary(self) -> dict:
        counts = defaultdict(int)
        for kind in self.kinds:
            counts[kind] += 1
        return {"accuracy": self.accuracy, "per_kind": self.per_kind, "questions": len(self.correct),
                "questions_per_kind": dict(sorted(counts.items())), "mean_kl": self.mean_kl}

    def table(self) -> str:
        rows = [f"| {kind} | {acc:.3f} |" for kind, acc in self.per_kind.items()]
        rows.append(f"| **overall** ({len(self.correct)} questions) | **{self.accuracy:.3f}** |")
        if self.mean_kl is not None:
            rows.append(f"| mean answer KL vs FP | {self.mean_kl:.3g} |")
        return "\n".join(["| question kind | exact match |", "|---|---|", *rows])


def questions_of(samples: list[Sample]) -> list[Question]:
    return [Question(sample.image, qa) for sample in samples for qa in sample.qa]


def encode_scored(processor, questions: list[Question]):
    """Left-padded batch of prompt + gold answer + <|im_end|>; returns it and each row's answer length."""
    tokenizer = processor.tokenizer
    texts, lengths = [], []
    for q in questions:
        prompt = processor.apply_chat_template([user_turn(q.image, q.qa.question)], tokenize=False,
                                               add_generation_prompt=True)
        answer = f"{q.qa.answer} {IM_END}"
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if tokenizer.unk_token_id in ids:
            raise ValueError(f"answer {q.qa.answer!r} has words outside the tokenizer's vocabulary")
        texts.append(prompt + answer)
        lengths.append(len(ids))
    if tokenizer.padding_side != "left":
        raise ValueError("scoring reads answers at the end of each row; the tokenizer must pad on the left")
    batch = processor(text=texts, images=[q.image for q in questions], padding=True, return_tensors="pt")
    return batch, lengths


def answer_logprobs_and_hits(logits: torch.Tensor, input_ids: torch.Tensor, lengths: list[int]):
    """Per row: log-probs at the positions predicting its last `length` tokens, and whether all argmaxes hit.

    Rows are left padded, so row i's answer occupies its final lengths[i] tokens.
    """
    seq = input_ids.shape[1]
    logprobs, hits = [], []
    for row, k in enumerate(lengths):
        predicted = logits[row, seq - k - 1: seq - 1].float().log_softmax(-1)
        gold = input_ids[row, seq - k:]
        logprobs.append(predicted)
        hits.append(bool((predicted.argmax(-1) == gold).all()))
    return logprobs, hits


def position_kl(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> torch.Tensor:
    """KL(reference || candidate) at every answer position of every question, in question order; both are
    given as log-probabilities."""
    if len(reference) != len(candidate) or any(r.shape != c.shape for r, c in zip(reference, candidate)):
        raise ValueError("the reference was computed on different questions; evaluate both models on the same "
                         "samples (same --n and seed)")
    ref, cand = torch.cat(reference), torch.cat(candidate)
    return F.kl_div(cand, ref, log_target=True, reduction="none").sum(-1)


def answer_margins(answer_logprobs: list[torch.Tensor], questions: list[Question], tokenizer) -> list[float]:
    """Per question, teacher-forced (an EvalResult's answer_logprobs on those questions): the smallest, over its
    answer tokens and the end token, of log p(gold) minus the largest other log p. Positive exactly where the
    answer is right; near 0 where a small change flips it."""
    margins = []
    for question, logprobs in zip(questions, answer_logprobs, strict=True):
        gold = torch.tensor(tokenizer(f"{question.qa.answer} {IM_END}", add_special_tokens=False)["input_ids"])
        if len(gold) != len(logprobs):
            raise ValueError(f"answer {question.qa.answer!r} has {len(gold) - 1} tokens but was scored over "
                             f"{len(logprobs) - 1}: pass the log-probabilities evaluated on these questions")
        rows = torch.arange(len(gold))
        others = logprobs.clone()
        others[rows, gold] = -math.inf
        margins.append((logprobs[rows, gold] - others.max(-1).values).min().item())
    return margins


def mean_kl(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> float:
    """Mean over all answer positions of KL(reference || candidate), both given as log-probabilities."""
    return float(position_kl(reference, candidate).mean())


def question_kl(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> list[float]:
    """Per question: KL(reference || candidate) summed over its answer positions."""
    per_position = position_kl(reference, candidate)
    return [float(part.sum()) for part in per_position.split([len(r) for r in reference])]


def hf_model(model):
    """The transformers model inside a GPTQModel wrapper, or the model itself."""
    from transformers import PreTrainedModel

    return model if isinstance(model, PreTrainedModel) else model.model


@torch.no_grad()
def evaluate(model, processor, samples: list[Sample], *, reference_logits=None,
             batch_size: int = DEFAULT_BATCH_SIZE) -> EvalResult:
    """Exact-match accuracy (per kind and overall) of `model` on every question of `samples`.

    `model` is a transformers model or a GPTQModel wrapper. `reference_logits` is the FP model's
    EvalResult (or its `answer_logprobs`) on the same samples; when given, `mean_kl` is filled in.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    questions = questions_of(samples)
    if not questions:
        raise ValueError("no questions to evaluate: pass at least one sample")
    net = hf_model(model).eval()
    logprobs, hits = [], []
    for start in range(0, len(questions), batch_size):
        batch, lengths = encode_scored(processor, questions[start:start + batch_size])
        batch = batch.to(net.device)
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(net.dtype)
        logits = net(**batch).logits
        lp, h = answer_logprobs_and_hits(logits, batch["input_ids"], lengths)
        logprobs += [x.cpu() for x in lp]
        hits += h
    result = EvalResult(kinds=[q.qa.kind for q in questions], correct=hits, answer_logprobs=logprobs)
    if reference_logits is not None:
        ref = reference_logits.answer_logprobs if isinstance(reference_logits, EvalResult) else reference_logits
        result.mean_kl = mean_kl(ref, logprobs)
        result.question_kl = question_kl(ref, logprobs)
    return result


def is_quantized_checkpoint(model_dir) -> bool:
    return is_quantized(read_config(model_dir), model_dir)


def load_for_eval(model_dir, *, dtype: torch.dtype = torch.float32, flag: str = "--model"):
    """(model, processor) for an FP transformers directory or a GPTQ checkpoint saved by GPTQModel.

    A GPTQ checkpoint runs in `dtype` if that is fp16 or bf16, else in bf16: GPTQModel's TorchLinear,
    the only CPU kernel for 2 and 3 bits, computes in half precision only.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = Path(model_dir)
    config = check_model_dir(model_dir, flag)
    processor = AutoProcessor.from_pretrained(model_dir)
    if is_quantized(config, model_dir):
        from gptqmodel import GPTQModel

        half = dtype if dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
        model = GPTQModel.load(str(model_dir), device="cpu", dtype=half)
    else:
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype)
    return model.eval(), processor


def eval_samples(n: int, seed: int = 0, *, image_size: int | None = None,
                 world: str = DEFAULT_WORLD, split: str = "eval") -> list[Sample]:
    """The held-out evaluation split at the model's image size, in the model's world (never used for
    training or tuning). split="select" gives the selection split, on which settings may be chosen."""
    kw = {} if image_size is None else {"image_size": image_size}
    return make_samples(split, n, seed, world=world, **kw)


def world_of(model) -> str:
    """The synthetic world a model was trained on."""
    return world_of_config(hf_model(model).config)


def world_of_config(config) -> str:
    """The synthetic world of a model's config (the training script writes it there; models without it are the
    original world's)."""
    return getattr(config, "synth_world", DEFAULT_WORLD)


def scored_world(model_world: str, world: str | None = None) -> str:
    """The world whose questions score a model: its own, or `world` where that one speaks the same words at the same
    image size (e.g. deep-meaning: a deep-recall model's meaning questions alone), so the model can read its
    images and say its answers."""
    if world is None or world == model_world:
        return model_world
    ours, theirs = WORLDS[model_world], WORLDS[world]
    if (ours.vocab, ours.image_size) != (theirs.vocab, theirs.image_size):
        raise BadInput(f"the {world} world's words or image size are not the {model_world} world's, which the model "
                       f"was trained on: score it on its own world or on one sharing both")
    return world


def processor_image_size(processor) -> int:
    """Side of the square images the processor was built for (min_pixels = side^2)."""
    return int(math.isqrt(int(processor.image_processor.size["shortest_edge"])))


def evaluate_dir(model_dir, *, n: int, seed: int = 0, reference_dir=None,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> EvalResult:
    """Load and evaluate `model_dir` (FP or GPTQ); with `reference_dir` also the KL against that FP model."""
    if reference_dir is not None:
        check_reference(model_dir, reference_dir)
    model, processor = load_for_eval(model_dir)
    samples = eval_samples(n, seed, image_size=processor_image_size(processor), world=world_of(model))
    reference = None
    if reference_dir is not None:
        ref_model, ref_processor = load_for_eval(reference_dir, flag="--reference")
        if processor_image_size(ref_processor) != processor_image_size(processor):
            raise BadInput(f"--reference {reference_dir} takes {processor_image_size(ref_processor)} px images, "
                           f"--model {processor_image_size(processor)} px: give the model it was quantized from.")
        reference = evaluate(ref_model, ref_processor, samples, batch_size=batch_size)
        del ref_model
    return evaluate(model, processor, samples, reference_logits=reference, batch_size=batch_size)


def check_reference(model_dir, reference_dir) -> None:
    """The KL "vs FP" is meaningful only against the full-precision model `model_dir` was made from."""
    ref_config = check_model_dir(reference_dir, "--reference")
    if is_quantized(ref_config, reference_dir):
        raise BadInput(f"--reference {reference_dir} is a quantized checkpoint; give the full-precision model.")
    mine, theirs = _architecture(read_config(model_dir)), _architecture(ref_config)
    differing = [f"{k} {mine[k]} vs {theirs[k]}" for k in ARCHITECTURE_FIELDS if mine[k] != theirs[k]]
    if differing:
        raise BadInput(f"--reference {reference_dir} is not the model --model {model_dir} was quantized from "
                       f"({', '.join(differing)}).")


def _architecture(config: dict) -> dict:
    text = {**config, **config.get("text_config", {})}
    return {k: text.get(k) for k in ARCHITECTURE_FIELDS}
