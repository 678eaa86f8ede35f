"""Draw a scene: a light, lightly textured background (the redundant vision tokens) with small items on it.

The background is lit from the top left: it darkens and turns greener towards the bottom and shifts from
warm to cool towards the right, as lighting does in photographs. Qwen2-VL's vision tower has only relative (rotary)
positions, so this shading is what lets a small model tell where an object is from the pixels around it.

Each object fits inside one image token: it is drawn (within a pixel) at the centre of the 28 px tile of
Qwen-VL's merged patches nearest its grid cell's centre (its "anchor" tile). Text is one glyph per tile,
in consecutive tiles of the anchor row. So one vision token holds one whole object or glyph and the
other tokens are background. Two earlier layouts were measured (tools/TRAINING-history.md): placed at random, a
from-scratch two-block ViT needed ~2000 steps to tell the shapes apart; centred on tile corners (each
object split over four tokens), count and existence questions stayed at the answer prior for 1000+ steps.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlmq_gptqmodel.synth.world.scene import MAX_GLYPHS, Scene, SceneObject, SceneText
from vlmq_gptqmodel.synth.world.vocab import COLOURS, GLYPHS, GRID_SIZE, SHAPES, SIZES

RGB = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (235, 200, 30), "purple": (140, 60, 180), "orange": (245, 130, 20),
}
TOKEN_PIXELS = 28  # patch 14 x merge 2
# Object side as a fraction of a token tile: big nearly fills it, small covers about a quarter of it.
SIZE_FRACTION = {"small": (0.46, 0.54), "big": (0.80, 0.88)}
JITTER_PIXELS = 1
COLOUR_JITTER = 12
FONT_SIZE = 22  # glyphs about 13 x 15 px, one per 28 px tile
BACKGROUND_GREY = 217  # the middle of the background's base brightness (_background)


# Lighting: brightness falls by DARKENING from top to bottom; red rises and blue falls by TINT left to right;
# green rises by ROW_TINT from top to bottom. The tints are differences between channels, so the random
# overall brightness of an image (and its grey blotches) cannot hide them.
DARKENING = 40.0
TINT = 48.0
ROW_TINT = 48.0


def _background(rng: np.random.Generator, size: int, lit: bool = True) -> np.ndarray:
    """A light colour, shaded by the fixed lighting (unless not `lit`), with faint blotches and pixel noise."""
    base = rng.uniform(212, 222) + rng.uniform(-3, 3, size=3)
    ramp = np.linspace(-0.5, 0.5, size) * lit
    shading = (-DARKENING * ramp[:, None, None] + ROW_TINT * ramp[:, None, None] * np.array([0.0, 1.0, 0.0])
               + TINT * ramp[None, :, None] * np.array([1.0, 0.0, -1.0]))
    coarse = rng.normal(0, 3, size=(6, 6)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))[..., None]
    noise = rng.normal(0, 2, size=(size, size, 3))
    return base + shading + blotches + noise


def _jittered(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1), 0, 255)) for c in rgb)


def faded(rgb: tuple[int, ...], contrast: float) -> tuple[int, ...]:
    """rgb blended towards the background's mean grey: contrast 1 keeps it, 0 would hide it."""
    return tuple(int(round(BACKGROUND_GREY + contrast * (c - BACKGROUND_GREY))) for c in rgb)


def anchor_tile(index: int, cell: float) -> int:
    """Index of the token tile containing grid cell `index`'s centre (along one axis)."""
    return int((index + 0.5) * cell // TOKEN_PIXELS)


def _centred_box(rng: np.random.Generator, tile_row: int, tile_col: int, width: float, height: float):
    """Top-left corner of a width x height box centred, up to the jitter, in token tile (tile_row, tile_col)."""
    jitter = rng.uniform(-JITTER_PIXELS, JITTER_PIXELS, size=2)
    return ((tile_col + 0.5) * TOKEN_PIXELS - width / 2 + jitter[0],
            (tile_row + 0.5) * TOKEN_PIXELS - height / 2 + jitter[1])


def text_tiles(text: SceneText, cell: float, n_tiles: int) -> list[tuple[int, int]]:
    """Tiles of the glyphs: consecutive in the anchor row, centred on the anchor tile, kept inside the image."""
    n = len(text.glyphs)
    start = min(max(0, anchor_tile(text.col, cell) - (n - 1) // 2), n_tiles - n)
    row = anchor_tile(text.row, cell)
    return [(row, start + i) for i in range(n)]


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, rng: np.random.Generator, cell: float) -> None:
    side = TOKEN_PIXELS * rng.uniform(*SIZE_FRACTION[obj.size])
    x, y = _centred_box(rng, anchor_tile(obj.row, cell), anchor_tile(obj.col, cell), side, side)
    fill = faded(_jittered(RGB[obj.colour], rng), obj.contrast)
    box = (x, y, x + side, y + side)
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        draw.rectangle(box, fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x + side / 2, y), (x + side, y + side), (x, y + side)], fill=fill)
    elif obj.shape == "cross":
        arm = side / 3
        draw.rectangle((x + arm, y, x + 2 * arm, y + side), fill=fill)
        draw.rectangle((x, y + arm, x + side, y + 2 * arm), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def _draw_text(draw: ImageDraw.ImageDraw, text: SceneText, rng: np.random.Generator, cell: float,
               n_tiles: int) -> None:
    font = ImageFont.load_default(size=FONT_SIZE)
    shade = faded((int(rng.integers(10, 60)),) * 3, text.contrast)
    for glyph, (tile_row, tile_col) in zip(text.glyphs, text_tiles(text, cell, n_tiles)):
        left, top, right, bottom = font.getbbox(glyph)
        x, y = _centred_box(rng, tile_row, tile_col, right - left, bottom - top)
        draw.text((x - left, y - top), glyph, fill=shade, font=font)


def render_scene(scene: Scene, rng: np.random.Generator, image_size: int) -> Image.Image:
    cell = image_size / GRID_SIZE
    pixels = _background(rng, image_size, scene.lit)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, rng, cell)
    if scene.text is not None:
        _draw_text(draw, scene.text, rng, cell, image_size // TOKEN_PIXELS)
    return image


# What each image token holds, for the training script's per-token auxiliary loss: one column per
# attribute, 0 where the tile holds no such item, else 1 + the attribute's index. "glyph_index" is a glyph's
# place in its text (reading it back means finding the first glyph, then the second, ...).
TILE_ATTRIBUTES = {"colour": COLOURS, "shape": SHAPES, "size": SIZES, "glyph": GLYPHS,
                   "glyph_index": tuple(range(MAX_GLYPHS))}


def item_tiles(item: SceneObject | SceneText, image_size: int) -> list[int]:
    """Row-major indices of the image tokens that hold `item`: an object's one tile, or a text's glyph tiles
    in reading order (the same layout render_scene draws)."""
    cell, n_tiles = image_size / GRID_SIZE, image_size // TOKEN_PIXELS
    if isinstance(item, SceneText):
        return [row * n_tiles + col for row, col in text_tiles(item, cell, n_tiles)]
    return [anchor_tile(item.row, cell) * n_tiles + anchor_tile(item.col, cell)]


def tile_labels(scene: Scene, image_size: int) -> np.ndarray:
    """(n_tiles * n_tiles, len(TILE_ATTRIBUTES)) labels of the image tokens, in row-major tile order (the
    order of Qwen2-VL's merged vision tokens)."""
    n_tiles = image_size // TOKEN_PIXELS
    labels = np.zeros((n_tiles * n_tiles, len(TILE_ATTRIBUTES)), dtype=np.int64)
    for obj in scene.objects:
        labels[item_tiles(obj, image_size)[0], :3] = [
            1 + COLOURS.index(obj.colour), 1 + SHAPES.index(obj.shape), 1 + SIZES.index(obj.size)]
    if scene.text is not None:
        for index, (glyph, tile) in enumerate(zip(scene.text.glyphs, item_tiles(scene.text, image_size))):
            labels[tile, 3:] = [1 + GLYPHS.index(glyph), 1 + index]
    return labels
