"""The lexicon world's fixed table: every two-glyph word means one colour-and-shape pair ("4 A" means "red circle").

The table is random (a fixed seed), so nothing in a word's glyphs predicts its meaning: a model has to store
all 256 entries in its weights, as a real VLM stores what a sign, a logo or a landmark refers to. Stored facts
are where quantization is known to hurt language models first; the deep and faint worlds asked only for what
the image shows, which small models learned with margins that 2-bit GPTQ never reached (tools/TRAINING.md).
"""
from __future__ import annotations

from itertools import product

import numpy as np

from vlmq_gptqmodel.synth.world.vocab import COLOURS, GLYPHS, SHAPES

LEXICON_GLYPHS = 2  # words of the table: every two-glyph text, 16 x 16 = 256 of them
LEXICON_SEED = 20261127  # fixes the table; a model trained on one table cannot answer another
MEANINGS = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)  # 24 answers, two words each


def _table() -> dict[str, str]:
    words = ["".join(pair) for pair in product(GLYPHS, repeat=LEXICON_GLYPHS)]
    # balanced: each meaning names 10 or 11 words, so no answer is a better guess than another
    order = np.random.default_rng(LEXICON_SEED).permutation(len(words))
    return {words[i]: MEANINGS[rank % len(MEANINGS)] for rank, i in enumerate(order)}


LEXICON = _table()


def meaning_of(glyphs: str) -> str:
    if glyphs not in LEXICON:
        raise ValueError(f"text {glyphs!r} is not in the lexicon: its words are the {len(LEXICON)} texts of "
                         f"{LEXICON_GLYPHS} glyphs")
    return LEXICON[glyphs]
