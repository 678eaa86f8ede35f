"""Block-wise gradients and the per-layer importance policies on a real (tiny) Qwen2-VL decoder layer."""
import pytest
import torch
from transformers import AutoModelForImageTextToText

from vlmq_gptqmodel.attention_block import block_gradients, causal_mask, copy_attention_block, projection_errors
from vlmq_gptqmodel.config import ATTENTION_PROJECTIONS, VLMQConfig
from vlmq_gptqmodel.layer_importance import LayerStreams, layer_importance

S = 9


@pytest.fixture(scope="module")
def layer_and_inputs(tiny_vlm):
    model = AutoModelForImageTextToText.from_pretrained(str(tiny_vlm("qwen2_vl")), dtype=torch.float32)
    lm = model.model.language_model
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, S, lm.config.hidden_size, generator=gen)
    x_hat = x + 0.05 * torch.randn(x.shape, generator=gen)
    position_ids = torch.arange(S).view(1, 1, S).expand(3, 1, S)  # M-RoPE: (temporal, h, w)
    pe = lm.rotary_emb(x, position_ids)
    return lm.layers[1], x, x_hat, pe


@pytest.mark.parametrize("at", ("quantized", "fp"))
@pytest.mark.parametrize("name", ATTENTION_PROJECTIONS)
def test_block_gradient_matches_finite_differences(layer_and_inputs, name, at):
    layer, x, x_hat, pe = layer_and_inputs
    block = copy_attention_block(layer, torch.device("cpu")).double()
    x, x_hat, pe = x.double(), x_hat.double(), tuple(t.double() for t in pe)
    mask = causal_mask(1, S, x.device).double()
    grad = block_gradients(block, x, x_hat, mask, pe, (name,), at=at)[name]
    direction = torch.randn(grad.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eps = 1e-4
    plus = _perturbed_loss(block, x, x_hat, mask, pe, name, eps * direction, at)
    minus = _perturbed_loss(block, x, x_hat, mask, pe, name, -eps * direction, at)
    numeric = (plus - minus) / (2 * eps)
    analytic = (grad * direction).sum().item()
    assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-8)
    assert abs(analytic) > 1e-6


def _perturbed_loss(block, x_fp, x_q, mask, pe, name, delta, at):
    """|| block(x_fp) - block(x_q) ||^2 with z_name shifted by delta on the path `at`: the loss as a
    function of that path's z_name."""
    with torch.no_grad():
        shifted_input = x_q if at == "quantized" else x_fp
        fixed = block(x_fp if at == "quantized" else x_q, mask, pe)
        handle = getattr(block.attn, name).register_forward_hook(lambda m, a, out: out + delta)
        try:
            return (block(shifted_input, mask, pe) - fixed).pow(2).sum().item()
        finally:
            handle.remove()


def test_gradient_is_exactly_zero_when_both_streams_are_equal(layer_and_inputs):
    layer, x, _, pe = layer_and_inputs
    block = copy_attention_block(layer, torch.device("cpu"))
    grads = block_gradients(block, x, x, causal_mask(1, S, x.device), pe, ATTENTION_PROJECTIONS)
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())


def test_layer_errors_are_the_projection_output_differences(layer_and_inputs):
    layer, x, x_hat, pe = layer_and_inputs
    block = copy_attention_block(layer, torch.device("cpu"))
    err = projection_errors(block, x, x_hat, causal_mask(1, S, x.device), pe, ("q_proj",))["q_proj"]
    q = layer.self_attn.q_proj
    with torch.no_grad():
        expected = q(layer.input_layernorm(x_hat)) - q(layer.input_layernorm(x))
    assert torch.allclose(err, expected, atol=1e-5)


def test_copied_block_reproduces_the_live_attention(layer_and_inputs):
    layer, x, _, pe = layer_and_inputs
    block = copy_attention_block(layer, torch.device("cpu"))
    with torch.no_grad():
        live = x + layer.self_attn(layer.input_layernorm(x), attention_mask=None, position_embeddings=pe)[0]
        mine = block(x, causal_mask(1, S, x.device), pe)
    assert torch.allclose(live, mine, atol=1e-5)


def _streams(x, x_hat, pe):
    vision = torch.zeros(1, S, dtype=torch.bool)
    vision[:, 2:6] = True
    return LayerStreams(fp=[x], quant=[x_hat], position_embeddings=[pe], keep=[None], vision=[vision])


def test_gradient_importance_differs_between_projections_and_has_mean_one(layer_and_inputs):
    layer, x, x_hat, pe = layer_and_inputs
    weights, report = layer_importance(VLMQConfig(), layer, 1, _streams(x, x_hat, pe), torch.device("cpu"))
    assert report["policy"] is None
    for name in ATTENTION_PROJECTIONS:
        g = weights[name][0]
        assert g.shape == (1, S) and torch.all(g > 0)
        assert abs(g.mean().item() - 1.0) <= VLMQConfig().min_weight  # floor lifts the mean by at most this
    assert not torch.allclose(weights["q_proj"][0], weights["v_proj"][0], rtol=1e-2)
    assert not torch.allclose(weights["k_proj"][0], weights["o_proj"][0], rtol=1e-2)


def test_gradient_at_fp_takes_g_from_the_full_precision_path(layer_and_inputs):
    layer, x, x_hat, pe = layer_and_inputs
    block = copy_attention_block(layer, torch.device("cpu"))
    weights, _ = layer_importance(VLMQConfig(gradient_at="fp", min_weight=0.0), layer, 1, _streams(x, x_hat, pe),
                                  torch.device("cpu"))
    grad = block_gradients(block, x, x_hat, causal_mask(1, S, x.device), pe, ("k_proj",), at="fp")["k_proj"]
    expected = grad.abs().mean(-1)
    assert torch.allclose(weights["k_proj"][0], expected / expected.mean(), rtol=1e-5)
    default, _ = layer_importance(VLMQConfig(min_weight=0.0), layer, 1, _streams(x, x_hat, pe), torch.device("cpu"))
    assert not torch.allclose(weights["k_proj"][0], default["k_proj"][0], rtol=1e-3)


def test_gradient_at_is_validated():
    with pytest.raises(ValueError, match="gradient_at"):
        VLMQConfig(gradient_at="both")
    with pytest.raises(ValueError, match="granularity='block'"):
        VLMQConfig(gradient_at="fp", granularity="layer")
    with pytest.raises(ValueError, match="importance='gradient'"):
        VLMQConfig(gradient_at="fp", importance="attention")


def test_layer0_uniform_policy_when_streams_are_identical(layer_and_inputs):
    layer, x, _, pe = layer_and_inputs
    weights, report = layer_importance(VLMQConfig(layer0="uniform"), layer, 0, _streams(x, x, pe), torch.device("cpu"))
    assert report["policy"].startswith("uniform")
    assert all(torch.equal(w[0], torch.ones(1, S)) for w in weights.values())


def test_layer0_rtn_probe_gives_informative_positive_weights(layer_and_inputs):
    layer, x, _, pe = layer_and_inputs

    def rtn(_name, w):  # a crude 2-level quantizer is enough to make the probe path differ
        return torch.sign(w) * w.abs().mean()

    weights, report = layer_importance(VLMQConfig(layer0="rtn_probe"), layer, 0, _streams(x, x, pe),
                                       torch.device("cpu"), rtn_weight_transform=rtn)
    assert report["policy"].startswith("rtn_probe")
    g = weights["v_proj"][0]
    assert torch.all(g > 0) and g.std() > 0.01


def test_zero_gradients_fall_back_to_uniform_instead_of_zeroing_the_layer(layer_and_inputs, monkeypatch):
    import vlmq_gptqmodel.layer_importance as li

    layer, x, x_hat, pe = layer_and_inputs
    monkeypatch.setattr(li, "token_factors", lambda grad, norm: torch.zeros(grad.shape[:-1]))
    weights, report = layer_importance(VLMQConfig(), layer, 3, _streams(x, x_hat, pe), torch.device("cpu"))
    assert "fallback" in report["policy"]
    assert all(torch.equal(w[0], torch.ones(1, S)) for w in weights.values())


@pytest.mark.parametrize("importance", ["attention", "random", "modality", "constant"])
def test_other_importance_sources_give_valid_weights(layer_and_inputs, importance):
    layer, x, x_hat, pe = layer_and_inputs
    cfg = VLMQConfig(importance=importance, random_ratio=0.5, random_factor=0.1)
    weights, _ = layer_importance(cfg, layer, 1, _streams(x, x_hat, pe), torch.device("cpu"))
    g = weights["q_proj"][0]
    assert g.shape == (1, S) and torch.all(g > 0) and abs(g.mean().item() - 1.0) <= cfg.min_weight
    vision = _streams(x, x_hat, pe).vision[0]
    if importance == "modality":
        assert len(g[vision].unique()) == 1 and len(g[~vision].unique()) == 1
    if importance == "random":
        assert len(g[~vision].unique()) == 1  # text tokens are never down-weighted
    if importance == "constant":
        assert torch.equal(g, torch.ones(1, S))


def test_layerwise_granularity_weights_differ_from_blockwise(layer_and_inputs):
    layer, x, x_hat, pe = layer_and_inputs
    block, _ = layer_importance(VLMQConfig(granularity="block"), layer, 1, _streams(x, x_hat, pe), torch.device("cpu"))
    lw, _ = layer_importance(VLMQConfig(granularity="layer"), layer, 1, _streams(x, x_hat, pe), torch.device("cpu"))
    assert not torch.allclose(block["o_proj"][0], lw["o_proj"][0], rtol=1e-2)
