"""Draw a scene: a light, lightly textured background (the redundant vision tokens) with small items on it.

The background is lit from the top left: it darkens towards the bottom and shifts from warm to cool
towards the right, as lighting does in photographs. Qwen2-VL's vision tower has only relative (rotary)
positions, so this shading is what lets a small model tell where an object is from the pixels around it.

Each item is centred (within a couple of pixels) on a corner of the 28 px grid of Qwen-VL's merged
patches, nearest its grid cell's centre, so every vision token holds the same part of an object (a
quadrant) wherever it is. Placed at random, a from-scratch two-block ViT needed ~2000 steps (64k images)
to tell the shapes apart; aligned, shape becomes a local pattern inside each token.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlmq_gptqmodel.world.scene import Scene, SceneObject, SceneText
from vlmq_gptqmodel.world.vocab import GRID_SIZE

RGB = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (235, 200, 30), "purple": (140, 60, 180), "orange": (245, 130, 20),
}
# Object extent as a fraction of a grid cell's side: big fits 2x2 tokens, small sits in the middle of them.
SIZE_FRACTION = {"small": (0.30, 0.36), "big": (0.64, 0.72)}
TOKEN_PIXELS = 28  # patch 14 x merge 2
JITTER_PIXELS = 2
COLOUR_JITTER = 12
# Font size as a fraction of a grid cell: 20 px glyphs (about 12 px wide) in a 56 px cell at 168 px.
FONT_FRACTION = 20 / 56


# Lighting: brightness falls by DARKENING from top to bottom; red rises and blue falls by TINT left to right.
DARKENING = 40.0
TINT = 24.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A light colour, shaded by the fixed lighting, with faint blotches and pixel noise."""
    base = rng.uniform(212, 222) + rng.uniform(-3, 3, size=3)
    ramp = np.linspace(-0.5, 0.5, size)
    shading = -DARKENING * ramp[:, None, None] + TINT * ramp[None, :, None] * np.array([1.0, 0.0, -1.0])
    coarse = rng.normal(0, 3, size=(6, 6)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))[..., None]
    noise = rng.normal(0, 2, size=(size, size, 3))
    return base + shading + blotches + noise


def _jittered(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1), 0, 255)) for c in rgb)


def anchor(index: int, cell: float) -> float:
    """Token-grid line nearest the centre of grid cell `index` (along one axis)."""
    return round((index + 0.5) * cell / TOKEN_PIXELS) * TOKEN_PIXELS


def _place(rng: np.random.Generator, row: int, col: int, cell: float, width: float, height: float):
    """Top-left corner of a width x height box centred, up to the jitter, on cell (row, col)'s anchor."""
    jitter = rng.uniform(-JITTER_PIXELS, JITTER_PIXELS, size=2)
    return anchor(col, cell) - width / 2 + jitter[0], anchor(row, cell) - height / 2 + jitter[1]


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, rng: np.random.Generator, cell: float) -> None:
    side = cell * rng.uniform(*SIZE_FRACTION[obj.size])
    x, y = _place(rng, obj.row, obj.col, cell, side, side)
    fill = _jittered(RGB[obj.colour], rng)
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


def _draw_text(draw: ImageDraw.ImageDraw, text: SceneText, rng: np.random.Generator, cell: float) -> None:
    font = ImageFont.load_default(size=max(8, round(cell * FONT_FRACTION)))
    left, top, right, bottom = font.getbbox(text.glyphs)
    x, y = _place(rng, text.row, text.col, cell, right - left, bottom - top)
    shade = int(rng.integers(10, 60))
    draw.text((x - left, y - top), text.glyphs, fill=(shade, shade, shade), font=font)


def render_scene(scene: Scene, rng: np.random.Generator, image_size: int) -> Image.Image:
    cell = image_size / GRID_SIZE
    pixels = _background(rng, image_size)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, rng, cell)
    if scene.text is not None:
        _draw_text(draw, scene.text, rng, cell)
    return image
