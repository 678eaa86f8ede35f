"""`vlmq inspect`'s checks before any work (inspect_g.py): what it draws by default and what it refuses."""
import os

import pytest
import torch
from PIL import Image

from vlmq_gptqmodel import VLMQConfig
from vlmq_gptqmodel.errors import BadInput, RunFailed
from vlmq_gptqmodel.inspect_g import (
    _image_grid, check_png_out, check_request, conversation, default_layer, read_image,
)

QWEN = {"model_type": "qwen2_vl", "text_config": {"num_hidden_layers": 4}}


def test_defaults_are_a_middle_layer_after_0_and_the_first_target():
    assert check_request(QWEN, None, None, VLMQConfig()) == (2, "q_proj")
    assert check_request(QWEN, 3, None, VLMQConfig(targets=("v_proj", "k_proj"))) == (3, "v_proj")
    assert [default_layer(n) for n in (1, 2, 3, 28)] == [0, 1, 1, 14]
    # older Qwen2-VL configs keep the text model's fields at the top level
    assert check_request({"model_type": "qwen2_vl", "num_hidden_layers": 6}, None, "k_proj", VLMQConfig()) == (3, "k_proj")


@pytest.mark.parametrize("config, layer, projection, cfg, message", [
    (QWEN, 4, None, VLMQConfig(), "--layer 4: the model has decoder layers 0-3"),
    (QWEN, -1, None, VLMQConfig(), "--layer -1"),
    (QWEN, 1, "o_proj", VLMQConfig(targets=("q_proj", "k_proj")), "--projection o_proj: VLMQ weights only its targets"),
    ({"model_type": "llava_onevision", "text_config": {"num_hidden_layers": 2}}, 1, None, VLMQConfig(), "anyres"),
    ({"model_type": "llama"}, 1, None, VLMQConfig(), "supports the model types"),
])
def test_what_cannot_be_drawn_is_refused(config, layer, projection, cfg, message):
    with pytest.raises(BadInput, match=message):
        check_request(config, layer, projection, cfg)


def test_the_image_must_exist_and_be_an_image(tmp_path):
    with pytest.raises(BadInput, match="no such file"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(BadInput, match="not a readable image"):
        read_image(tmp_path / "text.png")
    Image.new("L", (5, 4)).save(tmp_path / "grey.png")
    assert read_image(tmp_path / "grey.png").mode == "RGB"


def test_the_output_must_be_a_new_png_path(tmp_path):
    with pytest.raises(BadInput, match="ending in .png"):
        check_png_out(tmp_path / "g.jpg", overwrite=False)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(BadInput, match="is a directory"):
        check_png_out(tmp_path / "dir.png", overwrite=False)
    (tmp_path / "old.png").write_bytes(b"user data")
    with pytest.raises(BadInput, match="--overwrite"):
        check_png_out(tmp_path / "old.png", overwrite=False)
    assert check_png_out(tmp_path / "old.png", overwrite=True) == tmp_path / "old.png"
    assert check_png_out(tmp_path / "new" / "g.png", overwrite=False).parent.is_dir()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(BadInput, match="cannot write"):
        check_png_out(locked / "g.png", overwrite=False)


def test_a_conversation_has_the_answer_turn_only_when_given():
    image = Image.new("RGB", (4, 4))
    assert [t["role"] for t in conversation(image, "what ?")] == ["user"]
    turns = conversation(image, "what ?", "a cross")
    assert turns[0]["content"][0]["image"] is image and turns[1]["content"][0]["text"] == "a cross"


def test_the_image_grid_is_the_merged_patch_grid_of_one_image():
    assert _image_grid(torch.tensor([[1, 16, 12]]), 2, 48) == (8, 6)
    with pytest.raises(RunFailed, match="as one image"):
        _image_grid(torch.tensor([[1, 16, 12], [1, 4, 4]]), 2, 52)
    with pytest.raises(RunFailed, match="as one image"):
        _image_grid(torch.tensor([[1, 16, 12]]), 2, 47)
