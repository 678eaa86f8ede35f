"""User-facing VLMQ settings: `model.quantize(calib, method="vlmq", vlmq=VLMQConfig(...))`."""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Tuple

from .errors import BadInput

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
# not in the paper (its MLPs keep the plain Hessian): the MLP projections may be targets too, their g taken
# from the MLP block (post-attention norm + MLP + residual) the way the attention's is from the attention block
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
PROJECTIONS = ATTENTION_PROJECTIONS + MLP_PROJECTIONS

# importance sources: the paper's method and the baselines of its ablations (Tables 5, 6)
IMPORTANCE_SOURCES = (
    "gradient",   # VLMQ: g_n = mean_c |dL/dz_{n,c}| per projection (Eq. 4)
    "constant",   # G = I: reproduces the precursor (GPTQ / GPTAQ) exactly
    "attention",  # FastV-style: attention each token receives, averaged over heads and queries
    "random",     # VLMQ_naive: a random `random_ratio` of vision tokens down-weighted by `random_factor`
    "modality",   # MBQ-style: one weight for all vision tokens, one for all text tokens, from the gradients
)
GRANULARITIES = ("block", "layer")  # block: L = |Attn(X) - Attn(X_hat)|^2 (VLMQ); layer: per-projection MSE
NORMS = ("l1", "l2")
PRECURSORS = ("gptaq", "gptq")
LAYER0_POLICIES = ("uniform", "rtn_probe")
# how the GPTAQ precursor's asymmetric term sees G: "weighted", (X_fp - X) G^2 X^T (the paper's Eq. 19), or
# "uniform", (X_fp - X) X^T scaled by mean(g^2) so it stays on H~'s scale (every token alike)
RESIDUALS = ("weighted", "uniform")
# which path's projection outputs z the block loss is differentiated at: "quantized", dL/dz_hat (the paper's
# Eq. 4: the outputs the quantized layer will produce), or "fp", dL/dz of the full-precision path (a diagnostic
# of the quality benchmark's GPTAQ study: GPTAQ's asymmetric term pulls toward the FP stream)
GRADIENT_PATHS = ("quantized", "fp")


@dataclass
class VLMQConfig:
    """How VLMQ weights calibration tokens in the Hessians of its target projections (q/k/v/o by default).

    importance:  where g_n comes from (see IMPORTANCE_SOURCES).
    granularity: loss whose gradient gives g: "block" (paper) or "layer" (ablation, Table 7).
    norm:        reduction of the gradient over output channels: "l1" (mean |.|, paper default)
                 or "l2" (root mean square; the paper's LLaVA-OneVision variant).
    targets:     which projections get a token-weighted Hessian; the others keep the precursor's plain
                 Hessian. The paper weights q/k/v/o (the default); adding gate/up/down (MLP_PROJECTIONS) is
                 this project's extension: their g comes from the MLP block's loss
                 |MLP(Y) - MLP(Y_hat)|^2, with Y, Y_hat the attention block's outputs on X, X_hat.
    precursor:   "gptaq" (asymmetric term weighted too: dXXT = (X_fp - X) G^2 X^T) or "gptq"
                 (the paper's choice at INT2).
    layer0:      layer 0 sees X_hat == X so dL/dz == 0. "uniform": quantize it with G = I;
                 "rtn_probe": take the gradient of |Attn(X) - Attn_rtn(X)|^2 where Attn_rtn has its
                 projections round-to-nearest quantized at the target bits.
    residual:    with precursor="gptaq", how its asymmetric term is weighted (see RESIDUALS).
    gradient_at: which path's projection outputs the block loss is differentiated at (see GRADIENT_PATHS).
    power:       g is raised to this power before it is normalized (not in the paper, which uses 1):
                 gradient g is heavy-tailed, so H~ = X G^2 X^T rests on about 1 % of the calibration tokens
                 (Kish's effective sample size); 0.5 weights H by g instead of g^2; 0 is the precursor.
    min_weight:  floor on g after it is normalized to mean 1 over the calibration tokens of a
                 projection, so that a feature column can never vanish from H only because of G
                 (GPTQModel zeroes weight columns whose Hessian diagonal is 0).
    random_ratio, random_factor, seed: the VLMQ_naive ablation (paper Table 5: LI ratio, DW factor).
    """

    importance: str = "gradient"
    granularity: str = "block"
    norm: str = "l1"
    targets: Tuple[str, ...] = ATTENTION_PROJECTIONS
    precursor: str = "gptaq"
    layer0: str = "uniform"
    residual: str = "weighted"
    gradient_at: str = "quantized"
    power: float = 1.0
    min_weight: float = 1e-3
    random_ratio: float = 0.5
    random_factor: float = 0.01
    seed: int = 0

    def __post_init__(self):
        _one_of("importance", self.importance, IMPORTANCE_SOURCES)
        _one_of("granularity", self.granularity, GRANULARITIES)
        _one_of("norm", self.norm, NORMS)
        _one_of("precursor", self.precursor, PRECURSORS)
        _one_of("layer0", self.layer0, LAYER0_POLICIES)
        _one_of("residual", self.residual, RESIDUALS)
        if self.residual != "weighted" and self.precursor != "gptaq":
            raise BadInput(f"VLMQConfig.residual={self.residual!r} changes GPTAQ's asymmetric term; the GPTQ "
                           f"precursor has none: use precursor='gptaq' or leave residual='weighted'.")
        _one_of("gradient_at", self.gradient_at, GRADIENT_PATHS)
        if self.gradient_at != "quantized" and (self.importance not in ("gradient", "modality")
                                                or self.granularity != "block"):
            raise BadInput(f"VLMQConfig.gradient_at={self.gradient_at!r} picks where the block loss is "
                           f"differentiated; importance={self.importance!r}, granularity={self.granularity!r} takes "
                           f"no block gradient: use importance='gradient', granularity='block' or leave it 'quantized'.")
        self.targets = _targets(self.targets)
        _number_in("power", self.power, 0.0, 4.0, "in [0, 4] (1: the paper's g; 0: every token alike)")
        _number_in("min_weight", self.min_weight, 0.0, 1.0, "in [0, 1) (relative to mean 1)", high_open=True)
        _number_in("random_ratio", self.random_ratio, 0.0, 1.0, "in [0, 1]")
        _number_in("random_factor", self.random_factor, 0.0, math.inf, "a finite number > 0", low_open=True)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise BadInput(f"VLMQConfig.seed={self.seed!r}: must be an int.")

    def to_meta(self) -> dict:
        meta = asdict(self)
        meta["targets"] = list(self.targets)
        return meta


def _one_of(name: str, value, allowed) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise BadInput(f"VLMQConfig.{name}={value!r}: must be one of {allowed}.")


def _targets(targets) -> Tuple[str, ...]:
    targets = (targets,) if isinstance(targets, str) else tuple(targets) if isinstance(targets, (list, tuple)) else None
    if not targets or any(t not in PROJECTIONS for t in targets) or len(set(targets)) != len(targets):
        raise BadInput(
            f"VLMQConfig.targets={targets!r}: each target must be one of {PROJECTIONS}, at most once, "
            f"and at least one is needed (to quantize without token weighting use method='gptq')."
        )
    return targets


def _number_in(name: str, value, low: float, high: float, wanted: str, *, low_open=False, high_open=False) -> None:
    """A finite real number (not a bool or a string) between low and high."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        raise BadInput(f"VLMQConfig.{name}={value!r}: must be {wanted}.")
