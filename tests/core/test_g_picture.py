"""The G picture (g_picture.py) on made-up weights: where each vision token's cell is, its colour, the size."""
import pytest
from PIL import Image

from vlmq_gptqmodel import g_picture as gp

GREY = (128, 128, 128)
TITLE = ["a title line"]


def _cell_centre(grid, index, image_size):
    """Pixel of the picture at the centre of vision token `index`'s cell."""
    rows, cols = grid
    pw, ph = gp.panel_size(image_size)
    r, c = divmod(index, cols)
    top = gp.MARGIN + len(TITLE) * gp.TITLE_LINE + gp.MARGIN
    return round(gp.MARGIN + (c + 0.5) * pw / cols), round(top + (r + 0.5) * ph / rows)


def _blend(colour):
    return tuple(round(g * (1 - gp.HEAT_ALPHA) + c * gp.HEAT_ALPHA) for g, c in zip(GREY, colour))


@pytest.mark.parametrize("image_size, grid", [((300, 200), (2, 3)), ((120, 240), (4, 2))])
def test_each_cell_is_coloured_by_its_own_g_in_row_major_order(image_size, grid):
    n = grid[0] * grid[1]
    vision = [0.5] * n
    hot, cold = n - 2, 1  # neither the first nor the last: a transposed or reversed grid would miss them
    vision[hot], vision[cold] = 4.0, 0.1
    text = [("what", 2.0), ("?", 0.3)]
    picture = gp.draw_g(Image.new("RGB", image_size, GREY), grid, vision, text, 1, TITLE)
    assert picture.size == gp.picture_size(image_size, len(text), TITLE)

    def close(pixel, want):
        return all(abs(a - b) <= 2 for a, b in zip(pixel, want))

    assert close(picture.getpixel(_cell_centre(grid, hot, image_size)), _blend(gp.colour(1.0)))
    assert close(picture.getpixel(_cell_centre(grid, cold, image_size)), _blend(gp.colour(0.0)))
    middle = gp.colour((0.5 - 0.1) / (4.0 - 0.1))
    assert close(picture.getpixel(_cell_centre(grid, 0, image_size)), _blend(middle))
    # bars in sequence order with the image's mean g at image_position, heights on the scale of the hottest g (4.0)
    base = gp.MARGIN + len(TITLE) * gp.TITLE_LINE + gp.MARGIN + gp.panel_size(image_size)[1] + 2 * gp.MARGIN \
        + gp.STRIP_HEIGHT
    bw = gp.bar_width(3)
    image_mean = sum(vision) / n
    for i, (g, fill) in enumerate([(2.0, gp.BAR_COLOUR), (image_mean, gp.IMAGE_BAR_COLOUR), (0.3, gp.BAR_COLOUR)]):
        x, height = gp.MARGIN + i * bw + bw // 2, gp.STRIP_HEIGHT * g / 4.0
        assert picture.getpixel((x, round(base - height + 2))) == fill
        assert picture.getpixel((x, round(base - height - 3))) != fill


def test_colour_scale_runs_from_the_first_to_the_last_anchor_and_clips():
    assert gp.colour(0.0) == gp.COLOURS[0][1] and gp.colour(1.0) == gp.COLOURS[-1][1]
    assert gp.colour(-3) == gp.colour(0.0) and gp.colour(7) == gp.colour(1.0)
    assert gp.colour(0.5) == gp.COLOURS[1][1]


def test_a_long_text_gets_narrower_bars_and_the_picture_stays_bounded():
    short, long = gp.bar_width(20), gp.bar_width(2000)
    assert short == gp.MAX_BAR and long == gp.MIN_BAR
    assert gp.picture_size((224, 224), 400, TITLE)[0] <= 2 * gp.MARGIN + gp.MAX_STRIP + gp.SCALE_LABELS


def test_weights_that_do_not_fill_the_grid_are_refused():
    with pytest.raises(ValueError, match="do not fill a 2x2 grid"):
        gp.draw_g(Image.new("RGB", (56, 56)), (2, 2), [1.0] * 3, [], 0, TITLE)


def test_save_png_writes_a_whole_png_and_leaves_no_partial_file(tmp_path):
    out = tmp_path / "g.png"
    gp.save_png(Image.new("RGB", (10, 7), GREY), out)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (10, 7)
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]


def test_a_failed_save_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        open(fp, "wb").write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        gp.save_png(Image.new("RGB", (10, 7)), tmp_path / "g.png")
    assert list(tmp_path.iterdir()) == []
