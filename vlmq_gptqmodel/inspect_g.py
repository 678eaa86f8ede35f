"""`vlmq inspect`: one sample's token weights G as a VLMQ quantization run computed them.

The sample (an image, a question and optionally an answer) is a calibration sample of a real VLMQ run,
the same `quantize_model` call `vlmq quantize` makes; a g_record.GRecorder keeps that run's G of the
chosen layer and projection, and `capture` picks out the sample's tokens. Nothing is recomputed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from .config import VLMQConfig
from .errors import BadInput, RunFailed
from .families import QWEN_VL, family_of
from .g_record import GRecorder


@dataclass(frozen=True)
class SampleG:
    layer: int
    projection: str
    policy: str                       # how the run made this layer's G (its report's policy or source)
    grid: Tuple[int, int]             # (rows, columns) of merged vision tokens over the image
    vision: List[float]               # their g, row-major
    text: List[Tuple[str, float]]     # (token, g) of every other token, in sequence order
    image_position: int               # the image's tokens sit before text[image_position]


def conversation(image, question: str, answer: Optional[str] = None) -> list:
    """A calibration sample in GPTQModel's VL chat form: the image and the question, then the answer if any."""
    turns = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
    if answer:
        turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return turns


def read_image(path):
    """The --image as RGB; BadInput if it is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as e:
        raise BadInput(f"--image {path}: no such file.") from e
    except (UnidentifiedImageError, OSError) as e:
        raise BadInput(f"--image {path} is not a readable image ({e}).") from e


def check_png_out(path, overwrite: bool) -> Path:
    """Refuse, before any work, an --out that is not a .png file path this user can write."""
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise BadInput(f"--out {out}: the picture is a PNG; give a path ending in .png.")
    if out.is_dir():
        raise BadInput(f"--out {out} is a directory; give a file path ending in .png.")
    if out.exists() and not overwrite:
        raise BadInput(f"--out {out} exists; choose a new path or pass --overwrite.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot create the folder of --out {out}: {e.strerror or e}.") from e
    if not os.access(out.parent, os.W_OK):
        raise BadInput(f"cannot write into {out.parent}; choose a folder you can write.")
    return out


def decoder_layer_count(config: dict) -> int:
    return int((config.get("text_config") or {}).get("num_hidden_layers", config.get("num_hidden_layers")))


def default_layer(n_layers: int) -> int:
    """The middle layer, and never layer 0 when there is another: its G is uniform by default (layer0)."""
    return max(1, n_layers // 2) if n_layers > 1 else 0


def check_request(config: dict, layer: Optional[int], projection: Optional[str], cfg: VLMQConfig) -> Tuple[int, str]:
    """(layer, projection) to draw, defaults filled in; BadInput before any work for what cannot be drawn."""
    if family_of(config.get("model_type")) is not QWEN_VL:
        raise BadInput(f"inspect draws Qwen-VL models only ({QWEN_VL.model_types}); this is {config.get('model_type')!r}. "
                       "LLaVA-OneVision spreads an image over anyres tiles (a base tile, a grid of crops, image_newline "
                       "tokens) whose placement on the image is not drawn yet.")
    n = decoder_layer_count(config)
    layer = default_layer(n) if layer is None else layer
    if not 0 <= layer < n:
        raise BadInput(f"--layer {layer}: the model has decoder layers 0-{n - 1}.")
    projection = projection or cfg.targets[0]
    if projection not in cfg.targets:
        raise BadInput(f"--projection {projection}: VLMQ weights only its targets {cfg.targets}; choose one of "
                       "them or add it to --targets.")
    return layer, projection


def capture(model, recorder: GRecorder, sample: list, layer: int, projection: str, tokenizer) -> SampleG:
    """The G that the run behind `model` (quantized with `recorder`) computed for `sample`, one of its
    calibration samples."""
    prepared = model.prepare_dataset([sample], batch_size=1)[0]  # GPTQModel's own preparation, as in the run
    try:
        index = recorder.batch_of(prepared)
        g = recorder.weights(layer, projection, index)[0]
    except LookupError as e:
        raise RunFailed(f"the run's G of the inspected sample was not recorded ({e}); this is a bug.") from e
    batch = recorder.batches[index]
    vision = batch.vision[0]
    grid = _image_grid(batch.image_grid_thw, model.model.config.vision_config.spatial_merge_size, int(vision.sum()))
    ids = batch.input_ids[0]
    text = [(tokenizer.decode([int(i)]), float(w)) for i, w, v in zip(ids, g, vision) if not v]
    first_image = int(vision.nonzero()[0, 0])
    report = next(r for r in model.vlmq_report if r["layer"] == layer)
    return SampleG(layer=layer, projection=projection, policy=report["policy"] or report["source"], grid=grid,
                   vision=g[vision].tolist(), text=text, image_position=int((~vision[:first_image]).sum()))


def _image_grid(image_grid_thw: Optional[torch.Tensor], merge: int, n_vision: int) -> Tuple[int, int]:
    """(rows, columns) of the merged vision tokens of a sample's single image (Qwen-VL: row-major patches)."""
    grids = [] if image_grid_thw is None else image_grid_thw.tolist()
    if len(grids) != 1 or grids[0][0] != 1 or (grids[0][1] // merge) * (grids[0][2] // merge) != n_vision:
        raise RunFailed(f"the sample's image grids {grids} do not hold its {n_vision} vision tokens as one image.")
    return grids[0][1] // merge, grids[0][2] // merge


def run_and_capture(model_dir, sample: list, spec, cfg: VLMQConfig, layer: int, projection: str,
                    extra_calibration: Sequence = ()) -> SampleG:
    """Quantize `model_dir` with VLMQ, calibrating on `sample` and `extra_calibration`, and return the
    sample's G at (layer, projection). The quantized model is not saved."""
    from transformers import AutoTokenizer

    from .runner import quantize_model

    recorder = GRecorder(layers=(layer,), projections=(projection,))
    model = quantize_model(model_dir, [sample, *extra_calibration], spec, "vlmq", cfg, record=recorder)
    return capture(model, recorder, sample, layer, projection, AutoTokenizer.from_pretrained(str(model_dir)))


def title(sample_g: SampleG, spec, cfg: VLMQConfig, what: str, n_calibration: int) -> List[str]:
    """The picture's title lines: what was drawn and from which run."""
    samples = "1 calibration sample" if n_calibration == 1 else f"{n_calibration} calibration samples"
    return [
        f"G of {what} at decoder layer {sample_g.layer}, {sample_g.projection} ({sample_g.policy})",
        f"from a VLMQ({cfg.precursor}) W{spec.bits} g{spec.group_size} run on {samples}: g normalized to mean 1 "
        f"over their tokens, floored at {cfg.min_weight:g}",
    ]
