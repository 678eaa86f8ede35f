"""What an image contains: a few shapes and maybe a short text, each in its own cell of a 3x3 grid.

Scenes are sampled from a curriculum stage (how many objects, which sizes, how often text appears) so the
training script can start with one big object and end with the full, evaluation-time distribution.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from vlmq_gptqmodel.synth.world.facts import FACT_WORDS, FactTable
from vlmq_gptqmodel.synth.world.vocab import COLOURS, GLYPHS, GRID_SIZE, NAMES, NAMES_VOCAB, SHAPES, SIZES, VOCAB

# The kinds the curriculum trains and the evaluation asks. language.py can also ask "count" and "exists"
# questions; a from-scratch model of the shipped size did not learn them on CPU (tools/TRAINING-history.md).
QUESTION_KINDS = ("colour", "shape", "position", "text")
MAX_GLYPHS = 4  # the longest text any world renders (the training script's per-tile glyph-place labels)


@dataclass(frozen=True)
class Stage:
    """One curriculum stage: the scene distribution and the question kinds (plus captions) it trains."""

    min_objects: int
    max_objects: int
    sizes: tuple[str, ...]
    text_probability: float
    kinds: tuple[str, ...]
    captions: bool
    glyphs: tuple[int, int] = (2, 3)  # shortest and longest text
    names: bool = False  # prompts start with the scene's colour -> name list (the names world)
    contrast: tuple[float, float] = (1.0, 1.0)  # each item's contrast against the background, drawn uniformly
    lit: bool = True  # the background's lighting, which tells position (render.py); False: a flat background
    facts: FactTable | None = None  # texts are the table's entries, and captions say what they mean (facts.py)


# Stage 1: one big shape, "what colour/shape". Stage 2: two or three objects of both sizes, so the colour
# or shape asked about has to be found among them (the binding step; run 2 phase G in tools/TRAINING-history.md).
# The last stage adds position and text questions, text in half the images, and captions (every
# object's size, colour, shape and place, in reading order); it is the evaluation and calibration
# distribution.
STAGES = (
    Stage(1, 1, ("big",), 0.0, ("colour", "shape"), False),
    Stage(2, 3, SIZES, 0.0, ("colour", "shape"), False),
    Stage(1, 3, SIZES, 0.5, QUESTION_KINDS, True),
)
FINAL_STAGE = len(STAGES)  # the default world's; final_stage(world) for any world

# The "deep" world (the headroom yardstick, shipped as synthvlm-deep): its final distribution has two to four
# objects and text in most images, three or four glyphs long, so more answers need several tokens right.
# Before it, a reading stage (one or two objects, text in every image, only position and text questions):
# without it, text answers were still all wrong after 800 final-stage steps, where only about 4 of a step's
# 24 rows asked for text (tools/TRAINING.md).
DEEP_STAGES = STAGES[:2] + (
    Stage(1, 2, SIZES, 1.0, ("position", "text"), False, glyphs=(3, 4)),
    Stage(2, 4, SIZES, 0.7, QUESTION_KINDS, True, glyphs=(3, 4)),
)

# The "names" world: the deep world's scenes and questions, every prompt prefixed with a list naming the scene's
# colours, and "what is the name of the <shape> ?" (vocab.py). Its stage 4 teaches the copy with one to three
# objects before the final distribution adds it to the deep world's questions and captions.
NAMES_STAGES = DEEP_STAGES[:3] + (
    Stage(1, 3, SIZES, 0.0, ("colour", "name"), False, names=True),
    replace(DEEP_STAGES[3], kinds=QUESTION_KINDS + ("name",), names=True),
)
# The "faint" world (issue 15): the deep world with each object and text drawn at a contrast against the background
# from FAINT_CONTRAST in its final stage. On the deep world the trained answers' margins were 2-7 nats (the
# median answer's log-probability lead) and GPTQ at W2 moved them by well under that, so exact match could not
# fall: faint items make answers the model only just gets right, where small weight errors flip them. The
# range is a first choice, to be set on the selection split once a model is trained (FP exact match >= 0.85).
FAINT_CONTRAST = (0.15, 1.0)
FAINT_STAGES = DEEP_STAGES[:3] + (replace(DEEP_STAGES[3], contrast=FAINT_CONTRAST),)
# The same change to the shipped model's world: a quick test of the idea (fine-tuning the shipped model into it
# takes minutes on the CPU), not a yardstick (4 layers, 64 image tokens).
SYNTHVLM_FAINT_STAGES = STAGES[:2] + (replace(STAGES[2], contrast=FAINT_CONTRAST),)
# The shipped world with a flat background in its final stage: no lighting says where an object is, so position
# answers must come from where its image token sits (the language model's rotary positions, which q/k rounding
# perturbs) rather than from its colour cast. A quick fine-tuning test of the idea, like synthvlm-faint.
SYNTHVLM_UNLIT_STAGES = STAGES[:2] + (replace(STAGES[2], lit=False),)
# The shipped world with stored knowledge (facts.py): texts are entries of a fixed random table of three-glyph
# texts, captions say what each means, and "what does the text mean ?" asks for it. The table is taught from
# text alone (the training script's --fact-rows); a quick fine-tuning test of knowledge as the source of
# headroom, like synthvlm-faint.
SYNTHVLM_FACTS = FactTable(glyphs=3, count=4096, seed=20261128)
SYNTHVLM_FACTS_STAGES = STAGES[:2] + (
    replace(STAGES[2], text_probability=0.7, kinds=QUESTION_KINDS + ("meaning",), glyphs=(3, 3), facts=SYNTHVLM_FACTS),
)
# The deep world with stored knowledge: its final stage's texts are entries of a table of four-glyph texts (twice
# as many entries as synthvlm-facts', which GPTQ at 3 bits barely touched), in 90 % of the images, so about a
# fifth of the questions ask what a text means.
DEEP_FACTS = FactTable(glyphs=4, count=8192, seed=20261129)
DEEP_FACTS_STAGES = DEEP_STAGES[:3] + (
    replace(DEEP_STAGES[3], text_probability=0.9, kinds=QUESTION_KINDS + ("meaning",), glyphs=(4, 4),
            facts=DEEP_FACTS),
)
# The deep-facts world with a final stage that asks only what needs several tokens right: a text in every image and
# position, text and meaning questions (a third each, against a fifth for meaning in deep-facts, whose colour and
# shape answers a trained model gets right by 7 nats and which rounding never flipped on the selection split:
# benchmarks/results/quality/deep-facts-gpu-select). Meaning answers are where GPTQ lost accuracy there.
DEEP_RECALL_STAGES = DEEP_FACTS_STAGES[:3] + (
    replace(DEEP_FACTS_STAGES[3], text_probability=1.0, kinds=("position", "text", "meaning")),
)
# The deep-recall world's meaning questions alone: what a deep-recall model is scored on for headroom (`quality.py
# --world`). On the selection split, GPTQ W2 cost the text answers (the meaning answers' first four tokens) 1.8
# points and the position answers none, the meaning answers 15.6 (benchmarks/results/quality/deep-recall-select).
DEEP_MEANING_STAGES = DEEP_RECALL_STAGES[:3] + (replace(DEEP_RECALL_STAGES[3], kinds=("meaning",)),)
# 224 px = 8x8 merged 28 px patches = 64 image tokens, about twice a caption conversation's text tokens.
DEFAULT_IMAGE_SIZE = 224
# The deep worlds' images: 392 px = 14x14 = 196 image tokens, about five times a caption's text tokens.
DEEP_IMAGE_SIZE = 392


@dataclass(frozen=True)
class World:
    """Everything a world is: its curriculum (the last stage is its evaluation and calibration distribution),
    the words its tokenizer knows, and the image size its models are trained at."""

    stages: tuple[Stage, ...]
    vocab: tuple[str, ...] = VOCAB
    image_size: int = DEFAULT_IMAGE_SIZE


# Append only: a world's position here seeds its sample streams (samples.sample_rng).
WORLDS = {
    "synthvlm": World(STAGES),
    "deep": World(DEEP_STAGES, image_size=DEEP_IMAGE_SIZE),
    "names": World(NAMES_STAGES, NAMES_VOCAB, DEEP_IMAGE_SIZE),
    "faint": World(FAINT_STAGES, image_size=DEEP_IMAGE_SIZE),
    "synthvlm-faint": World(SYNTHVLM_FAINT_STAGES),
    "synthvlm-unlit": World(SYNTHVLM_UNLIT_STAGES),
    "synthvlm-facts": World(SYNTHVLM_FACTS_STAGES, VOCAB + FACT_WORDS),
    "deep-facts": World(DEEP_FACTS_STAGES, VOCAB + FACT_WORDS, DEEP_IMAGE_SIZE),
    "deep-recall": World(DEEP_RECALL_STAGES, VOCAB + FACT_WORDS, DEEP_IMAGE_SIZE),
    "deep-meaning": World(DEEP_MEANING_STAGES, VOCAB + FACT_WORDS, DEEP_IMAGE_SIZE),
}
DEFAULT_WORLD = "synthvlm"
# Colours the name list adds that no object has, so the list alone does not give the answer away.
ABSENT_NAMED_COLOURS = 1


def get_world(world: str) -> World:
    if world not in WORLDS:
        raise ValueError(f"world={world!r} does not exist; use one of {tuple(WORLDS)}")
    return WORLDS[world]


def final_stage(world: str = DEFAULT_WORLD) -> int:
    """The number of `world`'s last stage: its evaluation and calibration distribution."""
    return len(get_world(world).stages)


def get_stage(stage: int | None, world: str = DEFAULT_WORLD) -> Stage:
    stages = get_world(world).stages
    if stage is None:
        return stages[-1]
    if not 1 <= stage <= len(stages):
        raise ValueError(f"stage={stage} does not exist; use 1..{len(stages)} or None for the final stage")
    return stages[stage - 1]


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    row: int
    col: int
    contrast: float = 1.0  # 1: drawn in its colour; less: blended towards the background grey (render.py)


@dataclass(frozen=True)
class SceneText:
    glyphs: str
    row: int
    col: int
    contrast: float = 1.0


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    text: SceneText | None
    names: tuple[tuple[str, str], ...] = ()  # (colour, name) in the order the prompt lists them
    lit: bool = True  # drawn with the lighting that tells position (Stage.lit)
    facts: FactTable | None = None  # what its text means (Stage.facts)

    def name_of(self, colour: str) -> str:
        return dict(self.names)[colour]

    def items_in_reading_order(self) -> list[SceneObject | SceneText]:
        items = list(self.objects) + ([self.text] if self.text else [])
        return sorted(items, key=lambda item: (item.row, item.col))


def sample_scene(rng: np.random.Generator, stage: Stage) -> Scene:
    """Objects and text in distinct grid cells; shapes, colours and sizes drawn uniformly."""
    has_text = rng.random() < stage.text_probability
    n_objects = int(rng.integers(stage.min_objects, stage.max_objects + 1))
    if n_objects == 0 and not has_text:
        n_objects = 1
    cells = rng.permutation(GRID_SIZE * GRID_SIZE)[: n_objects + has_text]
    objects = tuple(
        SceneObject(
            shape=str(rng.choice(SHAPES)), colour=str(rng.choice(COLOURS)), size=str(rng.choice(stage.sizes)),
            row=int(cell) // GRID_SIZE, col=int(cell) % GRID_SIZE,
        )
        for cell in cells[:n_objects]
    )
    text = None
    if has_text:
        if stage.facts is not None:  # only in the facts worlds: the others' streams stay as they were
            glyphs = stage.facts.keys[int(rng.integers(stage.facts.count))]
        else:
            glyphs = "".join(rng.choice(GLYPHS, size=int(rng.integers(stage.glyphs[0], stage.glyphs[1] + 1))))
        text = SceneText(glyphs, int(cells[-1]) // GRID_SIZE, int(cells[-1]) % GRID_SIZE)
    names = _sample_names(rng, objects) if stage.names else ()
    if stage.contrast != (1.0, 1.0):  # drawn last, and only here: the other worlds' streams stay as they were
        objects = tuple(replace(o, contrast=float(rng.uniform(*stage.contrast))) for o in objects)
        text = text and replace(text, contrast=float(rng.uniform(*stage.contrast)))
    return Scene(objects, text, names, lit=stage.lit, facts=stage.facts)  # no draw: the other worlds' streams stay as they were


def _sample_names(rng: np.random.Generator, objects) -> tuple[tuple[str, str], ...]:
    """Distinct names for the scene's colours and ABSENT_NAMED_COLOURS others, listed in random order."""
    present = sorted({o.colour for o in objects})
    absent = [c for c in COLOURS if c not in present]
    listed = present + [str(c) for c in rng.choice(absent, size=min(ABSENT_NAMED_COLOURS, len(absent)), replace=False)]
    listed = [listed[i] for i in rng.permutation(len(listed))]
    names = rng.choice(NAMES, size=len(listed), replace=False)
    return tuple((colour, str(name)) for colour, name in zip(listed, names))
