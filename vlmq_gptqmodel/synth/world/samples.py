"""Seeded train / calibration / evaluation splits and GPTQModel-ready calibration conversations."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from vlmq_gptqmodel.synth.world.language import QA, caption, caption_prompt, questions
from vlmq_gptqmodel.synth.world.render import render_scene
from vlmq_gptqmodel.synth.world.scene import (
    DEFAULT_IMAGE_SIZE, DEFAULT_WORLD, WORLDS, Scene, final_stage, get_stage, sample_scene,
)

# Each split draws from its own seed stream, so no split can ever reproduce another's samples.
SPLIT_STREAMS = {"train": 0, "calib": 1, "eval": 2, "select": 3}  # select: for choosing settings (never eval)


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    caption: str
    qa: list[QA]
    scene: Scene

    @property
    def caption_prompt(self) -> str:
        return caption_prompt(self.scene)


def sample_rng(split: str, seed: int, index: int, stage: int | None,
               world: str = DEFAULT_WORLD) -> np.random.Generator:
    """Sample `index` of a split depends only on (world, split, seed, stage, index), not on how many are
    drawn. The default world keeps the stream it always had; other worlds add their own entropy word."""
    if split not in SPLIT_STREAMS:
        raise ValueError(f"split={split!r} is not one of {tuple(SPLIT_STREAMS)}")
    stage_number = final_stage(world) if stage is None else stage
    words = [SPLIT_STREAMS[split], seed, stage_number, index]
    if world != DEFAULT_WORLD:
        words.append(100 + list(WORLDS).index(world))
    return np.random.default_rng(words)


def make_sample(split: str, index: int, seed: int = 0, *, image_size: int = DEFAULT_IMAGE_SIZE,
                stage: int | None = None, world: str = DEFAULT_WORLD) -> Sample:
    spec = get_stage(stage, world)
    rng = sample_rng(split, seed, index, stage, world)
    scene = sample_scene(rng, spec)
    image = render_scene(scene, rng, image_size)
    return Sample(image=image, caption=caption(scene), qa=questions(scene, rng, spec.kinds), scene=scene)


def make_samples(split: str, n: int, seed: int = 0, *, image_size: int = DEFAULT_IMAGE_SIZE,
                 stage: int | None = None, start: int = 0, world: str = DEFAULT_WORLD) -> list[Sample]:
    """Samples start..start+n-1 of `split`; `stage` picks a curriculum stage (None: the full distribution)."""
    if n < 0 or start < 0:
        raise ValueError(f"n={n} and start={start} must be >= 0")
    if image_size < 84:
        raise ValueError(f"image_size={image_size} is too small for a 3x3 grid of 28 px token tiles; use >= 84")
    return [make_sample(split, start + i, seed, image_size=image_size, stage=stage, world=world)
            for i in range(n)]


def user_turn(image: Image.Image, text: str) -> dict:
    """The image, then the question (or caption prompt), as Qwen-VL chat templates put them. The answer
    position then reads the question's words and picks the matching image token with one attention
    lookup. With the question first, a from-scratch model never learned which of two or three objects a
    question was about (tools/TRAINING-history.md, run 2 phase G): its loss sat at the level of answering about
    a random object, and fell below it within 300 steps once the image came first."""
    return {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}


def assistant_turn(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def caption_conversation(sample: Sample) -> list[dict]:
    return [user_turn(sample.image, sample.caption_prompt), assistant_turn(sample.caption)]


def calibration_conversations(n: int, seed: int = 0, **kw) -> list[list[dict]]:
    """`n` image+caption conversations from the calib split (the paper calibrates on captioned images)."""
    return [caption_conversation(sample) for sample in make_samples("calib", n, seed, **kw)]
