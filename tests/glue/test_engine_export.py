"""The vLLM/SGLang export (target="vllm"): what humming's rules read from the saved files is, bit for bit, what
the quantizer produced in memory; the default GPTQModel export is flagged as not engine-ready."""
import json

import pytest
import torch

from vlmq_gptqmodel import VLMQConfig
from vlmq_gptqmodel.cli import main
from vlmq_gptqmodel.engines import engine_problems
from vlmq_gptqmodel.humming_reader import read_checkpoint
from vlmq_gptqmodel.runner import QuantSpec, quantize_to_dir
from vlmq_gptqmodel.synth.dequantized import checkpoint_weights


@pytest.fixture
def record_packing(monkeypatch):
    """Every module GPTQModel packs: its quantized weight (the quantizer's output), scales, zeros and g_idx."""
    from gptqmodel.looper import gptq_processor

    seen, pack = {}, gptq_processor.pack_module

    def recording(*, name, layers, q_scales, q_zeros, q_g_idx, **kw):
        seen[name] = dict(weight=layers[name].weight.detach().float().clone(), scales=q_scales.clone(),
                          zeros=q_zeros.clone(), g_idx=q_g_idx.clone())
        return pack(name=name, layers=layers, q_scales=q_scales, q_zeros=q_zeros, q_g_idx=q_g_idx, **kw)

    monkeypatch.setattr(gptq_processor, "pack_module", recording)
    return seen


def export(tiny_vlm, calib, out, **spec):
    quantize_to_dir(tiny_vlm("qwen2_vl"), calib, out, QuantSpec(group_size=32, desc_act=False, target="vllm", dtype="float32", **spec),
                    "vlmq", VLMQConfig())
    return json.loads((out / "config.json").read_text())["quantization_config"]


@pytest.mark.parametrize("bits,sym", [(2, False), (3, False), (4, False), (3, True)])
def test_engine_export_reads_back_bit_for_bit(tiny_vlm, calib, tmp_path, record_packing, bits, sym):
    config = export(tiny_vlm, calib, tmp_path, bits=bits, sym=sym)
    assert engine_problems(tmp_path) == []
    assert config["desc_act"] is False and config["checkpoint_format"] == ("gptq" if sym else "gptq_v2")
    decoded = read_checkpoint(tmp_path, config)
    assert set(decoded) == set(record_packing) and len(decoded) == 2 * 7  # 2 layers x q,k,v,o,gate,up,down
    for name, mem in record_packing.items():
        got = decoded[name]
        scales, zeros = mem["scales"].float(), mem["zeros"].long()  # [N, G]: per output channel and group
        assert torch.equal(mem["g_idx"].long(), torch.arange(len(mem["g_idx"])) // 32)  # humming's groups
        assert torch.equal(got.scales, mem["scales"].half())
        if sym:
            assert torch.equal(zeros, torch.full_like(zeros, 1 << (bits - 1)))
        assert torch.equal(got.zeros, zeros), name
        # the codes the in-memory weight stands for: (weight / scale) + zero, an integer in [0, 2^bits)
        codes = mem["weight"] / scales.repeat_interleave(32, dim=1) + zeros.repeat_interleave(32, dim=1)
        assert torch.allclose(codes, codes.round(), atol=1e-3)
        assert codes.round().min() >= 0 and codes.round().max() < 1 << bits
        assert torch.equal(got.codes, codes.round().long()), name
        assert torch.allclose(got.weight(), mem["weight"], rtol=2e-3, atol=1e-6)  # scales stored in fp16


def test_gptqmodel_serves_the_engine_export_as_the_humming_reader_reads_it(tiny_vlm, calib, tmp_path):
    from gptqmodel import GPTQModel

    config = export(tiny_vlm, calib, tmp_path, bits=3)
    decoded = read_checkpoint(tmp_path, config)
    model = GPTQModel.load(str(tmp_path), device="cpu", dtype=torch.float16)
    served = {name: module.dequantize_weight().float().t() for name, module in model.model.named_modules()
              if name in decoded}
    assert set(served) == set(decoded)
    for name, weight in served.items():
        # equal up to GPTQModel's half-precision arithmetic; a zero point read one off moves a weight by a scale
        assert torch.allclose(weight, decoded[name].weight(), rtol=1e-2, atol=1e-4), name
    ours = checkpoint_weights(tmp_path)  # the quality benchmark's fp32 reader (kernels/layout.py) agrees exactly
    assert all(torch.allclose(ours[name], decoded[name].weight(), rtol=1e-6, atol=0) for name in decoded)


def test_the_default_export_is_not_engine_ready(gptq_checkpoint, capsys):
    checkpoint = gptq_checkpoint(bits=3, group_size=32, desc_act=True)
    problems = " ".join(engine_problems(checkpoint))
    assert "act-order" in problems and "zero points in format 'gptq'" in problems
    assert "not excluded by a negative dynamic rule" in problems
    capsys.readouterr()  # the fixture's own output
    assert main(["check", str(checkpoint), "--target", "vllm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not ready for vllm" in err and "--target vllm" in err


def test_engine_target_refuses_act_order():
    with pytest.raises(ValueError, match="desc_act=False"):
        QuantSpec(target="vllm", desc_act=True).quantize_config(gptaq=False)
