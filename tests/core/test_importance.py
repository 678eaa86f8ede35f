"""The importance-factor math as pure functions, against hand-computed values."""
import math

import pytest
import torch

from vlmq_gptqmodel.importance import (
    DegenerateImportance,
    attention_received,
    modality_factors,
    normalize_factors,
    random_lowimportance_factors,
    summarize,
    token_factors,
    weight_tokens,
)


def test_token_factors_l1_and_l2_from_known_gradient():
    grad = torch.tensor([[[3.0, -4.0], [0.0, 0.0], [-1.0, 1.0]]])  # [B=1, N=3, C=2]
    assert torch.allclose(token_factors(grad, "l1"), torch.tensor([[3.5, 0.0, 1.0]]))
    # l2 = ||P_n|| / sqrt(C): 5/sqrt(2), 0, sqrt(2)/sqrt(2)
    assert torch.allclose(token_factors(grad, "l2"), torch.tensor([[5 / math.sqrt(2), 0.0, 1.0]]))
    with pytest.raises(ValueError, match="norm"):
        token_factors(grad, "linf")


def test_normalize_to_mean_one_over_valid_tokens_of_all_batches_and_zero_padding():
    f = [torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([[3.0]])]
    valid = [torch.tensor([[True, True, False]]), None]  # the 9.0 is padding
    g = normalize_factors(f, valid)
    # mean over the 3 valid tokens (1, 2, 3) is 2
    assert torch.allclose(g[0], torch.tensor([[0.5, 1.0, 0.0]]))
    assert torch.allclose(g[1], torch.tensor([[1.5]]))


def test_normalize_is_invariant_to_the_scale_of_the_gradient():
    f = [torch.rand(2, 7) + 0.1, torch.rand(1, 5) + 0.1]
    a = normalize_factors(f)
    b = normalize_factors([x * 1e4 for x in f])
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=1e-6)


def test_normalize_floors_small_factors_but_keeps_padding_at_zero():
    f = [torch.tensor([[0.0, 1.0, 2.0, 5.0]])]
    valid = [torch.tensor([[True, True, True, False]])]
    g = normalize_factors(f, valid, min_weight=0.25)
    assert torch.allclose(g[0], torch.tensor([[0.25, 1.0, 2.0, 0.0]]))


@pytest.mark.parametrize("bad", [torch.zeros(1, 4), torch.tensor([[1.0, float("nan")]]), torch.tensor([[float("inf"), 1.0]])])
def test_degenerate_factors_are_refused_not_silently_used(bad):
    with pytest.raises(DegenerateImportance):
        normalize_factors([bad])


def test_all_padding_is_degenerate():
    with pytest.raises(DegenerateImportance):
        normalize_factors([torch.ones(1, 3)], [torch.zeros(1, 3, dtype=torch.bool)])


def test_modality_factors_share_one_weight_per_modality_across_batches():
    f = [torch.tensor([[1.0, 2.0, 10.0]]), torch.tensor([[4.0, 20.0]])]
    vision = [torch.tensor([[True, True, False]]), torch.tensor([[True, False]])]
    g = modality_factors(f, vision)
    vis, txt = (1 + 2 + 4) / 3, (10 + 20) / 2
    assert torch.allclose(g[0], torch.tensor([[vis, vis, txt]]))
    assert torch.allclose(g[1], torch.tensor([[vis, txt]]))


def test_random_lowimportance_downweights_only_vision_tokens_at_the_requested_ratio():
    vision = torch.zeros(1, 4000, dtype=torch.bool)
    vision[:, :3000] = True
    g = random_lowimportance_factors(vision, ratio=0.25, factor=0.05, generator=torch.Generator().manual_seed(0))
    assert torch.all(g[~vision] == 1.0)
    low = (g[vision] == 0.05).float().mean().item()
    assert abs(low - 0.25) < 0.03
    assert torch.allclose(g.unique(), torch.tensor([0.05, 1.0]))


def test_attention_received_averages_over_heads_and_queries():
    probs = torch.zeros(1, 2, 3, 3)
    probs[0, 0] = torch.tensor([[1, 0, 0], [0.5, 0.5, 0], [0.2, 0.2, 0.6]])
    probs[0, 1] = torch.tensor([[1, 0, 0], [1.0, 0.0, 0], [0.0, 0.0, 1.0]])
    got = attention_received(probs)
    head0 = torch.tensor([1.7, 0.7, 0.6]) / 3
    head1 = torch.tensor([2.0, 0.0, 1.0]) / 3
    assert torch.allclose(got, ((head0 + head1) / 2)[None])


def test_weight_tokens_gives_the_weighted_gram_matrix():
    x = torch.randn(2, 5, 3, dtype=torch.float64).float()
    g = torch.rand(2, 5)
    xw = weight_tokens(x, g).reshape(-1, 3)
    X = x.reshape(-1, 3).T.double()  # [C, N]
    G = torch.diag(g.reshape(-1).double())
    assert torch.allclose(xw.T.double() @ xw.double(), X @ G @ G @ X.T, atol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        weight_tokens(x, g[:, :4])


def test_summary_reports_modality_means():
    g = [torch.tensor([[0.5, 0.5, 2.0]])]
    vision = [torch.tensor([[True, True, False]])]
    s = summarize(g, vision)
    assert s["tokens"] == 3 and s["vision_tokens"] == 2 and s["vision_mean"] == 0.5 and s["text_mean"] == 2.0 and s["min"] == 0.5
