"""A tiny quantized Qwen2-VL served by the VLMQ kernels gives TorchLinear's logits (Triton interpreter).

The checkpoints come from conftest's `gptq_checkpoint` (GPTQModel quantizes the `tiny_vlm` model on CPU).
"""

import pytest
import torch

pytest.importorskip("gptqmodel")  # the kernels need only torch and Triton; serving needs GPTQModel too
from gptqmodel import BACKEND, GPTQModel  # noqa: E402
from gptqmodel.nn_modules.qlinear.torch import TorchLinear  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from vlmq_gptqmodel.glue import serving  # noqa: E402
from vlmq_gptqmodel.kernels import VLMQQuantLinear  # noqa: E402
from vlmq_gptqmodel.serving import load_quantized  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LINEARS_PER_LAYER = 7  # q, k, v, o, gate, up, down


def prompt_inputs(checkpoint, with_image: bool):
    processor = AutoProcessor.from_pretrained(str(checkpoint))
    if not with_image:  # one token: the decode-sized path (M = 1)
        ids = torch.tensor([[processor.tokenizer.convert_tokens_to_ids("<|im_start|>")]])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    image = Image.new("RGB", (112, 112), (200, 40, 30))
    content = [{"type": "image", "image": image}, {"type": "text", "text": "what"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    return dict(processor(text=[text], images=[image], return_tensors="pt"))


def logits(model, inputs):
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(**{k: v.to(device) for k, v in inputs.items()}).logits.float().cpu()


# g128 is not among them: the tiny model's width 64 cannot take it (refused before quantizing, issue 20 item 3).
# Per-channel (-1): GPTQModel loads it with group_size = each layer's input width, still served by the kernels
# (with desc_act: GPTQModel 7.7.0 turns on act_group_aware for desc_act=False, and that refuses group size -1).
@pytest.mark.parametrize("bits,group_size,desc_act", [(3, 32, True), (2, 64, False), (4, 64, True),
                                                      (2, -1, True), (3, -1, True), (4, -1, True)])
def test_served_logits_match_torch_linear(gptq_checkpoint, tiny_vlm, bits, group_size, desc_act):
    checkpoint = gptq_checkpoint(bits=bits, group_size=group_size, desc_act=desc_act)
    served = load_quantized(checkpoint, device=DEVICE, allow_interpreter=True)
    report = served.vlmq_serving_report
    n_layers = served.model.config.text_config.num_hidden_layers
    assert len(report.served) == LINEARS_PER_LAYER * n_layers and not report.kept
    assert not any(isinstance(m, TorchLinear) for m in served.modules())
    torch_linear = GPTQModel.load(str(checkpoint), device=DEVICE, backend=BACKEND.TORCH)
    dtype = next(torch_linear.model.parameters()).dtype
    full_precision = AutoModelForImageTextToText.from_pretrained(str(tiny_vlm("qwen2_vl")), dtype=dtype).to(DEVICE)
    for with_image in (True, False):  # prefill (M > 16: tiled GEMM) and one token (M = 1: GEMV)
        inputs = prompt_inputs(checkpoint, with_image)
        ours, theirs = logits(served.model, inputs), logits(torch_linear.model, inputs)
        # Same weights, different rounding (TorchLinear rounds W to the activation dtype, the GEMV does
        # not): within three ulps of the largest logit ...
        largest = theirs.abs().max()
        tolerance = 3 * torch.finfo(dtype).eps * 2.0 ** torch.floor(torch.log2(largest))
        assert (ours - theirs).abs().max() <= tolerance
        if with_image:  # ... which is well below the quantization error, so a kernel that ignored the
            # quantized weights would fail the check above. (The margin is 2x: at W4 g128 this tiny model's
            # quantization error was 3.8x the tolerance with the image-first calibration prompts.)
            assert (logits(full_precision, inputs) - theirs).abs().max() > 2 * tolerance


def test_served_model_generates_like_torch_linear(gptq_checkpoint):
    """generate() through GPTQModel: prefill, then M = 1 steps with the KV cache (greedy, deterministic)."""
    checkpoint = gptq_checkpoint(bits=3, group_size=32, desc_act=True)
    inputs = prompt_inputs(checkpoint, with_image=True)
    served = load_quantized(checkpoint, device=DEVICE, allow_interpreter=True)
    torch_linear = GPTQModel.load(str(checkpoint), device=DEVICE, backend=BACKEND.TORCH)
    kwargs = dict(max_new_tokens=3, do_sample=False)
    ours = served.generate(**{k: v.to(DEVICE) for k, v in inputs.items()}, **kwargs)
    theirs = torch_linear.generate(**{k: v.to(DEVICE) for k, v in inputs.items()}, **kwargs)
    assert ours.shape[1] == inputs["input_ids"].shape[1] + 3
    assert torch.equal(ours.cpu(), theirs.cpu())


def test_cpu_without_opt_in_falls_back_to_gptqmodel_kernels(gptq_checkpoint):
    checkpoint = gptq_checkpoint(bits=3, group_size=32, desc_act=True)
    with pytest.warns(RuntimeWarning, match="serving with GPTQModel's own kernels"):
        model = load_quantized(checkpoint, device="cpu")
    assert model.vlmq_serving_report is None
    assert any(isinstance(m, TorchLinear) for m in model.modules())
    assert not any(isinstance(m, VLMQQuantLinear) for m in model.modules())
    with pytest.raises(RuntimeError, match="VLMQ kernels unavailable: device cpu is not a CUDA GPU"):
        load_quantized(checkpoint, device="cpu", fallback=False)
    with pytest.raises(RuntimeError, match="cannot serve .* device cpu is not a CUDA GPU"):
        serving.serve(model)
    with pytest.raises(ValueError, match="chooses the backend itself"):
        load_quantized(checkpoint, device="cpu", backend=BACKEND.TORCH)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a host without CUDA")
def test_cuda_requested_without_a_gpu_is_refused():
    assert serving.refusal_reason("cuda") == "CUDA is not available"


def test_layers_the_kernels_cannot_take_stay_on_torch_linear(gptq_checkpoint):
    model = GPTQModel.load(str(gptq_checkpoint(bits=3, group_size=32, desc_act=True)), device=DEVICE,
                           backend=BACKEND.TORCH)
    target = model.model.model.language_model.layers[0].mlp.down_proj
    target.g_idx = torch.flip(target.g_idx, [0]) * 0  # one group for all rows: not the declared group size
    report = serving.serve(model, allow_interpreter=True)
    assert list(report.kept) == ["model.model.language_model.layers.0.mlp.down_proj"]
    assert "g_idx does not describe groups of 32 rows" in report.kept[list(report.kept)[0]]
    assert isinstance(model.model.model.language_model.layers[0].mlp.down_proj, TorchLinear)
    assert isinstance(model.model.model.language_model.layers[0].mlp.up_proj, VLMQQuantLinear)
    assert "stay on GPTQModel's TorchLinear" in report.summary()
