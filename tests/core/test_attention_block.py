"""Block-wise gradients and the per-layer importance policies on a real (tiny) Qwen2-VL decoder layer: the
paper's attention block, and the MLP block of this project's MLP targets."""
import pytest
import torch
from torch import nn
from transformers import AutoModelForImageTextToText

from vlmq_gptqmodel.attention_block import block_gradients, causal_mask, copy_attention_block, projection_errors
from vlmq_gptqmodel.config import ATTENTION_PROJECTIONS, MLP_PROJECTIONS, PROJECTIONS, VLMQConfig
from vlmq_gptqmodel.importance import normalize_factors, token_factors
from vlmq_gptqmodel.layer_importance import LayerStreams, layer_importance
from vlmq_gptqmodel.mlp_block import copy_mlp_block

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


def test_power_tempers_g_before_normalizing_and_zero_makes_every_token_alike(layer_and_inputs):
    layer, x, x_hat, pe = layer_and_inputs
    streams = _streams(x, x_hat, pe)
    paper, report = layer_importance(VLMQConfig(min_weight=0.0), layer, 1, streams, torch.device("cpu"))
    half, half_report = layer_importance(VLMQConfig(power=0.5, min_weight=0.0), layer, 1, streams, torch.device("cpu"))
    for name in ("q_proj", "o_proj"):
        expected = paper[name][0].sqrt()
        assert torch.allclose(half[name][0], expected / expected.mean(), rtol=1e-5)
        # a flatter G: the weighted Hessian rests on more tokens
        assert (half_report["projections"][name]["effective_tokens"]
                > report["projections"][name]["effective_tokens"])
    flat, _ = layer_importance(VLMQConfig(power=0.0), layer, 1, streams, torch.device("cpu"))
    constant, _ = layer_importance(VLMQConfig(importance="constant"), layer, 1, streams, torch.device("cpu"))
    assert all(torch.equal(flat[n][0], constant[n][0]) for n in flat)


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


def test_copied_mlp_block_reproduces_the_live_mlp(layer_and_inputs):
    layer, x, _, _ = layer_and_inputs
    with torch.no_grad():
        live = x + layer.mlp(layer.post_attention_layernorm(x))
        mine = copy_mlp_block(layer, torch.device("cpu"))(x)
    assert torch.allclose(live, mine, atol=1e-5)


@pytest.mark.parametrize("name", MLP_PROJECTIONS)
def test_mlp_block_gradient_matches_finite_differences(layer_and_inputs, name):
    layer, x, x_hat, _ = layer_and_inputs
    block = copy_mlp_block(layer, torch.device("cpu")).double()
    y, y_hat = x.double(), x_hat.double()
    grad = block_gradients(block, y, y_hat, None, None, (name,))[name]
    direction = torch.randn(grad.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    with torch.no_grad():
        fixed = block(y)
    eps = 1e-4

    def shifted(delta):  # the loss with the quantized path's z_name moved by delta
        handle = getattr(block, name).register_forward_hook(lambda m, a, out: out + delta)
        try:
            with torch.no_grad():
                return (block(y_hat) - fixed).pow(2).sum().item()
        finally:
            handle.remove()

    numeric = (shifted(eps * direction) - shifted(-eps * direction)) / (2 * eps)
    analytic = (grad * direction).sum().item()
    assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-8) and abs(analytic) > 1e-6


def test_down_proj_gradient_is_twice_the_block_output_error(layer_and_inputs):
    """down_proj's output reaches the loss through the residual sum alone: dL/dz = 2 (out_hat - out)."""
    layer, x, x_hat, _ = layer_and_inputs
    block = copy_mlp_block(layer, torch.device("cpu"))
    grad = block_gradients(block, x, x_hat, None, None, ("down_proj",))["down_proj"]
    with torch.no_grad():
        expected = 2 * (block(x_hat) - block(x))
    assert torch.allclose(grad, expected, atol=1e-5)
    err = projection_errors(block, x, x_hat, None, None, ("up_proj",))["up_proj"]
    with torch.no_grad():
        up = layer.mlp.up_proj
        assert torch.allclose(err, up(layer.post_attention_layernorm(x_hat)) - up(layer.post_attention_layernorm(x)),
                              atol=1e-5)


def test_mlp_targets_take_g_from_the_mlp_block_on_the_attention_outputs(layer_and_inputs):
    layer, x, x_hat, pe = layer_and_inputs
    cfg = VLMQConfig(targets=PROJECTIONS, min_weight=0.0)
    weights, report = layer_importance(cfg, layer, 1, _streams(x, x_hat, pe), torch.device("cpu"))
    assert report["policy"] is None and set(report["projections"]) == set(PROJECTIONS)
    attn = copy_attention_block(layer, torch.device("cpu"))
    mask = causal_mask(1, S, torch.device("cpu"))
    with torch.no_grad():
        y, y_hat = attn(x, mask, pe), attn(x_hat, mask, pe)
    grads = block_gradients(copy_mlp_block(layer, torch.device("cpu")), y, y_hat, None, None, MLP_PROJECTIONS)
    for name in MLP_PROJECTIONS:
        expected = normalize_factors([token_factors(grads[name])])[0]
        assert torch.allclose(weights[name][0], expected, rtol=1e-4), name
    # adding the MLP targets leaves the attention projections' g as the paper's method computes it
    paper, _ = layer_importance(VLMQConfig(min_weight=0.0), layer, 1, _streams(x, x_hat, pe), torch.device("cpu"))
    assert all(torch.equal(weights[n][0], paper[n][0]) for n in ATTENTION_PROJECTIONS)
    assert not torch.allclose(weights["up_proj"][0], weights["down_proj"][0], rtol=1e-2)


def test_mlp_targets_alone_need_no_attention_target(layer_and_inputs):
    layer, x, x_hat, pe = layer_and_inputs
    weights, _ = layer_importance(VLMQConfig(targets=("down_proj",)), layer, 1, _streams(x, x_hat, pe),
                                 torch.device("cpu"))
    assert set(weights) == {"down_proj"} and weights["down_proj"][0].std() > 0.01


def test_layer0_rtn_probe_weights_the_mlp_too(layer_and_inputs):
    layer, x, _, pe = layer_and_inputs

    def rtn(_name, w):
        return torch.sign(w) * w.abs().mean()

    weights, report = layer_importance(VLMQConfig(layer0="rtn_probe", targets=PROJECTIONS), layer, 0,
                                       _streams(x, x, pe), torch.device("cpu"), rtn_weight_transform=rtn)
    assert report["policy"].startswith("rtn_probe")
    assert torch.all(weights["gate_proj"][0] > 0) and weights["gate_proj"][0].std() > 0.01


def test_an_mlp_without_gate_up_down_is_refused_with_the_fix():
    layer = nn.Module()
    layer.mlp = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))
    layer.post_attention_layernorm = nn.LayerNorm(4)
    with pytest.raises(ValueError, match="leave them out of VLMQConfig.targets"):
        copy_mlp_block(layer, torch.device("cpu"))
