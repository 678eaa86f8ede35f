"""Calibration loading (ShareGPT4V / COCO-caption records via `datasets`) and the length rule."""
import json

import pytest
from PIL import Image
from transformers import AutoProcessor

from vlmq_gptqmodel.calibration import (
    conversation,
    fit_to_length,
    load_records,
    records_to_conversations,
)
from vlmq_gptqmodel.calibration import _token_ids as token_ids


@pytest.fixture()
def image_dir(tmp_path):
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (64, 64), colour).save(tmp_path / f"{i}.png")
    return tmp_path


def _sharegpt(i):
    return {"id": str(i), "image": f"{i}.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the image?"},
        {"from": "gpt", "value": f"A plain square number {i}."},
    ]}


def test_sharegpt4v_json_records_become_image_first_conversations(image_dir):
    path = image_dir / "calib.json"
    path.write_text(json.dumps([_sharegpt(0), _sharegpt(1)]))
    convs = records_to_conversations(load_records(path), image_root=image_dir)
    assert len(convs) == 2
    user, assistant = convs[1]
    assert user["role"] == "user" and assistant["role"] == "assistant"
    assert user["content"][0] == {"type": "image", "image": str(image_dir / "1.png")}
    assert user["content"][1] == {"type": "text", "text": "What is in the image?"}  # <image> tag removed
    assert assistant["content"][0]["text"] == "A plain square number 1."


def test_jsonl_caption_records_use_the_default_prompt(image_dir):
    path = image_dir / "calib.jsonl"
    path.write_text("\n".join(json.dumps({"image": f"{i}.png", "caption": f"cap {i}"}) for i in range(2)))
    convs = records_to_conversations(load_records(path), image_root=image_dir, prompt="Describe.")
    assert convs[0][0]["content"][1]["text"] == "Describe." and convs[0][1]["content"][0]["text"] == "cap 0"


def test_saved_dataset_with_an_image_column(image_dir, tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"image": [str(image_dir / "0.png")], "caption": ["a red square"]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    convs = records_to_conversations(load_records(tmp_path / "ds"))
    image = convs[0][0]["content"][0]["image"]
    assert isinstance(image, Image.Image) and image.getpixel((0, 0)) == (255, 0, 0)


def test_bad_sources_name_the_problem(image_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_records(image_dir / "missing.json")
    path = image_dir / "calib.json"
    path.write_text(json.dumps([{"image": "nope.png", "caption": "x"}]))
    with pytest.raises(FileNotFoundError, match="image_root"):
        records_to_conversations(load_records(path), image_root=image_dir)
    path.write_text(json.dumps([{"picture": "0.png", "caption": "x"}]))
    with pytest.raises(ValueError, match="'image' column"):
        records_to_conversations(load_records(path))
    path.write_text(json.dumps([{"image": "http://example.com/a.png", "caption": "x"}]))
    with pytest.raises(ValueError, match="offline"):
        records_to_conversations(load_records(path))


ARCHS = ["qwen2_vl", "llava_onevision"]


@pytest.mark.parametrize("arch", ARCHS)
def test_samples_whose_vision_tokens_would_be_cut_are_dropped_and_others_shortened(tiny_vlm, arch):
    processor = AutoProcessor.from_pretrained(str(tiny_vlm(arch)))
    image = Image.new("RGB", (112, 112), "white")
    image_first = conversation(image, "describe the image .", "a red circle and a blue square")
    text_first = [
        {"role": "user", "content": [{"type": "text", "text": "describe the image . " * 4},
                                     {"type": "image", "image": image}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]},
    ]
    ids = token_ids(processor, image_first)
    template_only = len(token_ids(processor, conversation(image, "", "")))
    limit = template_only + 3  # room for a few words of text, not for the whole sample
    assert len(ids) > limit
    text_first_ids = token_ids(processor, text_first)
    assert max(i for i, t in enumerate(text_first_ids) if t == processor.image_token_id) >= limit  # vision cut
    kept, report = fit_to_length([image_first, text_first, image_first], processor, limit)
    assert report.dropped == [1] and report.truncated == [0, 2] and report.kept == 2
    assert report.shortest_dropped == max(i for i, t in enumerate(text_first_ids) if t == processor.image_token_id) + 1
    for conv in kept:
        new_ids = token_ids(processor, conv)
        assert len(new_ids) <= limit
        assert new_ids.count(processor.image_token_id) == ids.count(processor.image_token_id)
    assert "dropped 1" in str(report)


@pytest.mark.parametrize("arch", ARCHS)
def test_samples_within_the_limit_are_untouched(tiny_vlm, arch):
    processor = AutoProcessor.from_pretrained(str(tiny_vlm(arch)))
    conv = conversation(Image.new("RGB", (112, 112), "white"), "describe the image .", "a red circle")
    kept, report = fit_to_length([conv], processor, 512)
    assert kept == [conv] and report.dropped == [] and report.truncated == [] and report.shortest_dropped is None


@pytest.mark.parametrize("size", [(112, 112), (30, 90), (200, 60)])
def test_llava_onevision_lengths_are_the_ones_gptqmodel_feeds(tiny_vlm, size):
    """GPTQModel's LLaVA prepare_dataset tokenizes inside apply_chat_template (definitions/llava.py); the length
    rule measures with the template text and the processor: the same ids, anyres image tokens included."""
    processor = AutoProcessor.from_pretrained(str(tiny_vlm("llava_onevision")))
    conv = conversation(Image.new("RGB", size, "white"), "describe the image .", "a red circle")
    fed = processor.apply_chat_template([conv], add_generation_prompt=True, tokenize=True, return_dict=True,
                                        return_tensors="pt")
    assert token_ids(processor, conv) == fed["input_ids"][0].tolist()
    assert fed["input_ids"][0].tolist().count(processor.image_token_id) > 4  # the anyres grid, not one tile
