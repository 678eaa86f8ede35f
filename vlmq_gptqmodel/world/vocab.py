"""Every word the synthetic world's language can use.

The tokenizer is word-level, so a word missing here would become <unk>; tests check that every caption,
question and answer the generator can produce is made of these words only.
"""

SHAPES = ("circle", "square", "triangle", "cross")
SHAPE_PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "big")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
# Glyphs the rendered text is made of (hexadecimal: digits plus A-F), each read back as one word.
GLYPHS = tuple("0123456789ABCDEF")

# Names of the 3x3 placement grid's cells, indexed [row][column]: one or two words each.
GRID_SIZE = 3
POSITION_NAMES = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)

FUNCTION_WORDS = (
    "a", "an", "the", "is", "are", "there", "what", "how", "many", "where", "does", "say",
    "colour", "shape", "object", "text", "image", "describe", "and", "yes", "no", "?", ".", ",",
)

VOCAB = tuple(
    dict.fromkeys(
        FUNCTION_WORDS + SHAPES + tuple(SHAPE_PLURALS.values()) + COLOURS + SIZES + NUMBER_WORDS + GLYPHS
        + tuple(word for row in POSITION_NAMES for name in row for word in name.split())
    )
)
