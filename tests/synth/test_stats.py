"""Paired bootstrap differences and Kish's effective sample size on inputs with known answers."""
import numpy as np
import pytest
import torch

from vlmq_gptqmodel.importance import effective_tokens, summarize
from vlmq_gptqmodel.synth.stats import paired_difference


def test_a_constant_shift_is_recovered_exactly_with_a_zero_width_interval():
    rng = np.random.default_rng(0)
    base = rng.random((5, 200))
    lengths = rng.integers(1, 4, size=200).astype(float)
    # a method worse by exactly 0.3 per answer token on every question of every seed
    result = paired_difference(base + 0.3 * lengths, base, lengths, lower_is_better=True)
    assert result.mean == pytest.approx(0.3) and result.low == pytest.approx(0.3) and result.high == pytest.approx(0.3)
    assert result.wins == 0 and result.seeds == 5 and result.verdict == "higher"


def test_noise_without_a_shift_is_no_difference_and_a_clear_gain_is_not():
    rng = np.random.default_rng(1)
    base = rng.random((5, 1000))
    same = base + rng.normal(0, 0.05, size=base.shape)
    assert paired_difference(same, base, lower_is_better=True).verdict == "no difference"
    better = base - 0.02 + rng.normal(0, 0.05, size=base.shape)
    result = paired_difference(better, base, lower_is_better=True)
    assert result.verdict == "lower" and result.high < 0 and result.wins == 5
    assert paired_difference(better, base, lower_is_better=False).wins == 0  # "better" follows the direction


def test_the_interval_covers_the_true_difference_about_95_percent_of_the_time():
    # seeds differ by a random offset (calibration luck), questions by noise; the true difference is 0.01
    rng = np.random.default_rng(2)
    covered = 0
    trials = 60
    for t in range(trials):
        base = rng.random((6, 300))
        method = base + 0.01 + rng.normal(0, 0.01, size=(6, 1)) + rng.normal(0, 0.05, size=base.shape)
        r = paired_difference(method, base, lower_is_better=True, n_boot=400, seed=t)
        covered += r.low <= 0.01 <= r.high
    assert 0.8 <= covered / trials <= 1.0


def test_seed_variation_widens_the_interval():
    rng = np.random.default_rng(3)
    base = rng.random((5, 500))
    steady = base + 0.01
    shaky = base + 0.01 + np.array([[-0.05], [0.06], [-0.04], [0.05], [-0.02]])
    narrow = paired_difference(steady, base, lower_is_better=True)
    wide = paired_difference(shaky, base, lower_is_better=True)
    assert (wide.high - wide.low) > 10 * (narrow.high - narrow.low + 1e-12)


def test_paired_difference_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="seeds, questions"):
        paired_difference(np.zeros((2, 3)), np.zeros((2, 4)), lower_is_better=True)
    with pytest.raises(ValueError, match="lengths"):
        paired_difference(np.zeros((2, 3)), np.zeros((2, 3)), np.array([1.0, 0.0, 1.0]), lower_is_better=True)


def test_effective_tokens_known_answers():
    assert effective_tokens(torch.ones(50)) == pytest.approx(50)
    assert effective_tokens(torch.tensor([0.0, 0.0, 3.0, 0.0])) == pytest.approx(1)
    assert effective_tokens(torch.tensor([2.0, 2.0, 0.0, 0.0])) == pytest.approx(2)
    # weights are g^2: g = (1, 1, sqrt(2)) gives h = (1, 1, 2), (4)^2 / 6
    assert effective_tokens(torch.tensor([1.0, 1.0, 2 ** 0.5])) == pytest.approx(16 / 6)
    assert effective_tokens(torch.zeros(3)) == 0.0


def test_summarize_reports_effective_tokens_over_valid_tokens():
    g = [torch.tensor([[1.0, 1.0, 0.0, 9.0]])]
    vision = [torch.tensor([[True, True, False, False]])]
    valid = [torch.tensor([[True, True, False, False]])]  # the 9.0 is padding
    assert summarize(g, vision, valid)["effective_tokens"] == pytest.approx(2)


def test_lower_share_and_top_share_known_answers():
    from vlmq_gptqmodel.synth.stats import lower_share, top_share

    method = np.array([[1.0, 2.0, 3.0, 9.0]])
    base = np.array([[2.0, 2.0, 1.0, 10.0]])
    assert lower_share(method, base) == pytest.approx(2 / 3)  # the tie is left out
    assert lower_share(base, base) == 0.5
    assert top_share([5.0, 1.0, 1.0, 1.0, 1.0, 1.0], k=1) == pytest.approx(0.5)
    assert top_share(np.ones(20), k=10) == pytest.approx(0.5)
