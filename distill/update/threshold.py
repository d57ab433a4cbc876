"""Stage ``calibrate``: move the decision threshold to the site, only when that clearly helps.

The rule (also in docs/design/update.md): on the site-validation part, MCC is computed at
thresholds 0.10, 0.15, …, 0.90 on the crack probability; the best one (ties: the one nearest
0.5) is adopted only if

1. the site-validation part holds at least ``MIN_PER_CLASS`` patches of each class,
2. it beats the 0.5 threshold by at least ``MIN_GAIN`` MCC there, and
3. it costs at most ``MAX_GOLDEN_COST`` MCC on the golden set (half the gate's allowance:
   a threshold tuned on a few frames must not spend the whole margin).

An adopted threshold ``t`` is baked into the model, so every consumer (engine, agent, app
slider at 0.5) gets it without a new manifest field: the crack logit's bias is lowered by
``logit(t) = log(t / (1 − t))``, after which ``p'(crack) ≥ 0.5`` exactly where ``p(crack) ≥ t``.
The Grad-CAM weights do not depend on the bias, so the heat-map is unchanged.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

GRID = tuple(round(0.10 + 0.05 * i, 2) for i in range(17))
MIN_GAIN = 0.02
MIN_PER_CLASS = 5
MAX_GOLDEN_COST = 0.005


@dataclass
class ThresholdDecision:
    adopted: bool
    threshold: float              # the decision threshold on the original probabilities (0.5 if not adopted)
    val_mcc_at_half: float | None
    val_mcc_at_threshold: float | None
    golden_mcc_at_half: float | None = None
    golden_mcc_at_threshold: float | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def mcc_at(labels: np.ndarray, crack_probs: np.ndarray, t: float) -> float:
    from distill.metrics import mcc

    return mcc(labels, (crack_probs >= t).astype(np.int64), 2)


def best_threshold(labels: np.ndarray, crack_probs: np.ndarray) -> tuple[float, float]:
    scores = [(mcc_at(labels, crack_probs, t), -abs(t - 0.5), t) for t in GRID]
    best = max(scores)
    return best[2], best[0]


def decide(val_labels, val_probs, golden_labels, golden_probs) -> ThresholdDecision:
    """The rule of the module docstring; probabilities are the crack column."""
    val_labels, val_probs = np.asarray(val_labels), np.asarray(val_probs)
    half = mcc_at(val_labels, val_probs, 0.5)
    counts = [int((val_labels == c).sum()) for c in (0, 1)]
    t, best = best_threshold(val_labels, val_probs)
    d = ThresholdDecision(False, 0.5, half, best)
    if min(counts) < MIN_PER_CLASS:
        d.reason = f"site validation has {counts[1]} crack / {counts[0]} clean patches (< {MIN_PER_CLASS} of a class)"
        return d
    if best - half < MIN_GAIN:
        d.reason = f"best threshold {t} gains {best - half:+.3f} MCC on site validation (< {MIN_GAIN})"
        return d
    g_half = mcc_at(np.asarray(golden_labels), np.asarray(golden_probs), 0.5)
    g_t = mcc_at(np.asarray(golden_labels), np.asarray(golden_probs), t)
    d.golden_mcc_at_half, d.golden_mcc_at_threshold = g_half, g_t
    if g_half - g_t > MAX_GOLDEN_COST:
        d.reason = f"threshold {t} costs {g_half - g_t:.3f} MCC on the golden set (> {MAX_GOLDEN_COST})"
        return d
    d.adopted, d.threshold = True, t
    d.reason = f"threshold {t}: site validation MCC {half:.3f} -> {best:.3f}, golden {g_half:.3f} -> {g_t:.3f}"
    return d


def bake_threshold(model, threshold: float, crack_index: int = 1) -> None:
    """Lower the crack logit's bias by logit(threshold) (two-class models; see the module docstring)."""
    if threshold == 0.5:
        return
    linears = [m for m in model.spec.head(model.net).modules() if isinstance(m, nn.Linear)]
    if len(model.meta.label_names) != 2 or not linears or linears[-1].bias is None:
        raise ValueError("a threshold can be baked only into a two-class model whose head ends with a biased Linear")
    with torch.no_grad():
        linears[-1].bias[crack_index] -= math.log(threshold / (1.0 - threshold))
