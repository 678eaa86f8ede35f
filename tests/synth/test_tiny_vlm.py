"""Tiny Qwen-VL and LLaVA-OneVision builders: tokenizer/processor/config agree, and saved models work with
transformers and GPTQModel."""
import json
import os

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from vlmq_gptqmodel.synth import tiny_vlm
from vlmq_gptqmodel.synth.world import VOCAB


def _conversation(image, prompt="describe the image .", answer=None):
    conv = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]
    if answer is not None:
        conv.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return conv


def _image(size, seed):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def test_tokenizer_maps_every_word_and_special_token_to_its_own_id():
    tok = tiny_vlm.build_tokenizer(VOCAB)
    ids = tok.convert_tokens_to_ids(list(tiny_vlm.SPECIAL_TOKENS) + list(VOCAB))
    assert len(set(ids)) == len(ids) and tok.unk_token_id not in ids[len(tiny_vlm.SPECIAL_TOKENS):]
    text = "what colour is the circle ? red , 4 A ."
    assert tok.decode(tok(text)["input_ids"]) == text
    # Punctuation glued to a word splits off like the spaced form.
    assert tok("circle?")["input_ids"] == tok("circle ?")["input_ids"]
    assert tok("zebra")["input_ids"] == [tok.unk_token_id]


def test_tokenizer_rejects_words_that_cannot_be_single_tokens():
    with pytest.raises(ValueError, match="whitespace or special"):
        tiny_vlm.build_tokenizer(["two words"])
    with pytest.raises(ValueError, match="whitespace or special"):
        tiny_vlm.build_tokenizer(["<|im_end|>"])


@pytest.mark.parametrize("arch,image_size", [("qwen2_vl", 56), ("qwen2_5_vl", 112), ("qwen3_vl", 128)])
def test_processor_gives_expected_image_token_count_and_no_unknown_words(arch, image_size):
    tok = tiny_vlm.build_tokenizer(VOCAB)
    proc = tiny_vlm.build_processor(tok, arch, image_size)
    conv = _conversation(_image(image_size, 0), "what colour is the circle ?")
    text = proc.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    # A square image of another size is resized to the same token budget.
    for image in (_image(image_size, 1), _image(image_size + 20, 2), _image(image_size * 2, 3)):
        enc = proc(text=[text], images=[image], return_tensors="pt")
        ids = enc["input_ids"][0].tolist()
        expected = (image_size // (tiny_vlm.PATCH_SIZE[arch] * 2)) ** 2
        assert ids.count(tok.convert_tokens_to_ids(tiny_vlm.IMAGE_PAD)) == expected
        assert tok.unk_token_id not in ids


def test_bad_arch_and_image_size_are_rejected_with_the_fix():
    tok = tiny_vlm.build_tokenizer(VOCAB)
    with pytest.raises(ValueError, match="qwen2_vl"):
        tiny_vlm.build_processor(tok, "llava", 56)
    with pytest.raises(ValueError, match="multiple of 28"):
        tiny_vlm.build_processor(tok, "qwen2_vl", 60)
    with pytest.raises(ValueError, match="multiple of 32"):
        tiny_vlm.build_processor(tok, "qwen3_vl", 56)


@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
def test_mrope_section_covers_half_the_head_dim(head_dim):
    section = tiny_vlm._mrope_section(head_dim)
    assert sum(section) == head_dim // 2 and min(section) > 0


def test_saved_model_is_deterministic_and_loads_with_transformers(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    a = tiny_vlm.save_tiny_vlm(tmp_path / "a", seed=3)
    b = tiny_vlm.save_tiny_vlm(tmp_path / "b", seed=3)
    c = tiny_vlm.save_tiny_vlm(tmp_path / "c", seed=4)
    model = AutoModelForImageTextToText.from_pretrained(a)
    proc = AutoProcessor.from_pretrained(a)
    cfg = model.config
    tok = proc.tokenizer
    assert cfg.image_token_id == tok.convert_tokens_to_ids(tiny_vlm.IMAGE_PAD)
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids(tiny_vlm.VISION_START)
    assert cfg.text_config.vocab_size == len(tok)
    assert json.loads((a / "generation_config.json").read_text())["do_sample"] is False

    def weights(d):
        with safe_open(str(d / "model.safetensors"), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    wa, wb, wc = weights(a), weights(b), weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)

    image = _image(56, 0)
    text = proc.apply_chat_template(_conversation(image), tokenize=False, add_generation_prompt=True)
    enc = proc(text=[text], images=[image], return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
        blank = model(**proc(text=[text], images=[Image.new("RGB", (56, 56))], return_tensors="pt")).logits
    assert torch.isfinite(logits).all()
    # The image reaches the language model: a different image changes the next-token distribution.
    assert not torch.allclose(logits[0, -1], blank[0, -1])


def test_llava_onevision_tokenizer_has_its_placeholders_and_qwen_chat_tokens():
    tok = tiny_vlm.build_tokenizer(VOCAB, "llava_onevision")
    ids = tok.convert_tokens_to_ids(list(tiny_vlm.LLAVA_SPECIAL_TOKENS) + list(VOCAB))
    assert len(set(ids)) == len(ids) and tok.unk_token_id not in ids[len(tiny_vlm.LLAVA_SPECIAL_TOKENS):]
    assert tok.convert_tokens_to_ids(tiny_vlm.IMAGE_PAD) == tok.unk_token_id  # no Qwen-VL placeholders
    conv = _conversation(_image(56, 0), "what colour is the circle ?")
    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>user\n<image>what colour") and text.endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="whitespace or special"):
        tiny_vlm.build_tokenizer(["<image>"])
    with pytest.raises(ValueError, match="llava_onevision special tokens"):
        tiny_vlm.special_token_ids(tiny_vlm.build_tokenizer(VOCAB), "llava_onevision")


@pytest.mark.parametrize("height,width", [(28, 28), (56, 56), (224, 224), (40, 100), (100, 40), (30, 200)])
def test_llava_onevision_processor_gives_the_anyres_token_count(height, width):
    tok = tiny_vlm.build_tokenizer(VOCAB, "llava_onevision")
    proc = tiny_vlm.build_processor(tok, "llava_onevision", 28)
    image = Image.new("RGB", (width, height), "white")
    text = proc.apply_chat_template(_conversation(image), tokenize=False, add_generation_prompt=True)
    enc = proc(text=[text], images=[image], return_tensors="pt")
    count = enc["input_ids"][0].tolist().count(tok.convert_tokens_to_ids(tiny_vlm.LLAVA_IMAGE))
    assert count == tiny_vlm.llava_image_tokens(28, height, width)
    assert enc["image_sizes"].dtype == torch.long and enc["image_sizes"][0].tolist() == [height, width]
    assert tiny_vlm.llava_image_tokens(28, 224, 224) == tiny_vlm.image_tokens_per_image("llava_onevision", 28) == 24


def test_llava_onevision_image_size_is_a_tile_of_whole_patches():
    tok = tiny_vlm.build_tokenizer(VOCAB, "llava_onevision")
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        tiny_vlm.build_processor(tok, "llava_onevision", 30)
    with pytest.raises(ValueError, match="tiny_llava_onevision_config"):
        tiny_vlm.tiny_config("llava_onevision", 10, image_token_id=1, video_token_id=2, vision_start_token_id=3,
                             vision_end_token_id=4, eos_token_id=5, pad_token_id=6, bos_token_id=7)
    assert tiny_vlm.full_budget_image_size("llava_onevision", 28) == 56
    assert tiny_vlm.full_budget_image_size("qwen2_vl", 112) == 112


def test_saved_llava_onevision_loads_and_its_image_reaches_the_language_model(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmq_gptqmodel.families import LLAVA_ONEVISION

    src = tiny_vlm.save_tiny_vlm(tmp_path / "ov", "llava_onevision", seed=0)
    model = AutoModelForImageTextToText.from_pretrained(src)
    proc = AutoProcessor.from_pretrained(src)
    assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert type(proc).__name__ == "LlavaOnevisionProcessor"
    cfg, tok = model.config, proc.tokenizer
    assert cfg.image_token_index == tok.convert_tokens_to_ids(tiny_vlm.LLAVA_IMAGE)
    assert LLAVA_ONEVISION.vision_token_ids(cfg) == [cfg.image_token_index, cfg.video_token_index]
    assert cfg.text_config.model_type == "qwen2" and cfg.vision_config.model_type == "siglip_vision_model"
    assert len(LLAVA_ONEVISION.decoder_layers(model)) == cfg.text_config.num_hidden_layers
    assert model.model.image_newline.shape == (cfg.text_config.hidden_size,)

    image = _image(60, 0)
    text = proc.apply_chat_template(_conversation(image), tokenize=False, add_generation_prompt=True)
    with torch.no_grad():
        logits = model(**proc(text=[text], images=[image], return_tensors="pt")).logits
        other = model(**proc(text=[text], images=[_image(60, 1)], return_tensors="pt")).logits
    assert torch.isfinite(logits).all() and not torch.allclose(logits[0, -1], other[0, -1])


@pytest.mark.slow
@pytest.mark.parametrize("arch", tiny_vlm.SUPPORTED_ARCHS)
def test_gptqmodel_quantize_save_reload_generate(arch, tmp_path):
    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor

    size = tiny_vlm.default_image_size(arch)
    src = tiny_vlm.save_tiny_vlm(tmp_path / "fp", arch, seed=1, hidden_size=64, intermediate_size=128)
    calib = [_conversation(_image(size, i), answer="a red circle at the top left .") for i in range(4)]
    model = GPTQModel.load(str(src), QuantizeConfig(bits=4, group_size=32, device="cpu", offload_to_disk=False))
    model.quantize(calib, batch_size=1)
    model.save(str(tmp_path / "q"))

    with safe_open(str(tmp_path / "q" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.language_model.layers.0.self_attn.q_proj.qweight" in keys
    assert "model.language_model.layers.1.mlp.down_proj.scales" in keys
    assert all(k.startswith("model.language_model.layers.") for k in keys if k.endswith("qweight"))

    quant = GPTQModel.load(str(tmp_path / "q"), device="cpu")
    proc = AutoProcessor.from_pretrained(tmp_path / "q")
    image = _image(size, 9)
    text = proc.apply_chat_template(_conversation(image), tokenize=False, add_generation_prompt=True)
    enc = proc(text=[text], images=[image], return_tensors="pt")
    out = quant.generate(**enc, max_new_tokens=4, do_sample=False)
    new = out[0, enc["input_ids"].shape[1]:]
    assert 1 <= len(new) <= 4 and int(new.max()) < len(proc.tokenizer)

    # W4 of a random model keeps the next-token logits close to the FP model's.
    fp = AutoModelForImageTextToText.from_pretrained(src)
    with torch.no_grad():
        ref = fp(**enc).logits[0, -1].float()
        got = quant.model(**enc).logits[0, -1].float()
    assert torch.nn.functional.cosine_similarity(ref, got, dim=0) > 0.9
