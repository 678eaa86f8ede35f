"""Checks on a model directory given on the command line, made before anything is loaded from it."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import BadInput
from .families import SUPPORTED_MODEL_TYPES

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


def read_config(model_dir, flag: str = "--model") -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise BadInput(f"{flag} {model_dir} has no config.json; give a local model directory (save_pretrained).")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"{flag} {model_dir}: config.json is unreadable ({e}); re-save the model.") from e


def check_model_dir(model_dir, flag: str = "--model") -> dict:
    """config.json of a model directory of a supported type (families.py) whose weight files are all present and readable."""
    config = read_config(model_dir, flag)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise BadInput(f"{flag} {model_dir} is a {model_type!r} model; vlmq takes the model types "
                       f"{SUPPORTED_MODEL_TYPES} (quantize other models with GPTQModel directly).")
    weights = [p for pattern in WEIGHT_PATTERNS for p in sorted(Path(model_dir).glob(pattern))]
    if not weights:
        raise BadInput(f"{flag} {model_dir} has no weight files (*.safetensors or *.bin); copy the whole "
                       "save_pretrained folder.")
    for path in weights:
        _check_readable(path, flag)
    return config


def _check_readable(path: Path, flag: str) -> None:
    """A truncated or corrupt safetensors file fails here, in its header check, not hours into a run."""
    if path.suffix != ".safetensors":
        return
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt"):
            pass
    except Exception as e:  # noqa: BLE001 - SafetensorError is not importable under a stable name
        raise BadInput(f"{flag}: weight file {path} is unreadable ({e}); it may be truncated: copy it again.") from e


def is_quantized(config: dict, model_dir) -> bool:
    """GPTQModel writes quantization_config into config.json; AutoGPTQ-style checkpoints have only
    quantize_config.json."""
    return "quantization_config" in config or (Path(model_dir) / "quantize_config.json").is_file()
