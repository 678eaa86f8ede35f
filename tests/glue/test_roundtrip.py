"""quantize(method="vlmq") -> save -> GPTQModel.load -> image+text generate, for every bit width."""
import pytest
import torch

from vlmq_gptqmodel import VLMQConfig
from vlmq_gptqmodel.synth.world import make_samples, user_turn


def _generate(qdir):
    from gptqmodel import GPTQModel

    model = GPTQModel.load(str(qdir), device="cpu")
    processor = model.processor
    sample = make_samples("eval", 1, seed=0)[0]
    messages = [user_turn(sample.image, sample.qa[0].question)]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[sample.image], return_tensors="pt")
    with torch.no_grad():
        logits = model.model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    return model, inputs, logits, out


def _zero_columns(qdir):
    """(quantized linears, input columns whose dequantized weight is entirely zero), read from the saved
    tensors: independent of which kernel GPTQModel picks on this machine."""
    from vlmq_gptqmodel.synth.dequantized import checkpoint_weights

    weights = checkpoint_weights(qdir)
    return len(weights), sum(int((w.abs().sum(dim=0) == 0).sum()) for w in weights.values())


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("precursor", ["gptq", "gptaq"])
def test_vlmq_checkpoint_loads_and_generates(tiny_vlm, calib, quantize, tmp_path, bits, precursor):
    model = quantize(tiny_vlm("qwen2_vl"), calib, bits=bits, method="vlmq", vlmq=VLMQConfig(precursor=precursor))
    model.save(str(tmp_path))
    _, inputs, logits, out = _generate(tmp_path)
    assert torch.isfinite(logits).all()
    assert out.shape[1] > inputs["input_ids"].shape[1]  # new tokens were produced
    assert _zero_columns(tmp_path) == (2 * 7, 0)  # 2 layers x q,k,v,o,gate,up,down; no column zeroed


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_other_supported_architectures_roundtrip(tiny_vlm, calib, quantize, tmp_path, arch):
    model = quantize(tiny_vlm(arch), calib, bits=4, method="vlmq", vlmq=VLMQConfig())
    assert model.vlmq_report[1]["policy"] is None  # a real gradient at layer 1
    model.save(str(tmp_path))
    _, inputs, logits, out = _generate(tmp_path)
    assert torch.isfinite(logits).all() and out.shape[1] > inputs["input_ids"].shape[1]
