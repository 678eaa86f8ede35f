"""The synthetic world: deterministic disjoint splits, answers that match the scene and the pixels, a closed vocabulary."""
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from vlmq_gptqmodel.errors import BadInput
from vlmq_gptqmodel.synth import tiny_vlm
from vlmq_gptqmodel.synth.evaluation import scored_world
from vlmq_gptqmodel.synth.world import (
    CAPTION_PROMPT, DEFAULT_IMAGE_SIZE, FINAL_STAGE, QUESTION_KINDS, STAGES, VOCAB, WORLDS, calibration_conversations,
    caption_conversation, make_samples, questions,
)
from vlmq_gptqmodel.synth.world.render import RGB, TILE_ATTRIBUTES, TOKEN_PIXELS, anchor_tile, text_tiles, tile_labels
from vlmq_gptqmodel.synth.world.facts import FACT_VALUES, FactTable
from vlmq_gptqmodel.synth.world.scene import SceneText, get_stage
from vlmq_gptqmodel.synth.world.vocab import GLYPHS, GRID_SIZE, NUMBER_WORDS, POSITION_NAMES, SHAPE_PLURALS


def _same(a, b):
    return (a.caption == b.caption and a.qa == b.qa and a.scene == b.scene
            and np.array_equal(np.asarray(a.image), np.asarray(b.image)))


def test_samples_are_deterministic_and_independent_of_how_many_are_drawn():
    first = make_samples("eval", 6, seed=3)
    again = make_samples("eval", 6, seed=3)
    assert all(_same(a, b) for a, b in zip(first, again))
    longer = make_samples("eval", 10, seed=3)
    assert all(_same(a, b) for a, b in zip(first, longer))
    assert all(_same(a, b) for a, b in zip(longer[4:], make_samples("eval", 6, seed=3, start=4)))


def test_splits_and_seeds_draw_different_samples():
    splits = {split: make_samples(split, 20) for split in ("train", "calib", "eval")}
    splits["eval seed 1"] = make_samples("eval", 20, seed=1)
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pairs = zip(splits[a], splits[b])
            assert not any(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in pairs), (a, b)
            assert [s.caption for s in splits[a]] != [s.caption for s in splits[b]]


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="split"):
        make_samples("test", 1)
    with pytest.raises(ValueError, match="stage"):
        make_samples("train", 1, stage=FINAL_STAGE + 1)
    with pytest.raises(ValueError, match="image_size"):
        make_samples("train", 1, image_size=20)


@pytest.mark.parametrize("stage", range(1, FINAL_STAGE + 1))
def test_every_word_is_in_the_vocabulary(stage):
    tokenizer = tiny_vlm.build_tokenizer(VOCAB)
    texts = [CAPTION_PROMPT]
    rng = np.random.default_rng(stage)
    for sample in make_samples("train", 60, stage=stage):
        texts.append(sample.caption)
        asked = sample.qa + questions(sample.scene, rng, ("count", "exists"))
        texts += [t for qa in asked for t in (qa.question, qa.answer)]
    for text in texts:
        assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"], text


def test_stages_follow_the_curriculum():
    first = make_samples("train", 40, stage=1)
    assert all(len(s.scene.objects) == 1 and s.scene.objects[0].size == "big" and s.scene.text is None
               for s in first)
    assert {qa.kind for s in first for qa in s.qa} == {"colour", "shape"}
    final = make_samples("train", 80, stage=FINAL_STAGE)
    assert {qa.kind for s in final for qa in s.qa} == set(QUESTION_KINDS)
    assert all(1 <= len(s.scene.objects) <= STAGES[-1].max_objects for s in final)
    assert 0.3 < np.mean([s.scene.text is not None for s in final]) < 0.7


def _check_answer(sample, qa):
    objects = sample.scene.objects
    words = qa.question.split()
    if qa.kind == "colour":
        matching = [o for o in objects if o.shape == words[-2]]
        assert len(matching) == 1 and matching[0].colour == qa.answer
    elif qa.kind == "shape":
        matching = [o for o in objects if o.colour == words[-3]]
        assert len(matching) == 1 and matching[0].shape == qa.answer
    elif qa.kind == "count":
        shape = next(s for s, plural in SHAPE_PLURALS.items() if plural == words[2])
        assert NUMBER_WORDS[sum(o.shape == shape for o in objects)] == qa.answer
    elif qa.kind == "exists":
        present = any(o.colour == words[-3] and o.shape == words[-2] for o in objects)
        assert qa.answer == ("yes" if present else "no")
    elif qa.kind == "position":
        matching = [o for o in objects if o.colour == words[-3] and o.shape == words[-2]]
        assert len(matching) == 1 and POSITION_NAMES[matching[0].row][matching[0].col] == qa.answer
    else:
        assert qa.answer == " ".join(sample.scene.text.glyphs)


def test_answers_and_captions_agree_with_the_scene():
    samples = make_samples("eval", 150)
    rng = np.random.default_rng(0)
    count_and_exists = []  # asked on request only (not in QUESTION_KINDS); checked all the same
    for sample in samples:
        count_and_exists += [(sample, qa) for qa in questions(sample.scene, rng, ("count", "exists"))]
        for qa in sample.qa:
            _check_answer(sample, qa)
    for sample, qa in count_and_exists:
        _check_answer(sample, qa)
        assert sample.caption.endswith(" .")
        parts = sample.caption[:-2].replace(" and ", " , ").split(" , ")
        items = sample.scene.items_in_reading_order()
        assert len(parts) == len(items)
        for part, item in zip(parts, items):
            assert part.endswith(" " + POSITION_NAMES[item.row][item.col])
            words = part.split()
            if isinstance(item, SceneText):
                assert words[0] == "text" and "".join(words[1:1 + len(item.glyphs)]) == item.glyphs
            else:
                assert words[:3] == [item.size, item.colour, item.shape]
    exists = Counter(qa.answer for _, qa in count_and_exists if qa.kind == "exists")
    assert 0.35 < exists["yes"] / sum(exists.values()) < 0.65
    positions = Counter(qa.answer for s in samples for qa in s.qa if qa.kind == "position")
    assert len(positions) == GRID_SIZE * GRID_SIZE


def test_names_world_prompts_list_the_scenes_colours_and_the_name_answer_is_the_listed_one():
    from vlmq_gptqmodel.synth.world.scene import ABSENT_NAMED_COLOURS, NAMES_STAGES
    from vlmq_gptqmodel.synth.world.vocab import NAMES
    samples = make_samples("eval", 60, world="names", image_size=112)
    tokenizer = tiny_vlm.build_tokenizer(WORLDS["names"].vocab)
    asked = 0
    for sample in samples:
        scene = sample.scene
        colours = [colour for colour, _ in scene.names]
        names = [name for _, name in scene.names]
        present = {o.colour for o in scene.objects}
        assert len(set(colours)) == len(colours) and len(set(names)) == len(names) and set(names) <= set(NAMES)
        assert set(colours) >= present and len(colours) == len(present) + ABSENT_NAMED_COLOURS
        prefix = " , ".join(f"{c} is {n}" for c, n in scene.names) + " . "
        assert sample.caption_prompt == prefix + CAPTION_PROMPT
        for qa in sample.qa:
            assert qa.question.startswith(prefix)
            assert tokenizer.unk_token_id not in tokenizer(qa.question + " " + qa.answer)["input_ids"]
            if qa.kind == "name":
                shape = qa.question.split()[-2]
                matching = [o for o in scene.objects if o.shape == shape]
                assert len(matching) == 1 and qa.answer == scene.name_of(matching[0].colour)
                asked += 1
            else:
                _check_answer(sample, replace(qa, question=qa.question[len(prefix):]))
        assert caption_conversation(sample)[0]["content"][1]["text"] == sample.caption_prompt
        for item in scene.items_in_reading_order():  # each object's caption entry carries its colour's name
            if not isinstance(item, SceneText):
                entry = f"{item.size} {item.colour} {item.shape} {scene.name_of(item.colour)} "
                assert entry in sample.caption
    assert asked > 30
    assert NAMES_STAGES[-1].kinds == QUESTION_KINDS + ("name",)
    # the other worlds' prompts and samples are untouched by the names world
    deep = make_samples("eval", 20, world="deep", image_size=112)
    assert all(s.scene.names == () and s.caption_prompt == CAPTION_PROMPT for s in deep)
    assert not any(word.startswith("n0") for s in deep for word in s.caption.split())
    assert all(qa.question.split()[0] in ("what", "where") for s in deep for qa in s.qa)


def _cell(pixels, row, col):
    side = pixels.shape[0] // GRID_SIZE
    return pixels[row * side:(row + 1) * side, col * side:(col + 1) * side]


def test_pixels_show_each_item_in_its_cell_and_leave_most_tiles_plain():
    samples = make_samples("eval", 40)
    plain_fraction = []
    for sample in samples:
        pixels = np.asarray(sample.image).astype(int)
        for item in sample.scene.items_in_reading_order():
            cell = _cell(pixels, item.row, item.col)
            if isinstance(item, SceneText):
                assert (cell.max(-1) < 90).sum() >= 20  # dark glyph strokes
            else:
                close = np.abs(cell - np.array(RGB[item.colour])).max(-1) < 30
                assert close.sum() >= 60, (sample.caption, item)
        # Tiles the size of one image token (28 px) whose pixels are all background-like (light, grey-ish).
        saturated = (pixels.max(-1) - pixels.min(-1) > 90) | (pixels.max(-1) < 150)
        n = pixels.shape[0] // 28
        tiles = saturated.reshape(n, 28, n, 28).any(axis=(1, 3))
        plain_fraction.append(1 - tiles.mean())
    assert np.mean(plain_fraction) > 0.6


def test_each_object_and_glyph_lies_inside_one_token_tile():
    """One vision token per object or glyph (the layout the model learns from); no ink outside those tiles."""
    for sample in make_samples("eval", 40):
        pixels = np.asarray(sample.image).astype(int)
        size = pixels.shape[0]
        cell, n_tiles = size / GRID_SIZE, size // TOKEN_PIXELS
        tile_of = {obj: (anchor_tile(obj.row, cell), anchor_tile(obj.col, cell)) for obj in sample.scene.objects}
        ink_tiles = set(tile_of.values())
        assert len(ink_tiles) == len(sample.scene.objects), sample.caption
        for obj, tile in tile_of.items():
            same_colour = {t for o, t in tile_of.items() if o.colour == obj.colour}
            close = np.abs(pixels - np.array(RGB[obj.colour])).max(-1) < 30
            rows, cols = np.nonzero(close)
            tile_pixels = close[tile[0] * TOKEN_PIXELS:(tile[0] + 1) * TOKEN_PIXELS,
                                tile[1] * TOKEN_PIXELS:(tile[1] + 1) * TOKEN_PIXELS]
            assert tile_pixels.sum() >= 40, (sample.caption, obj)
            assert set(zip(rows // TOKEN_PIXELS, cols // TOKEN_PIXELS)) <= same_colour, (sample.caption, obj)
        if sample.scene.text is not None:
            tiles = text_tiles(sample.scene.text, cell, n_tiles)
            assert len(set(tiles)) == len(sample.scene.text.glyphs)
            assert not set(tiles) & ink_tiles, sample.caption
            ink_tiles |= set(tiles)
            for row, col in tiles:
                glyph = pixels[row * TOKEN_PIXELS:(row + 1) * TOKEN_PIXELS, col * TOKEN_PIXELS:(col + 1) * TOKEN_PIXELS]
                assert (glyph.max(-1) < 90).sum() >= 10, (sample.caption, row, col)
        dark = pixels.max(-1) < 90
        rows, cols = np.nonzero(dark)
        assert set(zip(rows // TOKEN_PIXELS, cols // TOKEN_PIXELS)) <= ink_tiles, sample.caption


def test_tile_labels_name_what_each_image_token_holds():
    """The training script's per-token targets: labelled tiles are exactly the inked ones, with the right items."""
    for sample in make_samples("eval", 40):
        pixels = np.asarray(sample.image).astype(int)
        n = pixels.shape[0] // TOKEN_PIXELS
        labels = tile_labels(sample.scene, pixels.shape[0]).reshape(n, n, len(TILE_ATTRIBUTES))
        inked = ((pixels.max(-1) - pixels.min(-1) > 90) | (pixels.max(-1) < 90)).reshape(n, TOKEN_PIXELS, n, TOKEN_PIXELS)
        assert np.array_equal(labels.any(-1), inked.any(axis=(1, 3))), sample.caption
        cell = pixels.shape[0] / GRID_SIZE
        for obj in sample.scene.objects:
            got = labels[anchor_tile(obj.row, cell), anchor_tile(obj.col, cell)]
            assert [TILE_ATTRIBUTES[k][i - 1] for k, i in zip(("colour", "shape", "size"), got[:3])] == [
                obj.colour, obj.shape, obj.size]
        if sample.scene.text is not None:
            tiles = text_tiles(sample.scene.text, cell, n)
            assert "".join(TILE_ATTRIBUTES["glyph"][labels[r, c, 3] - 1] for r, c in tiles) == sample.scene.text.glyphs
            assert [labels[r, c, 4] for r, c in tiles] == list(range(1, len(tiles) + 1))


def test_merged_vision_tokens_come_in_row_major_tile_order():
    """tile_labels' order must be the processor's: token r * n + c holds tile (r, c)."""
    from PIL import Image

    processor = tiny_vlm.build_processor(tiny_vlm.build_tokenizer(VOCAB), "qwen2_vl", DEFAULT_IMAGE_SIZE)
    n = DEFAULT_IMAGE_SIZE // TOKEN_PIXELS
    pixels = np.zeros((DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE, 3), dtype=np.uint8)
    pixels[2 * TOKEN_PIXELS:3 * TOKEN_PIXELS, 5 * TOKEN_PIXELS:6 * TOKEN_PIXELS] = 255
    patches = processor.image_processor(images=[Image.fromarray(pixels)], return_tensors="pt")["pixel_values"]
    brightness = patches.reshape(n * n, -1).mean(-1)
    assert int(brightness.argmax()) == 2 * n + 5
    assert (brightness > brightness.min()).sum() == 1


def test_calibration_conversations_are_captioned_images_in_gptqmodel_format():
    convs = calibration_conversations(4, seed=2)
    calib = make_samples("calib", 4, seed=2)
    for conv, sample in zip(convs, calib):
        user, assistant = conv
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert [item["type"] for item in user["content"]] == ["image", "text"]  # the image first (user_turn)
        assert user["content"][1]["text"] == CAPTION_PROMPT
        assert np.array_equal(np.asarray(user["content"][0]["image"]), np.asarray(sample.image))
        assert assistant["content"] == [{"type": "text", "text": sample.caption}]
    processor = tiny_vlm.build_processor(tiny_vlm.build_tokenizer(VOCAB), "qwen2_vl", DEFAULT_IMAGE_SIZE)
    text = processor.apply_chat_template(convs[0], tokenize=False)
    enc = processor(text=[text], images=[convs[0][0]["content"][0]["image"]], return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    image_tokens = ids.count(processor.tokenizer.convert_tokens_to_ids(tiny_vlm.IMAGE_PAD))
    # The paper's premise: vision tokens clearly outnumber the text tokens of a calibration sample.
    assert image_tokens == (DEFAULT_IMAGE_SIZE // 28) ** 2
    text_tokens = [len(processor.tokenizer(processor.apply_chat_template(c, tokenize=False))["input_ids"]) - 1
                   for c in calibration_conversations(50)]
    assert image_tokens > 1.5 * np.mean(text_tokens)


def test_the_default_world_draws_the_samples_it_always_drew():
    # results and the shipped model's evaluation depend on these exact samples
    captions = [s.caption for s in make_samples("eval", 2)]
    assert captions == ["text 2 5 center center and small blue cross bottom left .",
                        "small orange triangle center center , text A E bottom left and big red circle bottom right ."]


def test_the_deep_world_has_busier_scenes_and_longer_texts_on_its_own_streams():
    size = WORLDS["deep"].image_size
    deep = make_samples("eval", 120, world="deep", image_size=size)
    assert all(2 <= len(s.scene.objects) <= 4 for s in deep)
    texts = [s.scene.text.glyphs for s in deep if s.scene.text]
    assert 0.55 < len(texts) / len(deep) < 0.85 and {len(t) for t in texts} == {3, 4}
    assert deep[0].image.size == (size, size)
    # its own stream: not the default world's scenes drawn again
    default = make_samples("eval", 120)
    assert [s.scene for s in deep] != [s.scene for s in default]
    assert make_samples("select", 3, world="deep", image_size=size)[0].caption != deep[0].caption
    tokenizer = tiny_vlm.build_tokenizer(VOCAB)
    for s in deep[:40]:
        for text in [s.caption] + [t for qa in s.qa for t in (qa.question, qa.answer)]:
            assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]
    with pytest.raises(ValueError, match="world"):
        make_samples("eval", 1, world="moon")


def test_deep_world_images_are_mostly_background():
    from vlmq_gptqmodel.synth.world.render import tile_labels

    size = WORLDS["deep"].image_size
    for s in make_samples("calib", 10, world="deep", image_size=size):
        labels = tile_labels(s.scene, size)
        assert labels.shape[0] == (size // TOKEN_PIXELS) ** 2 == 196
        assert (labels.any(axis=1)).sum() <= 8  # at most 4 objects and 4 glyphs hold anything


def test_the_faint_world_draws_final_stage_items_at_low_contrast_and_only_there():
    from vlmq_gptqmodel.synth.world.render import BACKGROUND_GREY, render_scene
    from vlmq_gptqmodel.synth.world.scene import FAINT_CONTRAST

    size = WORLDS["faint"].image_size
    faint = make_samples("eval", 40, world="faint", image_size=size)
    contrasts = [item.contrast for s in faint for item in s.scene.items_in_reading_order()]
    assert all(FAINT_CONTRAST[0] <= c <= FAINT_CONTRAST[1] for c in contrasts)
    assert min(contrasts) < 0.4 and max(contrasts) > 0.8
    earlier = make_samples("eval", 10, world="faint", image_size=size, stage=3)
    assert all(item.contrast == 1.0 for s in earlier for item in s.scene.items_in_reading_order())
    deep = make_samples("eval", 10, world="deep", image_size=size)
    assert all(item.contrast == 1.0 for s in deep for item in s.scene.items_in_reading_order())
    small = make_samples("eval", 20, world="synthvlm-faint", image_size=WORLDS["synthvlm-faint"].image_size)
    assert small[0].image.size == (224, 224)
    assert min(item.contrast for s in small for item in s.scene.items_in_reading_order()) < 0.5
    # the pixels: the same scene drawn fainter sits closer to the background grey at its items' tiles
    scene = faint[0].scene
    sharp = replace(scene, objects=tuple(replace(o, contrast=1.0) for o in scene.objects),
                    text=scene.text and replace(scene.text, contrast=1.0))
    dim = replace(scene, objects=tuple(replace(o, contrast=0.2) for o in scene.objects),
                  text=scene.text and replace(scene.text, contrast=0.2))
    n_tiles = size // TOKEN_PIXELS
    distance = {}
    for name, drawn_scene in (("sharp", sharp), ("dim", dim)):
        pixels = np.asarray(render_scene(drawn_scene, np.random.default_rng(0), size)).astype(float)
        labels = tile_labels(drawn_scene, size)
        held = [i for i in range(n_tiles * n_tiles) if labels[i].any()]
        tiles = [pixels[(i // n_tiles) * TOKEN_PIXELS:(i // n_tiles + 1) * TOKEN_PIXELS,
                        (i % n_tiles) * TOKEN_PIXELS:(i % n_tiles + 1) * TOKEN_PIXELS] for i in held]
        distance[name] = np.mean([np.abs(t - BACKGROUND_GREY).max(axis=-1).max() for t in tiles])
    assert distance["dim"] < 0.45 * distance["sharp"]


def test_the_unlit_world_draws_its_final_stage_on_a_flat_background_and_changes_nothing_else():
    from vlmq_gptqmodel.synth.world import Scene
    from vlmq_gptqmodel.synth.world.render import render_scene

    unlit = make_samples("eval", 6, world="synthvlm-unlit")
    plain = make_samples("eval", 6, world="synthvlm")
    assert all(not s.scene.lit for s in unlit) and all(s.scene.lit for s in plain)
    earlier = make_samples("eval", 4, world="synthvlm-unlit", stage=2)
    assert all(s.scene.lit for s in earlier)

    def cast(scene):  # (red - blue) right minus left, green bottom minus top, on an empty scene's pixels
        pixels = np.asarray(render_scene(scene, np.random.default_rng(0), 224), dtype=float)
        red_blue, green = pixels[..., 0] - pixels[..., 2], pixels[..., 1] - pixels[..., 0] / 2 - pixels[..., 2] / 2
        return red_blue[:, -28:].mean() - red_blue[:, :28].mean(), green[-28:].mean() - green[:28].mean()

    assert min(cast(Scene((), None))) > 20  # the lighting: both casts about 40 grey levels across the image
    assert max(abs(c) for c in cast(Scene((), None, lit=False))) < 5


def test_a_fact_table_is_fixed_by_its_seed_and_names_a_word_for_each_of_its_distinct_texts():
    table = FactTable(glyphs=3, count=300, seed=7)
    assert len(table.keys) == 300 and all(len(k) == 3 and set(k) <= set(GLYPHS) for k in table.keys)
    assert set(table.entries.values()) <= set(FACT_VALUES)
    again = FactTable(glyphs=3, count=300, seed=7)
    assert again.entries == table.entries  # a model trained on one table is asked about the same table
    other = FactTable(glyphs=3, count=300, seed=8)
    assert other.entries != table.entries
    key = table.keys[0]
    assert table.statement(key) == f"{' '.join(key)} means {table.entries[key]}"
    assert len(set(table.entries.values())) > 200  # random words, not one word for every text
    with pytest.raises(ValueError, match="not one of the table"):
        table.meaning_of("ZZZ")
    with pytest.raises(ValueError, match="distinct texts"):
        FactTable(glyphs=2, count=257, seed=0)


@pytest.mark.parametrize("world, text_share", [("synthvlm-facts", (0.5, 0.9)), ("deep-facts", (0.75, 1.0)),
                                               ("deep-recall", (0.99, 1.0))])
def test_the_facts_worlds_show_table_entries_say_their_meaning_and_ask_for_it(world, text_share):
    table = get_stage(None, world).facts
    samples = make_samples("eval", 60, world=world, image_size=WORLDS[world].image_size)
    texts = [s for s in samples if s.scene.text]
    assert text_share[0] < len(texts) / len(samples) <= text_share[1]
    tokenizer = tiny_vlm.build_tokenizer(WORLDS[world].vocab)
    for s in texts:
        glyphs = s.scene.text.glyphs
        assert glyphs in table.entries
        assert f"text {' '.join(glyphs)} means {table.entries[glyphs]} " in s.caption
        meaning = [qa for qa in s.qa if qa.kind == "meaning"]
        assert len(meaning) == 1 and meaning[0].answer == table.statement(glyphs)
        assert meaning[0].subject == s.scene.text
        for text in [s.caption] + [t for qa in s.qa for t in (qa.question, qa.answer)]:
            assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"], text
    assert not any(qa.kind == "meaning" for s in samples if not s.scene.text for qa in s.qa)
    # earlier stages are the shipped world's: no table, no meaning questions
    assert all(s.scene.facts is None for s in make_samples("train", 10, stage=2, world=world))


def test_the_recall_world_asks_only_position_text_and_meaning_over_the_deep_facts_table():
    samples = make_samples("eval", 40, world="deep-recall", image_size=WORLDS["deep-recall"].image_size)
    kinds = [qa.kind for s in samples for qa in s.qa]
    assert set(kinds) == {"position", "text", "meaning"}
    assert kinds.count("meaning") == kinds.count("text") == len(samples)  # a text, so both, in every image
    assert get_stage(None, "deep-recall").facts is get_stage(None, "deep-facts").facts
    assert get_stage(2, "deep-recall") == get_stage(2, "deep-facts")  # only the final stage differs


def test_the_meaning_world_asks_deep_recalls_meaning_questions_alone_and_scores_a_deep_recall_model():
    samples = make_samples("eval", 40, world="deep-meaning", image_size=WORLDS["deep-meaning"].image_size)
    assert [qa.kind for s in samples for qa in s.qa] == ["meaning"] * len(samples)  # a text in every image
    assert all(qa.answer == s.scene.facts.statement(s.scene.text.glyphs) for s in samples for qa in s.qa)
    assert get_stage(None, "deep-meaning").facts is get_stage(None, "deep-recall").facts
    assert get_stage(2, "deep-meaning") == get_stage(2, "deep-recall")
    assert scored_world("deep-recall", "deep-meaning") == "deep-meaning"
    assert scored_world("deep-recall") == scored_world("deep-recall", "deep-recall") == "deep-recall"
    with pytest.raises(BadInput, match="synthvlm world's words or image size"):
        scored_world("deep-recall", "synthvlm")  # other words, 224 px: the model could not read its images
    with pytest.raises(BadInput, match="deep world's words"):
        scored_world("deep-recall", "deep")  # 392 px too, but no table words: answers it cannot say
