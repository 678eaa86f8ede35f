"""quantize(method="vlmq") -> save -> GPTQModel.load -> image+text generate, for every bit width."""
import pytest
import torch

from vlmq_gptqmodel import VLMQConfig
from vlmq_gptqmodel.world import make_samples, user_turn


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
    import dataclasses
    import json

    from safetensors.torch import load_file

    from vlmq_gptqmodel.kernels.layout import unpack_gptq
    from vlmq_gptqmodel.kernels.reference import dequantize

    qcfg = json.loads((qdir / "quantize_config.json").read_text())
    bits, group_size = qcfg["bits"], qcfg["group_size"]
    tensors = load_file(str(qdir / "model.safetensors"))
    modules, zero = 0, 0
    for name in (k.removesuffix(".qweight") for k in tensors if k.endswith(".qweight")):
        scales, g_idx = tensors[f"{name}.scales"], tensors[f"{name}.g_idx"]
        codes = unpack_gptq(tensors[f"{name}.qweight"], tensors[f"{name}.qzeros"], scales, g_idx, bits, group_size,
                            in_features=g_idx.numel(), out_features=scales.shape[1])
        # the "gptq" (v1) format stores zero - 1
        codes = dataclasses.replace(codes, zeros=(codes.zeros.long() + 1) % 2**bits)
        w = dequantize(codes)  # [out, in]
        modules += 1
        zero += int((w.abs().sum(dim=0) == 0).sum())
    return modules, zero


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
