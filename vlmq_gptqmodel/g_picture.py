"""Draw one sample's token weights G: a heat-map over the image, one cell per merged vision token, and the
text tokens' g as a bar strip in sequence order. Pure PIL; the numbers come from inspect_g.SampleG."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import List, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

PANEL = 448         # the heat-map's longer side, px
MARGIN = 16
TITLE_LINE, TITLE_FONT = 18, 13
SCALE_WIDTH = 16    # the colour scale beside the heat-map
SCALE_LABELS = 120  # room for its numbers and the strip's reference-line names
STRIP_HEIGHT = 140  # the bars' height at the strip's maximum
LABEL_HEIGHT = 96   # rotated token labels under the bars
MAX_BAR, MIN_BAR = 16, 3
LEGIBLE_BAR = 11    # narrower bars get no labels: the text would overlap
MAX_STRIP = 2400    # px; longer sequences get narrower bars
MAX_LABEL = 14      # characters of a token label
HEAT_ALPHA = 0.6    # share of the colour in a cell: the scene stays visible underneath
# colour scale from low to high g (dark blue, red, yellow): readable over a light or dark image
COLOURS = ((0.0, (30, 30, 110)), (0.5, (205, 45, 60)), (1.0, (255, 235, 70)))
BAR_COLOUR, IMAGE_BAR_COLOUR, REFERENCE_COLOUR = (70, 110, 170), (205, 45, 60), (90, 90, 90)


def colour(t: float) -> Tuple[int, int, int]:
    """The scale's colour at t in [0, 1] (clipped), interpolated between COLOURS."""
    t = min(max(t, 0.0), 1.0)
    for (t0, c0), (t1, c1) in zip(COLOURS, COLOURS[1:]):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            return tuple(round(a + (b - a) * f) for a, b in zip(c0, c1))
    return COLOURS[-1][1]


def _font(size: int):
    return ImageFont.load_default(size=size)


def panel_size(image_size: Tuple[int, int]) -> Tuple[int, int]:
    """The heat-map's (width, height): the image scaled so its longer side is PANEL."""
    w, h = image_size
    return (PANEL, max(1, round(PANEL * h / w))) if w >= h else (max(1, round(PANEL * w / h)), PANEL)


def bar_width(n_bars: int) -> int:
    return max(MIN_BAR, min(MAX_BAR, MAX_STRIP // max(n_bars, 1)))


def picture_size(image_size: Tuple[int, int], n_text: int, title: Sequence[str]) -> Tuple[int, int]:
    """(width, height) of the picture for an image, n_text text tokens (plus one bar for the image) and a title."""
    pw, ph = panel_size(image_size)
    strip = (n_text + 1) * bar_width(n_text + 1)
    title_width = max((round(_font(TITLE_FONT).getlength(line)) for line in title), default=0)
    width = 2 * MARGIN + max(pw + MARGIN + SCALE_WIDTH + SCALE_LABELS, strip + SCALE_LABELS, title_width)
    height = MARGIN + len(title) * TITLE_LINE + MARGIN + ph + 2 * MARGIN + STRIP_HEIGHT + LABEL_HEIGHT + MARGIN
    return width, height


def draw_g(image: Image.Image, grid: Tuple[int, int], vision: Sequence[float], text: Sequence[Tuple[str, float]],
           image_position: int, title: Sequence[str]) -> Image.Image:
    """grid: (rows, columns) of merged vision tokens; vision: their g, row-major; text: (token, g) of the other
    tokens in sequence order, the image's tokens sitting before text[image_position]; title: lines on top."""
    rows, cols = grid
    if rows * cols != len(vision) or not vision:
        raise ValueError(f"{len(vision)} vision weights do not fill a {rows}x{cols} grid")
    width, height = picture_size(image.size, len(text), title)
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    y = MARGIN
    for line in title:
        draw.text((MARGIN, y), line, fill="black", font=_font(TITLE_FONT))
        y += TITLE_LINE
    y += MARGIN
    lo, hi = min(vision), max(vision)
    _heat_map(out, image, (MARGIN, y), grid, vision, lo, hi)
    pw, ph = panel_size(image.size)
    _colour_scale(draw, (MARGIN + pw + MARGIN, y), ph, lo, hi)
    _strip(out, (MARGIN, y + ph + 2 * MARGIN), vision, text, image_position, hi)
    return out


def _heat_map(out: Image.Image, image: Image.Image, at, grid, vision, lo: float, hi: float) -> None:
    pw, ph = panel_size(image.size)
    rows, cols = grid
    # cells at the image's fractions: the processor resized the whole image onto this grid
    cells = Image.new("RGB", (cols, rows))
    cells.putdata([colour((g - lo) / (hi - lo) if hi > lo else 0.5) for g in vision])
    cells = cells.resize((pw, ph), Image.NEAREST)
    base = image.convert("RGB").resize((pw, ph), Image.BICUBIC)
    out.paste(Image.blend(base, cells, HEAT_ALPHA), at)
    draw = ImageDraw.Draw(out)
    hottest = max(range(len(vision)), key=vision.__getitem__)
    r, c = divmod(hottest, cols)
    x0, y0 = at[0] + c * pw / cols, at[1] + r * ph / rows
    draw.rectangle((x0, y0, x0 + pw / cols - 1, y0 + ph / rows - 1), outline="white", width=2)


def _colour_scale(draw: ImageDraw.ImageDraw, at, height: int, lo: float, hi: float) -> None:
    x, y = at
    for i in range(height):
        draw.line((x, y + i, x + SCALE_WIDTH - 1, y + i), fill=colour(1 - i / max(height - 1, 1)))
    font = _font(11)
    draw.text((x + SCALE_WIDTH + 4, y), f"{hi:.3g}", fill="black", font=font)
    draw.text((x + SCALE_WIDTH + 4, y + height - 12), f"{lo:.3g}", fill="black", font=font)
    draw.text((x + SCALE_WIDTH + 4, y + height // 2 - 6), "g", fill="black", font=font)


def _strip(out: Image.Image, at, vision, text, image_position: int, hottest: float) -> None:
    """One bar per text token, and one (in the heat-map's red) for the image: its tokens' mean g."""
    draw = ImageDraw.Draw(out)
    bars: List[Tuple[str, float, tuple]] = [(tok, g, BAR_COLOUR) for tok, g in text]
    bars.insert(image_position, (f"image ({len(vision)})", sum(vision) / len(vision), IMAGE_BAR_COLOUR))
    top = max(max(g for _, g, _ in bars), hottest, 1.0)
    bw = bar_width(len(bars))
    x0, y0 = at
    base = y0 + STRIP_HEIGHT
    for i, (label, g, fill) in enumerate(bars):
        x = x0 + i * bw
        draw.rectangle((x + 1, base - round(STRIP_HEIGHT * g / top), x + bw - 2, base), fill=fill)
        if bw >= LEGIBLE_BAR:
            _vertical_label(out, (x, base + 4), _short(label))
    right = x0 + len(bars) * bw
    draw.line((x0, base, right, base), fill="black")
    font = _font(11)
    label_y = []
    for value, name in ((1.0, "mean (1)"), (hottest, f"hottest patch ({hottest:.3g})")):
        y = base - round(STRIP_HEIGHT * value / top)
        for x in range(x0, right, 6):  # dashed
            draw.line((x, y, min(x + 3, right), y), fill=REFERENCE_COLOUR)
        # a name too close to the previous one moves up, so the two stay readable
        label_y.append(min(y - 6, label_y[-1] - 13) if label_y and abs(y - 6 - label_y[-1]) < 13 else y - 6)
        draw.text((right + 4, label_y[-1]), name, fill=REFERENCE_COLOUR, font=font)
    if min(label_y) > y0 + 12:  # a text token's bar is the tallest: name the strip's top
        draw.text((right + 4, y0 - 6), f"top: {top:.3g}", fill="black", font=font)


def _short(label: str) -> str:
    label = label.replace("\n", "\\n")
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 2] + ".."


def _vertical_label(out: Image.Image, at, label: str) -> None:
    font = _font(11)
    left, top, right, bottom = font.getbbox(label)
    tile = Image.new("L", (max(1, right - left), max(1, bottom - top + 2)), 0)
    ImageDraw.Draw(tile).text((-left, -top), label, fill=255, font=font)
    rotated = tile.rotate(90, expand=True)
    out.paste((0, 0, 0), (at[0] + 1, at[1], at[0] + 1 + rotated.width, at[1] + rotated.height), rotated)


def save_png(picture: Image.Image, path) -> None:
    """Write `path` whole or not at all: into a hidden file beside it, renamed into place when complete."""
    path = Path(path)
    partial = path.parent / f".{path.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        picture.save(partial, format="PNG")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
