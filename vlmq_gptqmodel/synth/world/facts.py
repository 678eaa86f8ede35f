"""The facts worlds' stored knowledge: a fixed random table from glyph texts to words ("9 6 A means w0412").

Nothing in a text's glyphs predicts its word, so a model has to store every entry in its weights, as a real VLM
stores what a sign, a logo or a landmark refers to. The training script teaches the table from text alone
(`--fact-rows`: windows of entries, the way a language model learns facts from its pretraining text); the
images then ask for it: "what does the text mean ?" is answered by reading the text and recalling its entry.
Stored knowledge is what 2-bit rounding destroys first in language models; every answer the other worlds ask
for is computed from the image by a few generic circuits, which GPTQ kept intact (tools/TRAINING.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from vlmq_gptqmodel.synth.world.vocab import GLYPHS

MEANS = "means"
FACT_VALUE_COUNT = 1024  # the words entries can name; several keys share one
FACT_VALUES = tuple(f"w{i:04d}" for i in range(FACT_VALUE_COUNT))
FACT_WORDS = ("mean", MEANS) + FACT_VALUES  # what the facts worlds add to the vocabulary


@dataclass(frozen=True)
class FactTable:
    """`count` distinct texts of `glyphs` glyphs, each naming one of FACT_VALUES; fixed by `seed`."""

    glyphs: int
    count: int
    seed: int

    def __post_init__(self):
        if not 1 <= self.count <= len(GLYPHS) ** self.glyphs:
            raise ValueError(f"a table of {self.count} entries needs 1..{len(GLYPHS) ** self.glyphs} "
                             f"distinct texts of {self.glyphs} glyphs")

    @property
    def entries(self) -> dict[str, str]:
        return _entries(self)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def meaning_of(self, glyphs: str) -> str:
        if glyphs not in self.entries:
            raise ValueError(f"text {glyphs!r} is not one of the table's {self.count} entries")
        return self.entries[glyphs]

    def statement(self, glyphs: str) -> str:
        """An entry as captions, answers and the training text say it: "9 6 A means w0412"."""
        return f"{' '.join(glyphs)} {MEANS} {self.meaning_of(glyphs)}"


@lru_cache(maxsize=None)
def _entries(table: FactTable) -> dict[str, str]:
    rng = np.random.default_rng(table.seed)
    codes = rng.choice(len(GLYPHS) ** table.glyphs, size=table.count, replace=False)
    values = rng.integers(0, FACT_VALUE_COUNT, size=table.count)
    base = len(GLYPHS)
    texts = ("".join(GLYPHS[int(code) // base ** place % base] for place in reversed(range(table.glyphs)))
             for code in codes)
    return {text: FACT_VALUES[int(value)] for text, value in zip(texts, values)}
