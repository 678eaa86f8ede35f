"""A text-only language model of the synthetic VLM's language-model size, trained on real text: the reference
point for issue 15's question "why does GPTQ at 2 bits lose nothing on our VLMs?".

The synthetic worlds' language is about seventy words in fixed templates, and the headroom probe found the
trained models' layer inputs spanning a handful of directions, so GPTQ hides nearly all rounding error where
no input looks (tools/TRAINING.md). A language model trained on real text has to keep many features apart.
The text here is the running Python's standard library source (about 10 MB; no download, the same files for
a given Python version), split by file into train and held-out parts. The same text, split into the synthetic
VLM tokenizer's words (`frequent_words`, `word_stream`), is what tools/train_synthvlm.py's --text-* options train
a VLM's language model on. The functions are side-effect free except `quantize_sequentially`, which rounds a
model's weights in place.
"""
from __future__ import annotations

import hashlib
import sysconfig
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch import nn

from ..rtn import rtn_quantize_weight
from .headroom import gptq_reference, layer_error, linear_input_moments, participation_ratio, top_direction_share

HELD_OUT_EVERY = 20  # about one file in 20 is held out, chosen by a hash of its path
EOS = "<eos>"
SKIPPED_PARTS = {"site-packages", "test", "tests", "idlelib"}  # tests are repetitive; idlelib is an application


def stdlib_files() -> List[Path]:
    """The standard library's .py files, sorted, without third-party packages and test suites."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not SKIPPED_PARTS & set(p.relative_to(root).parts))


def is_held_out(path: Path) -> bool:
    root = Path(sysconfig.get_paths()["stdlib"])
    return int(hashlib.sha1(str(path.relative_to(root)).encode()).hexdigest(), 16) % HELD_OUT_EVERY == 0


def split_texts(files) -> Tuple[List[str], List[str]]:
    """(train, held-out) texts of `files`."""
    train, held = [], []
    for path in files:
        (held if is_held_out(path) else train).append(path.read_text(errors="replace"))
    return train, held


@lru_cache(maxsize=1)
def stdlib_texts() -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(train, held-out) texts of every stdlib file, read once per process (the VLM trainer needs them twice)."""
    train, held = split_texts(stdlib_files())
    return tuple(train), tuple(held)


def train_bpe(texts, vocab_size: int):
    """Byte-level BPE over `texts`, id 0 = EOS (the separator between files)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[EOS]))
    return tokenizer


def encode(tokenizer, texts) -> torch.Tensor:
    """One stream of token ids: each text followed by EOS."""
    eos = tokenizer.token_to_id(EOS)
    ids: List[int] = []
    for text in texts:
        ids += tokenizer.encode(text).ids + [eos]
    return torch.tensor(ids, dtype=torch.long)


def frequent_words(texts, n: int, pre_tokenizer) -> List[str]:
    """The `n` most frequent words of `texts` as `pre_tokenizer` splits them, most frequent first (ties in
    alphabetical order, so the list is the same on every run)."""
    counts = Counter(word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(text))
    return [word for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]]


def word_stream(tokenizer, texts, separator: str) -> torch.Tensor:
    """One stream of `tokenizer`'s ids (a transformers tokenizer; words outside its vocabulary become its unknown
    token): each text followed by `separator`."""
    end = tokenizer.convert_tokens_to_ids(separator)
    ids: List[int] = []
    # the backend directly: the transformers call warns about every text longer than model_max_length
    for encoded in tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False):
        ids += encoded.ids + [end]
    return torch.tensor(ids, dtype=torch.long)


def windows(ids: torch.Tensor, n: int, length: int, seed: int) -> torch.Tensor:
    """`n` windows of `length` tokens at seeded random offsets: a [n, length] batch."""
    if len(ids) <= length:
        raise ValueError(f"a stream of {len(ids)} tokens has no window of {length}: use more text or shorter windows")
    starts = torch.randint(0, len(ids) - length, (n,), generator=torch.Generator().manual_seed(seed))
    return torch.stack([ids[s:s + length] for s in starts.tolist()])


def spread_windows(ids: torch.Tensor, length: int, limit: int) -> torch.Tensor:
    """Up to `limit` non-overlapping windows spread evenly over all of `ids` (the held-out evaluation set: every
    held-out file has its share, not only the first ones)."""
    n = min(limit, len(ids) // length)
    if n < 1:
        raise ValueError(f"a stream of {len(ids)} tokens has no window of {length}: use more text or shorter windows")
    starts = torch.linspace(0, len(ids) - length, n).long() if n > 1 else torch.zeros(1, dtype=torch.long)
    return torch.stack([ids[s:s + length] for s in starts.tolist()])


def _passes(model, batch: torch.Tensor, rows_per_pass: int):
    """`batch` in slices of `rows_per_pass` rows, each on the model's device."""
    device = next(model.parameters()).device
    return (batch[i:i + rows_per_pass].to(device) for i in range(0, len(batch), rows_per_pass))


@torch.no_grad()
def perplexity(model, batch: torch.Tensor, rows_per_pass: int = 16) -> float:
    """exp of the mean next-token loss over the windows (each window's loss weighted equally)."""
    losses = [model(input_ids=rows, labels=rows).loss.item() * len(rows) for rows in _passes(model, batch, rows_per_pass)]
    return float(torch.tensor(sum(losses) / len(batch)).exp())


def layer_linears(layer) -> Dict[str, nn.Linear]:
    """A Qwen2-style decoder layer's seven linears."""
    attention, mlp = layer.self_attn, layer.mlp
    return {"q": attention.q_proj, "k": attention.k_proj, "v": attention.v_proj, "o": attention.o_proj,
            "gate": mlp.gate_proj, "up": mlp.up_proj, "down": mlp.down_proj}


def input_moments(model, layer, batch: torch.Tensor, rows_per_pass: int = 16) -> Dict[str, torch.Tensor]:
    """E[x xᵀ] of each of `layer`'s linears' inputs over every token of `batch`, run through `model` as it is."""
    passes = ({"input_ids": rows} for rows in _passes(model, batch, rows_per_pass))
    return linear_input_moments(layer_linears(layer), model, passes)


@torch.no_grad()
def quantize_sequentially(model, layers, calibration: torch.Tensor, method: str, bits: int,
                          group_size: int = 128) -> List[dict]:
    """Round every linear of `layers` in place, layer by layer as GPTQModel does: "rtn", or "gptq" (the
    reference GPTQ, act-order, damp 0.01) solved on the inputs that reach each layer through the layers already
    rounded. Within a layer all seven linears see its unrounded inputs (a simplification of GPTQModel's
    sub-module order). For GPTQ, one row per linear: participation ratio over its width, the strongest
    direction's share, and its layer error next to RTN W4's on the same inputs."""
    if method not in ("rtn", "gptq"):
        raise ValueError(f"method={method!r} must be 'rtn' or 'gptq'")
    rows = []
    for index, layer in enumerate(layers):
        moments = input_moments(model, layer, calibration) if method == "gptq" else None
        for name, linear in layer_linears(layer).items():
            weight = linear.weight.double()
            if moments is None:
                quantized = rtn_quantize_weight(weight, bits, group_size)
            else:
                h = moments[name]
                quantized = gptq_reference(weight, h, bits, group_size)
                rows.append({"linear": f"{index}.{name}", "participation": participation_ratio(h) / weight.shape[1],
                             "top_share": top_direction_share(h), "error": layer_error(weight, quantized, h),
                             "rtn4_error": layer_error(weight, rtn_quantize_weight(weight, 4, group_size), h)})
            linear.weight.copy_(quantized.to(linear.weight.dtype))
    return rows

