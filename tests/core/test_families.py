"""The per-family adapter: what VLMQ reads from a Qwen-VL or LLaVA-OneVision model, and the attention
block it copies from a LLaVA-OneVision (Qwen2) decoder layer."""
import pytest
import torch
from transformers import AutoModelForImageTextToText

from vlmq_gptqmodel.attention_block import block_gradients, causal_mask, copy_attention_block
from vlmq_gptqmodel.config import ATTENTION_PROJECTIONS, VLMQConfig
from vlmq_gptqmodel.errors import BadInput
from vlmq_gptqmodel.families import FAMILIES, LLAVA_ONEVISION, QWEN_VL, SUPPORTED_MODEL_TYPES, family_of
from vlmq_gptqmodel.layer_importance import LayerStreams, layer_importance
from vlmq_gptqmodel.mlp_block import copy_mlp_block

S = 11


def test_every_model_type_has_one_family_and_the_paper_calibration_length():
    assert family_of("llava_onevision") is LLAVA_ONEVISION and family_of("qwen2_5_vl") is QWEN_VL
    assert SUPPORTED_MODEL_TYPES == ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision")
    assert len({t for f in FAMILIES for t in f.model_types}) == len(SUPPORTED_MODEL_TYPES)
    assert (QWEN_VL.calibration_length, LLAVA_ONEVISION.calibration_length) == (512, 986)  # paper, Appendix E.1
    with pytest.raises(BadInput, match="llava_onevision.*'llava'"):
        family_of("llava")  # LLaVA-1.5 is another model


def test_llava_onevision_vision_ids_come_from_the_token_index_fields():
    from transformers import LlavaOnevisionConfig

    cfg = LlavaOnevisionConfig(image_token_index=7, video_token_index=9)
    assert LLAVA_ONEVISION.vision_token_ids(cfg) == [7, 9]
    assert LLAVA_ONEVISION.projection("self_attn.o_proj") == "o_proj"
    assert LLAVA_ONEVISION.projection("mlp.down_proj") == "down_proj"
    assert LLAVA_ONEVISION.projection("self_attn.down_proj") is None  # each block names only its own
    assert LLAVA_ONEVISION.projection("mlp.q_proj") is None
    assert LLAVA_ONEVISION.projection("mlp") is None


@pytest.fixture(scope="module")
def ov_layer(tiny_vlm):
    model = AutoModelForImageTextToText.from_pretrained(str(tiny_vlm("llava_onevision")), dtype=torch.float32)
    layers = LLAVA_ONEVISION.decoder_layers(model)
    assert layers is model.model.language_model.layers
    lm = model.model.language_model
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, S, lm.config.hidden_size, generator=gen)
    x_hat = x + 0.05 * torch.randn(x.shape, generator=gen)
    pe = lm.rotary_emb(x, torch.arange(S).view(1, S))  # plain 1-D RoPE (Qwen2), not M-RoPE
    return layers[1], x, x_hat, pe


def test_copied_block_reproduces_the_qwen2_attention_of_llava_onevision(ov_layer):
    layer, x, _, pe = ov_layer
    block = copy_attention_block(layer, torch.device("cpu"), family=LLAVA_ONEVISION)
    assert type(block.attn).__name__ == "Qwen2Attention" and block.attn.q_proj.bias is not None
    with torch.no_grad():
        live = x + layer.self_attn(layer.input_layernorm(x), attention_mask=None, position_embeddings=pe)[0]
        mine = block(x, causal_mask(1, S, x.device), pe)
    assert torch.allclose(live, mine, atol=1e-5)
    grads = block_gradients(block, x, x, causal_mask(1, S, x.device), pe, ATTENTION_PROJECTIONS)
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())  # X_hat == X: no signal


def test_copied_mlp_block_reproduces_the_qwen2_mlp_of_llava_onevision(ov_layer):
    layer, x, _, _ = ov_layer
    with torch.no_grad():
        live = x + layer.mlp(layer.post_attention_layernorm(x))
        mine = copy_mlp_block(layer, torch.device("cpu"), family=LLAVA_ONEVISION)(x)
    assert torch.allclose(live, mine, atol=1e-5)


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_gradient_importance_on_a_llava_onevision_layer(ov_layer, norm):
    layer, x, x_hat, pe = ov_layer
    vision = torch.zeros(1, S, dtype=torch.bool)
    vision[:, 1:7] = True
    streams = LayerStreams(fp=[x], quant=[x_hat], position_embeddings=[pe], keep=[None], vision=[vision])
    weights, report = layer_importance(VLMQConfig(norm=norm), layer, 1, streams, torch.device("cpu"),
                                       family=LLAVA_ONEVISION)
    assert report["policy"] is None
    for name in ATTENTION_PROJECTIONS:
        g = weights[name][0]
        assert g.shape == (1, S) and torch.all(g > 0) and g.std() > 0.01
