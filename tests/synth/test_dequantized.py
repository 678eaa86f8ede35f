"""A saved checkpoint read back as plain fp32 weights equals what GPTQModel's own kernel serves."""
import pytest
import torch

from vlmq_gptqmodel.synth.dequantized import checkpoint_weights, load_dequantized
from vlmq_gptqmodel.synth.rtn_baseline import decoder_linears


@pytest.mark.parametrize("bits,desc_act", [(2, True), (3, True), (4, False)])
def test_dequantized_weights_equal_torchlinears(gptq_checkpoint, bits, desc_act):
    from gptqmodel import BACKEND, GPTQModel
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear

    qdir = gptq_checkpoint(bits=bits, group_size=32, desc_act=desc_act)
    ours = checkpoint_weights(qdir)
    # TorchLinear explicitly: at 4 bits GPTQModel would pick another CPU kernel
    served = GPTQModel.load(str(qdir), device="cpu", dtype=torch.float16, backend=BACKEND.TORCH)
    torch_linears = {name: m for name, m in served.model.named_modules() if isinstance(m, TorchLinear)}
    assert set(ours) == set(torch_linears) and len(ours) == 14
    for name, module in torch_linears.items():
        module.eval()
        with torch.no_grad():
            theirs = module.dequantize_weight().float().t()  # TorchLinear returns [in, out]
        # fp16 scales times small integer codes: equal up to one fp16 rounding of the product
        torch.testing.assert_close(ours[name], theirs, rtol=1e-3, atol=1e-5, msg=name)


def test_load_dequantized_replaces_exactly_the_quantized_linears(tiny_vlm, gptq_checkpoint):
    from transformers import AutoModelForImageTextToText

    qdir = gptq_checkpoint(bits=3, group_size=32)
    fp = AutoModelForImageTextToText.from_pretrained(tiny_vlm("qwen2_vl"), dtype=torch.float32)
    before = {k: v.clone() for k, v in fp.state_dict().items()}
    model = load_dequantized(qdir, fp)
    weights = checkpoint_weights(qdir)
    changed = {k.removesuffix(".weight") for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(weights) == set(decoder_linears(model))
    for name, module in decoder_linears(model).items():
        assert torch.equal(module.weight, weights[name])


def test_load_dequantized_names_the_problem(tiny_vlm, gptq_checkpoint, tmp_path):
    from transformers import AutoModelForImageTextToText

    with pytest.raises(FileNotFoundError, match="quantize_config.json"):
        checkpoint_weights(tmp_path)
    qdir = gptq_checkpoint(bits=3, group_size=32)
    shallower = AutoModelForImageTextToText.from_pretrained(tiny_vlm("qwen2_vl"), dtype=torch.float32)
    shallower.model.language_model.layers = shallower.model.language_model.layers[:1]
    with pytest.raises(ValueError, match="FP model"):
        load_dequantized(qdir, shallower)
    narrower = AutoModelForImageTextToText.from_pretrained(tiny_vlm("qwen2_vl"), dtype=torch.float32)
    layer = narrower.model.language_model.layers[0]
    layer.mlp.down_proj = torch.nn.Linear(8, layer.mlp.down_proj.out_features, bias=False)
    with pytest.raises(ValueError, match="down_proj"):
        load_dequantized(qdir, narrower)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_saved_zero_points_of_zero_are_read_back_as_gptqmodel_exports_them(bits):
    """GPTQModel's v1 export subtracts a word of ones from each whole packed int32 word at 2 and 4 bits
    (gptqmodel/utils/model.py: convert_gptq_v2_to_v1_format_module), so a zero point of 0 borrows from the
    next field; 3 bits are shifted field by field. The reader must undo exactly that."""
    from gptqmodel.utils.model_dequant import _revert_gptq_v1_qzeros_correction

    from vlmq_gptqmodel.kernels.layout import from_saved_qzeros, pack_bitstream, unpack_bitstream

    gen = torch.Generator().manual_seed(bits)
    true = torch.randint(0, 2**bits, (6, 96), generator=gen)  # 96 fields fill whole words at 2, 3 and 4 bits
    true[:, ::3] = 0  # many zero points of 0, each followed by a nonzero one in the same word
    packed = pack_bitstream(true, bits, dim=1)
    if bits == 3:
        saved = _revert_gptq_v1_qzeros_correction(packed.clone(), bits)
    else:
        saved = packed.clone()
        saved -= {2: 0b01010101010101010101010101010101, 4: 0b00010001000100010001000100010001}[bits]
    assert torch.equal(unpack_bitstream(from_saved_qzeros(saved, bits), bits, 96, dim=1).long(), true)
    if bits != 3:  # adding 1 field by field, the earlier reader, gets the borrowed fields wrong
        fieldwise = (unpack_bitstream(saved, bits, 96, dim=1).long() + 1) % 2**bits
        assert not torch.equal(fieldwise, true)
