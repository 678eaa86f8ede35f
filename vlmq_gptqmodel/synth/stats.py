"""Paired comparisons of two quantizers over calibration seeds and evaluation questions (pure numpy).

A method is run once per calibration seed and scored on the same questions as its baseline, so the
comparison is paired twice: by seed and by question. The interval resamples both (a two-level bootstrap:
seeds with replacement, then questions with replacement, the same questions for every seed), so it
reflects calibration luck as well as which questions happened to be asked.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    mean: float      # metric(method) - metric(baseline), averaged over seeds
    low: float       # 95 % bootstrap interval of `mean`
    high: float
    wins: int        # seeds on which the method is better (lower when lower_is_better, else higher)
    seeds: int
    per_seed: tuple[float, ...]

    @property
    def verdict(self) -> str:
        if self.low <= 0.0 <= self.high:
            return "no difference"
        return "lower" if self.high < 0.0 else "higher"


def seed_metric(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per seed: sum over questions of `values` over sum of `lengths`. values [S, Q] are per-question sums
    (a question's KL summed over its answer tokens, or 1/0 for a right/wrong answer with lengths of 1)."""
    return values.sum(axis=-1) / lengths.sum(axis=-1)


def paired_difference(method: np.ndarray, baseline: np.ndarray, lengths: np.ndarray | None = None, *,
                      lower_is_better: bool, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> PairedDifference:
    """metric(method) - metric(baseline), paired by seed (rows) and question (columns), with a percentile
    bootstrap interval over seeds and questions. method, baseline: [S, Q]; lengths: [Q] (default all 1)."""
    method, baseline = np.asarray(method, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if method.ndim != 2 or method.shape != baseline.shape:
        raise ValueError(f"method {method.shape} and baseline {baseline.shape} must both be [seeds, questions]")
    n_seeds, n_questions = method.shape
    if n_seeds < 1 or n_questions < 1:
        raise ValueError("need at least one seed and one question")
    lengths = np.ones(n_questions) if lengths is None else np.asarray(lengths, dtype=np.float64)
    if lengths.shape != (n_questions,) or (lengths <= 0).any():
        raise ValueError(f"lengths must be {n_questions} positive numbers, one per question")
    diff = method - baseline
    per_seed = seed_metric(diff, lengths)
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for i in range(n_boot):
        s = rng.integers(n_seeds, size=n_seeds)
        q = rng.integers(n_questions, size=n_questions)
        boot[i] = (diff[np.ix_(s, q)].sum(axis=1) / lengths[q].sum()).mean()
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    wins = int((per_seed < 0).sum() if lower_is_better else (per_seed > 0).sum())
    return PairedDifference(float(per_seed.mean()), float(low), float(high), wins, n_seeds,
                            tuple(float(x) for x in per_seed))


def lower_share(method: np.ndarray, baseline: np.ndarray) -> float:
    """Share of the (seed, question) pairs that differ on which the method's value is the lower one: a
    per-question sign test that a few extreme questions cannot swing."""
    diff = np.asarray(method, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    differ = diff != 0
    return float((diff[differ] < 0).mean()) if differ.any() else 0.5


def top_share(values, k: int = 10) -> float:
    """Share of the total carried by the k largest values (how concentrated a mean is)."""
    v = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    return float(v[:k].sum() / v.sum()) if v.sum() > 0 else 0.0
