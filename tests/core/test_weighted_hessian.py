"""The token-weighted GPTQ/GPTAQ accumulators against dense X G^2 X^T references, on synthetic data."""
import pytest
import torch
from gptqmodel import QuantizeConfig
from gptqmodel.looper.named_module import NamedModule
from gptqmodel.looper.native_processor import NATIVE_INPUTS_STATE_KEY
from gptqmodel.quantization.config import GPTAQConfig
from gptqmodel.quantization.gptaq import GPTAQ
from gptqmodel.quantization.gptq import GPTQ

from vlmq_gptqmodel.glue.tasks import TokenWeightedGPTAQ, TokenWeightedGPTQ, make_token_weighted

C = 16


def _named(native=None):
    linear = torch.nn.Linear(C, 8, bias=False)
    named = NamedModule(linear, name="self_attn.q_proj", full_name="model.layers.1.self_attn.q_proj", layer_index=1)
    if native is not None:
        named.state[NATIVE_INPUTS_STATE_KEY] = list(native)
    return named


def _batches(n=3, seq=(5, 7, 4)):
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(1, seq[i], C, generator=gen).to(torch.bfloat16) for i in range(n)]
    nat = [x.float() + 0.1 * torch.randn(x.shape, generator=gen) for x in xs]
    gs = [torch.rand(1, seq[i], generator=gen) + 0.05 for i in range(n)]
    return xs, nat, gs


def _feed(task, xs):
    for b, x in enumerate(xs):
        task.add_batch(x, None, batch_index=b)


def _cols(ts):  # list of [1, S, C] -> [C, N]
    return torch.cat([t.reshape(-1, C) for t in ts]).double().T


def test_weighted_gptq_hessian_equals_dense_XG2XT():
    xs, _, gs = _batches()
    task = make_token_weighted(GPTQ(_named(), QuantizeConfig(bits=4, group_size=16)), lambda b: gs[b])
    assert isinstance(task, TokenWeightedGPTQ)
    _feed(task, xs)
    task.materialize_global_hessian()
    X, g = _cols(xs), torch.cat([x.reshape(-1) for x in gs]).double()
    n = X.shape[1]
    expected = 2.0 / n * X @ torch.diag(g**2) @ X.T  # GPTQ normalizes by 2 / tokens
    assert torch.allclose(task.H.double(), expected, rtol=1e-5, atol=1e-6)


def test_weighted_gptaq_weights_both_hessian_and_asymmetric_term():
    xs, nat, gs = _batches()
    qcfg = QuantizeConfig(bits=4, group_size=16, gptaq=GPTAQConfig(device="cpu"))
    task = make_token_weighted(GPTAQ(_named(nat), qcfg), lambda b: gs[b])
    assert isinstance(task, TokenWeightedGPTAQ)
    _feed(task, xs)
    X, Xn = _cols(xs), _cols(nat)
    G2 = torch.diag(torch.cat([x.reshape(-1) for x in gs]).double() ** 2)
    scale = 2.0 / len(xs)  # GPTAQ normalizes by 2 / calibration requests
    assert torch.allclose(task.H.double(), scale * X @ G2 @ X.T, rtol=1e-5, atol=1e-6)
    assert torch.allclose(task.dXXT.double(), scale * (Xn - X) @ G2 @ X.T, rtol=1e-5, atol=1e-6)
    # weighting only H (and not the asymmetric term) would give a different dXXT
    assert not torch.allclose(task.dXXT.double(), scale * (Xn - X) @ X.T, rtol=1e-3)


@pytest.mark.parametrize("precursor", ["gptq", "gptaq"])
def test_unit_weights_reproduce_the_precursor_accumulators_bit_for_bit(precursor):
    xs, nat, _ = _batches()
    ones = lambda b: torch.ones(xs[b].shape[:2])  # noqa: E731
    if precursor == "gptq":
        qcfg = QuantizeConfig(bits=4, group_size=16)
        plain, weighted = GPTQ(_named(), qcfg), make_token_weighted(GPTQ(_named(), qcfg), ones)
    else:
        qcfg = QuantizeConfig(bits=4, group_size=16, gptaq=GPTAQConfig(device="cpu"))
        plain, weighted = GPTAQ(_named(nat), qcfg), make_token_weighted(GPTAQ(_named(nat), qcfg), ones)
    _feed(plain, xs)
    _feed(weighted, xs)
    if precursor == "gptq":
        plain.materialize_global_hessian()
        weighted.materialize_global_hessian()
    else:
        assert torch.equal(plain.dXXT, weighted.dXXT)
    assert torch.equal(plain.H, weighted.H)


def test_out_of_order_batches_are_refused():
    xs, _, gs = _batches()
    task = make_token_weighted(GPTQ(_named(), QuantizeConfig(bits=4, group_size=16)), lambda b: gs[b])
    with pytest.raises(RuntimeError, match="serial forward"):
        task.add_batch(xs[1], None, batch_index=1)


def test_token_weights_must_match_the_activation_rows():
    xs, _, gs = _batches()
    task = make_token_weighted(GPTQ(_named(), QuantizeConfig(bits=4, group_size=16)), lambda b: gs[b][:, :-1])
    with pytest.raises(RuntimeError, match="do not match"):
        task.add_batch(xs[0], None, batch_index=0)


def test_uniform_residual_weights_the_hessian_but_not_the_asymmetric_term():
    xs, nat, gs = _batches()
    qcfg = QuantizeConfig(bits=4, group_size=16, gptaq=GPTAQConfig(device="cpu"))
    m2 = 1.7  # the scale the processor passes: mean g^2 over the layer's tokens
    task = make_token_weighted(GPTAQ(_named(nat), qcfg), lambda b: gs[b], lambda: m2)
    _feed(task, xs)
    X, Xn = _cols(xs), _cols(nat)
    G2 = torch.diag(torch.cat([x.reshape(-1) for x in gs]).double() ** 2)
    scale = 2.0 / len(xs)
    assert torch.allclose(task.H.double(), scale * X @ G2 @ X.T, rtol=1e-5, atol=1e-6)
    assert torch.allclose(task.dXXT.double(), scale * m2 * (Xn - X) @ X.T, rtol=1e-4, atol=1e-5)


def test_a_residual_scale_needs_a_gptaq_task():
    xs, _, gs = _batches()
    with pytest.raises(ValueError, match="GPTAQ"):
        make_token_weighted(GPTQ(_named(), QuantizeConfig(bits=4, group_size=16)), lambda b: gs[b], lambda: 1.0)
