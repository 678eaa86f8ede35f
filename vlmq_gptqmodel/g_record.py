"""Opt-in copy of the token weights G that a VLMQ run computes, for pictures and diagnostics.

A run keeps only the current layer's G (glue/processors.py replaces it when the next layer starts). A
recorder handed to `quantize(..., method="vlmq", vlmq_record=GRecorder(...))` keeps copies of the layers
and projections it names, together with each calibration batch's token ids, so that the caller can find
its own sample's G after the run. Knows nothing about GPTQModel.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class RecordedBatch:
    """What the run saw of one calibration batch: a fingerprint of all its tensors, its token ids [B, S],
    vision-token mask [B, S] and, for Qwen-VL, the (t, h, w) patch grid of each image in it."""

    fingerprint: str
    input_ids: Tensor
    vision: Tensor
    image_grid_thw: Optional[Tensor]


def fingerprint(batch) -> str:
    """A digest of every tensor of a prepared batch: samples with the same text and different images share
    their token ids, so the pixels must be part of what identifies a sample."""
    digest = hashlib.sha1()
    for key in sorted(batch.keys()):
        value = batch[key]
        if isinstance(value, Tensor):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class GRecorder:
    layers: Tuple[int, ...]
    projections: Tuple[str, ...]
    batches: List[RecordedBatch] = field(default_factory=list)
    # (layer, projection) -> one [B, S] float32 tensor per calibration batch, exactly as the run weighted X
    g: Dict[Tuple[int, str], List[Tensor]] = field(default_factory=dict)

    def record_batches(self, prepared_batches: Iterable, vision: List[Tensor]) -> None:
        self.batches = [
            RecordedBatch(fingerprint(batch), batch["input_ids"].cpu(), v.cpu(),
                          batch["image_grid_thw"].cpu() if "image_grid_thw" in batch else None)
            for batch, v in zip(prepared_batches, vision)
        ]

    def record_layer(self, layer_index: int, weights: Dict[str, List[Tensor]]) -> None:
        if layer_index not in self.layers:
            return
        for projection in self.projections:
            if projection in weights:
                self.g[(layer_index, projection)] = [w.detach().clone() for w in weights[projection]]

    def batch_of(self, prepared_batch) -> int:
        """Index of the run's calibration batch that is `prepared_batch` (prepared as the run prepares its
        calibration data: GPTQModel's `model.prepare_dataset`)."""
        wanted = fingerprint(prepared_batch)
        for index, batch in enumerate(self.batches):
            if batch.fingerprint == wanted:
                return index
        raise LookupError("the sample is not among the run's calibration batches")

    def weights(self, layer_index: int, projection: str, batch_index: int) -> Tensor:
        key = (layer_index, projection)
        if key not in self.g:
            raise LookupError(f"the run recorded no G for layer {layer_index} {projection} "
                              f"(recorded: {sorted(self.g) or 'none'})")
        return self.g[key][batch_index]
