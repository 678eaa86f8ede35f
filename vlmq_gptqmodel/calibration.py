"""Calibration data: the paper's ShareGPT4V / COCO-caption records, read with `datasets`, turned into
the chat conversations GPTQModel's Qwen-VL and LLaVA(-OneVision) paths consume, and fitted to a maximum
sequence length (the paper's is per family: `families.Family.calibration_length`).

A record is `{"image": <path | PIL image | datasets Image>, "conversations": [{"from": "human",
"value": "<image>\\nDescribe ..."}, {"from": "gpt", "value": "A man ..."}]}`; `{"image": ..., "caption":
"..."}` is accepted too. Sources: a local .json / .jsonl file, a folder written by
`Dataset.save_to_disk`, or a `datasets.Dataset` / `DatasetDict` already in memory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Union

from PIL import Image

from .errors import BadInput

DEFAULT_PROMPT = "Describe the image."
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def conversation(image, prompt: str, answer: str) -> list:
    """One image+text calibration sample in GPTQModel's chat format (Qwen-VL's; LLaVA's reads the same)."""
    return [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


def load_records(source, split: str = "train"):
    """A `datasets.Dataset` from a .json/.jsonl file, a save_to_disk folder, or a Dataset(Dict)."""
    import datasets

    if isinstance(source, datasets.DatasetDict):
        return _pick_split(source, split)
    if isinstance(source, datasets.Dataset):
        return source
    path = Path(os.fspath(source))
    if not path.exists():
        raise FileNotFoundError(f"calibration source {path} does not exist (give a .json/.jsonl file or a "
                                "folder written by datasets' save_to_disk).")
    if path.is_dir():
        return load_records(datasets.load_from_disk(str(path)), split)
    if path.suffix not in (".json", ".jsonl"):
        raise BadInput(f"calibration file {path}: expected .json or .jsonl records "
                       '({"image": ..., "conversations": [...]}).')
    if path.stat().st_size == 0:
        raise BadInput(f"calibration file {path} is empty; give a .json list or .jsonl lines of records.")
    try:
        return datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as e:  # noqa: BLE001 - datasets wraps parse errors in several exception types
        raise BadInput(_unreadable_json(path, e)) from e


def _unreadable_json(path: Path, error: Exception) -> str:
    """Why `datasets` could not read a calibration file, in the user's terms (read again only on failure)."""
    import json

    text = path.read_text(errors="replace").strip()
    try:
        lines = [line for line in text.splitlines() if line.strip()]
        records = json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in lines]
    except ValueError as e:
        return f"calibration file {path} is not valid JSON ({e}); fix the file or regenerate it."
    if not records:
        return f"calibration file {path} holds no records; give at least one {{\"image\": ..., ...}} record."
    return f"calibration file {path} could not be read as records ({type(error).__name__}: {error})."


def _pick_split(dd, split: str):
    if split not in dd:
        raise ValueError(f"calibration dataset has splits {list(dd)}; choose one with split=...")
    return dd[split]


def records_to_conversations(records, image_root: Optional[Union[str, Path]] = None,
                             prompt: str = DEFAULT_PROMPT) -> List[list]:
    """ShareGPT4V / COCO-caption records -> chat conversations with the image as the first user item.

    Relative image paths are resolved against `image_root`. Only the first human/gpt exchange of a
    record is used (ShareGPT4V's captions have exactly one)."""
    columns = set(records.column_names)
    if "image" not in columns or not ({"conversations", "caption"} & columns):
        raise ValueError(f"calibration records need an 'image' column and a 'conversations' or 'caption' "
                         f"column; found {sorted(columns)}.")
    out = []
    for i, rec in enumerate(records):
        image = _resolve_image(rec["image"], image_root, i)
        if rec.get("conversations"):
            question, answer = _first_exchange(rec["conversations"], i)
        else:
            question, answer = prompt, rec["caption"]
        out.append(conversation(image, question or prompt, answer))
    return out


def _resolve_image(value, image_root, index: int):
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and value.get("bytes") is not None:  # datasets Image(decode=False)
        import io

        return Image.open(io.BytesIO(value["bytes"]))
    if isinstance(value, dict) and value.get("path"):
        value = value["path"]
    if not isinstance(value, str) or not value:
        raise ValueError(f"record {index}: 'image' must be a path or an image, got {type(value).__name__}.")
    if value.startswith(("http://", "https://")):
        raise ValueError(f"record {index}: image {value} is a URL; calibration is offline, download it first.")
    path = Path(value)
    if not path.is_absolute() and image_root is not None:
        path = Path(image_root) / path
    if not path.exists():
        raise FileNotFoundError(f"record {index}: image {path} not found (set image_root= / --image-root).")
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError) as e:  # PIL raises either for a corrupt file
        raise BadInput(f"record {index}: image {path} is not a readable image ({e}); replace it or drop the record.") from e
    return str(path)


def _first_exchange(turns, index: int):
    question = answer = None
    for turn in turns:
        role = ROLES.get(turn.get("from") or turn.get("role"))
        text = (turn.get("value") or turn.get("content") or "").replace("<image>", "").strip()
        if role == "user" and question is None:
            question = text
        elif role == "assistant" and question is not None:
            answer = text
            break
    if answer is None:
        raise ValueError(f"record {index}: 'conversations' has no human turn followed by a gpt turn.")
    return question, answer


@dataclass
class FitReport:
    kept: int = 0
    truncated: List[int] = field(default_factory=list)      # text tail cut, vision segment intact
    dropped: List[int] = field(default_factory=list)        # vision segment would be cut: removed
    unfittable: List[int] = field(default_factory=list)     # chat-template tokens alone exceed the limit
    shortest_dropped: Optional[int] = None                  # tokens up to the end of a dropped sample's vision segment, least

    def __str__(self) -> str:
        text = (f"calibration: kept {self.kept} samples ({len(self.truncated)} with their text shortened), "
                f"dropped {len(self.dropped)} whose vision tokens would be cut by the length limit")
        if self.unfittable:
            text += f" and {len(self.unfittable)} that do not fit even without their text"
        return text


def fit_to_length(conversations: Iterable[list], processor, max_length: int):
    """The paper's rule (Appendix E.1): at a maximum sequence length, drop every sample whose
    vision-token segment would be cut; shorten the text at the end of the others until they fit
    (GPTQModel re-tokenizes conversations, so the cut is made in words, not tokens).
    Returns (kept conversations, FitReport)."""
    if max_length <= 0:
        raise ValueError(f"max_length={max_length} must be positive.")
    vision_ids = {processor.tokenizer.convert_tokens_to_ids(t)
                  for t in (processor.image_token, getattr(processor, "video_token", None)) if t}
    kept, report = [], FitReport()
    for i, conv in enumerate(conversations):
        ids = _token_ids(processor, conv)
        last_vision = max((p for p, t in enumerate(ids) if t in vision_ids), default=-1)
        if last_vision + 1 > max_length:
            report.dropped.append(i)
            report.shortest_dropped = min(last_vision + 1, report.shortest_dropped or last_vision + 1)
            continue
        if len(ids) > max_length:
            conv = _shorten_text(processor, conv, max_length)
            if conv is None:
                report.unfittable.append(i)
                continue
            report.truncated.append(i)
        kept.append(conv)
    report.kept = len(kept)
    return kept, report


def _token_ids(processor, conv) -> List[int]:
    # the same template call as GPTQModel's Qwen-VL prepare_dataset, so lengths match what it feeds (its LLaVA
    # prepare_dataset tokenizes inside apply_chat_template, which gives the same ids: tests/core/test_calibration.py)
    text = processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    images = [_open(item["image"]) for turn in conv for item in turn["content"] if item.get("type") == "image"]
    return processor(text=[text], images=images or None, return_tensors="pt")["input_ids"][0].tolist()


def _open(image):
    return image if isinstance(image, Image.Image) else Image.open(image).convert("RGB")


def _shorten_text(processor, conv, max_length: int):
    """Cut words from the end of the conversation's text (last text item first) until it fits,
    keeping the longest prefix that does (binary search); None if no text can be cut far enough."""
    slots = [(t, i) for t, turn in enumerate(conv) for i, item in enumerate(turn["content"]) if item.get("type") == "text"]
    words = {slot: conv[slot[0]]["content"][slot[1]]["text"].split() for slot in slots}
    keep = {slot: len(w) for slot, w in words.items()}

    def build():
        new = [dict(turn, content=list(turn["content"])) for turn in conv]
        for (t, i), n in keep.items():
            new[t]["content"][i] = dict(new[t]["content"][i], text=" ".join(words[(t, i)][:n]))
        return new

    def fits() -> bool:
        return len(_token_ids(processor, build())) <= max_length

    for slot in reversed(slots):
        full, keep[slot] = keep[slot], 0
        if fits():
            lo, hi = 0, full
            while lo < hi:
                keep[slot] = (lo + hi + 1) // 2
                lo, hi = (keep[slot], hi) if fits() else (lo, keep[slot] - 1)
            keep[slot] = lo
            return build()
    return None
