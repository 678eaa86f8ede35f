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

# Names of the 3x3 placement grid's cells, indexed [row][column]: always "<row> <column>", so the first word
# answers the row alone and the second the column alone. (The natural names, "left" for the middle row's
# left cell and "top" for the top row's middle one, made the first word depend on both; the model confused
# the middle row with the bottom one there: tools/TRAINING-history.md.)
GRID_SIZE = 3
ROW_WORDS = ("top", "center", "bottom")
COLUMN_WORDS = ("left", "center", "right")
POSITION_NAMES = tuple(tuple(f"{row} {column}" for column in COLUMN_WORDS) for row in ROW_WORDS)
# In the order they first had in the vocabulary, which fixes their token ids (checkpoints depend on them).
POSITION_WORDS = ("top", "left", "right", "center", "bottom")

FUNCTION_WORDS = (
    "a", "an", "the", "is", "are", "there", "what", "how", "many", "where", "does", "say",
    "colour", "shape", "object", "text", "image", "describe", "and", "yes", "no", "?", ".", ",",
)

VOCAB = tuple(
    dict.fromkeys(
        FUNCTION_WORDS + SHAPES + tuple(SHAPE_PLURALS.values()) + COLOURS + SIZES + NUMBER_WORDS + GLYPHS
        + POSITION_WORDS
    )
)

# The "names" world's extra words. Its prompts start with a list that gives each colour of the scene (and one
# absent colour) a name, "red is n017 , blue is n203 ." and it asks "what is the name of the circle ?": the
# answer is copied from the list once the image says the circle is red. Many token identities in the text,
# as real prompts have, instead of a vocabulary of about seventy words. Appended after VOCAB, so the words
# the other worlds share keep their token ids (a names-world run may start from a deep-world checkpoint).
NAME_COUNT = 256
NAMES = tuple(f"n{i:03d}" for i in range(NAME_COUNT))
NAMING_WORDS = ("name", "of")
NAMES_VOCAB = VOCAB + NAMING_WORDS + NAMES
