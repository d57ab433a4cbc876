"""Classification metrics for crack / no-crack evaluation, in plain numpy.

Kept free of torch and scikit-learn on purpose: the same code scores the
distilled student on the laptop and the quantized model's logged predictions
elsewhere, and the product must not depend on scikit-learn.  Anything
array-like (lists, numpy arrays, CPU tensors) is accepted.

Conventions
-----------
* Binary problems use class index 1 ("crack") as the positive class: precision,
  recall and F1 describe how well cracks are found.  Multiclass problems report
  the *macro* average (unweighted mean over all ``num_classes`` classes,
  including classes absent from the data), like scikit-learn's
  ``average="macro"``.
* MCC is the headline metric because crack datasets are imbalanced and MCC only
  rewards a model that is right on both classes.  When it is undefined (a
  constant predictor, or a single class in ``y_true``) it is 0.0 — "no better
  than chance" — matching scikit-learn.
* Precision / recall / F1 with a zero denominator (e.g. no positive
  predictions) are 0.0, matching scikit-learn's ``zero_division=0``; so a model
  that never predicts "crack" scores 0, not "undefined".
* ROC-AUC is ``None`` when undefined (only one class present), and in
  multiclass problems, where it is not computed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "confusion_matrix",
    "mcc",
    "roc_auc",
    "ClassificationReport",
    "evaluate_predictions",
    "mean_sd",
]


def _as_labels(values: Any, name: str) -> np.ndarray:
    """Return a 1-D int64 array, refusing non-integral values instead of truncating them."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        integral = (
            np.issubdtype(arr.dtype, np.floating)
            and bool(np.all(np.isfinite(arr)))
            and bool(np.all(np.equal(np.mod(arr, 1), 0)))
        )
        if not integral:
            raise ValueError(f"{name} must contain integer class indices")
    return arr.astype(np.int64)


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Counts ``C[i, j]`` of samples with true class ``i`` predicted as ``j``.

    Rows are true classes, columns predicted classes (scikit-learn's layout), so
    in the binary case ``C = [[TN, FP], [FN, TP]]``.  Labels outside
    ``[0, num_classes)`` raise :class:`ValueError` rather than being dropped,
    because a silently shrunk matrix would inflate every metric.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    num_classes = int(num_classes)
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred lengths differ: {t.shape[0]} vs {p.shape[0]}")
    for name, arr in (("y_true", t), ("y_pred", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} has labels outside [0, {num_classes}): min {arr.min()}, max {arr.max()}")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _mcc_from_confusion(cm: np.ndarray) -> float:
    """Gorodkin's R_K (2004), which reduces to Matthews' coefficient for K = 2::

        R_K = (c·s − Σ_k p_k t_k) / sqrt((s² − Σ_k p_k²) · (s² − Σ_k t_k²))

    with ``c`` the correct predictions (trace), ``s`` the sample count, ``t_k``
    the true and ``p_k`` the predicted counts of class ``k``.  Floats avoid
    int64 overflow of ``s²`` products on large evaluations.
    """
    cm = cm.astype(np.float64)
    t_k = cm.sum(axis=1)
    p_k = cm.sum(axis=0)
    c = float(np.trace(cm))
    s = float(cm.sum())
    numerator = c * s - float(np.dot(p_k, t_k))
    denominator_sq = (s * s - float(np.dot(p_k, p_k))) * (s * s - float(np.dot(t_k, t_k)))
    if denominator_sq <= 0.0:
        return 0.0  # undefined: constant predictor or a single true class
    value = numerator / math.sqrt(denominator_sq)
    return float(min(1.0, max(-1.0, value)))  # clip rounding just outside [-1, 1]


def mcc(y_true: Any, y_pred: Any, num_classes: int = 2) -> float:
    """Matthews correlation coefficient, multiclass via Gorodkin's R_K.

    Ranges from −1 (always wrong, e.g. inverted labels) through 0 (chance) to 1
    (perfect).  Returns 0.0 when undefined — when every prediction (or every
    true label) is the same class, the correlation has a zero variance term.
    """
    return _mcc_from_confusion(confusion_matrix(y_true, y_pred, num_classes))


def roc_auc(y_true: Any, scores: Any) -> float | None:
    """Binary ROC-AUC as the Mann–Whitney U statistic, ties counted as ½.

    ``AUC = (R₊ − n₊(n₊ + 1)/2) / (n₊ · n₋)`` where ``R₊`` is the sum of the
    positives' ranks among all scores, tied scores sharing their average rank.
    This equals the trapezoidal area under the ROC curve (the probability that
    a random crack scores above a random non-crack), without building the curve.

    ``y_true`` holds 0/1 (1 = positive).  Returns ``None`` when only one class
    is present, where the AUC is undefined.
    """
    y = _as_labels(y_true, "y_true")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"scores must be 1-D with the length of y_true ({y.shape[0]}), got shape {s.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("roc_auc is binary: y_true must contain only 0 and 1")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of the last member of each tie group
    average_rank = ends - (counts - 1) / 2.0
    rank_sum_pos = float(average_rank[inverse.reshape(-1)][y == 1].sum())
    u = rank_sum_pos - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 with 0.0 where a denominator is zero."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)

    def safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        out = np.zeros_like(num)
        np.divide(num, den, out=out, where=den > 0)
        return out

    precision = safe_div(tp, predicted)
    recall = safe_div(tp, actual)
    # F1 = 2TP / (2TP + FP + FN): same as the harmonic mean, defined whenever
    # the class occurs at all, and no division by P + R.
    f1 = safe_div(2.0 * tp, predicted + actual)
    return precision, recall, f1


@dataclass
class ClassificationReport:
    """Metrics of one evaluation, ready for logging and the model card.

    ``precision``, ``recall``, ``f1`` are for the positive class (index 1,
    "crack") in binary problems and macro averages in multiclass ones.
    ``roc_auc`` is ``None`` when undefined or multiclass.  ``confusion`` has
    true classes as rows.  ``per_surface`` maps each surface name to
    ``{"mcc", "n", "accuracy"}`` so a model that only works on one material is
    caught.  ``threshold`` is the crack threshold used, ``None`` for argmax.
    """

    mcc: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    roc_auc: float | None
    confusion: list[list[int]]
    n: int
    per_surface: dict[str, dict[str, Any]] = field(default_factory=dict)
    label_names: list[str] = field(default_factory=lambda: ["no_crack", "crack"])
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python copy (floats, ints, lists, ``None``) that ``json.dumps`` accepts."""

        def opt_float(x: float | None) -> float | None:
            return None if x is None else float(x)

        return {
            "mcc": float(self.mcc),
            "accuracy": float(self.accuracy),
            "precision": float(self.precision),
            "recall": float(self.recall),
            "f1": float(self.f1),
            "roc_auc": opt_float(self.roc_auc),
            "confusion": [[int(v) for v in row] for row in self.confusion],
            "n": int(self.n),
            "per_surface": {
                str(surface): {
                    "mcc": float(stats["mcc"]),
                    "n": int(stats["n"]),
                    "accuracy": float(stats["accuracy"]),
                }
                for surface, stats in self.per_surface.items()
            },
            "label_names": [str(name) for name in self.label_names],
            "threshold": opt_float(self.threshold),
        }


def evaluate_predictions(
    y_true: Any,
    probs: Any,
    *,
    surfaces: Sequence[str | None] | None = None,
    label_names: Sequence[str] = ("no_crack", "crack"),
    threshold: float | None = None,
) -> ClassificationReport:
    """Score class probabilities ``probs`` (N×C) against integer labels ``y_true``.

    The prediction is the argmax (ties go to the lower index, i.e. "no_crack"),
    or — binary only, when ``threshold`` is given — "crack" iff
    ``probs[:, 1] >= threshold``; the threshold lets the product trade missed
    cracks against false alarms.  ROC-AUC uses ``probs[:, 1]`` in binary problems
    and is ``None`` otherwise.

    ``surfaces`` (one name per sample, e.g. "wall", "deck") adds a per-surface
    breakdown; samples whose surface is ``None`` count in the overall metrics
    but in no surface group.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be N×C, got shape {p.shape}")
    n, num_classes = p.shape
    if n == 0:
        raise ValueError("nothing to evaluate: probs has no rows")
    if num_classes < 2:
        raise ValueError(f"probs needs at least 2 class columns, got {num_classes}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs must be finite")
    names = [str(name) for name in label_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} label_names for {num_classes} probability columns")
    y = _as_labels(y_true, "y_true")
    if y.shape[0] != n:
        raise ValueError(f"y_true has {y.shape[0]} labels for {n} rows of probs")

    if threshold is None:
        y_pred = p.argmax(axis=1)
    else:
        if num_classes != 2:
            raise ValueError("threshold applies to binary problems only (probs must be N×2)")
        threshold = float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        y_pred = (p[:, 1] >= threshold).astype(np.int64)

    cm = confusion_matrix(y, y_pred, num_classes)
    precision, recall, f1 = _precision_recall_f1(cm)
    if num_classes == 2:
        prec, rec, f1_value = precision[1], recall[1], f1[1]
        auc = roc_auc(y, p[:, 1])
    else:
        prec, rec, f1_value = precision.mean(), recall.mean(), f1.mean()
        auc = None

    per_surface: dict[str, dict[str, Any]] = {}
    if surfaces is not None:
        surface_list = list(surfaces)
        if len(surface_list) != n:
            raise ValueError(f"surfaces has {len(surface_list)} entries for {n} samples")
        groups: dict[str, list[int]] = {}
        for i, surface in enumerate(surface_list):
            if surface is not None:
                groups.setdefault(str(surface), []).append(i)
        for surface in sorted(groups):
            idx = np.asarray(groups[surface], dtype=np.int64)
            sub = confusion_matrix(y[idx], y_pred[idx], num_classes)
            per_surface[surface] = {
                "mcc": _mcc_from_confusion(sub),
                "n": int(idx.size),
                "accuracy": float(np.trace(sub) / idx.size),
            }

    return ClassificationReport(
        mcc=_mcc_from_confusion(cm),
        accuracy=float(np.trace(cm) / n),
        precision=float(prec),
        recall=float(rec),
        f1=float(f1_value),
        roc_auc=auc,
        confusion=cm.tolist(),
        n=int(n),
        per_surface=per_surface,
        label_names=names,
        threshold=threshold,
    )


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1) of repeated-run scores.

    Sample SD because the runs (seeds) are a sample of possible runs; a single
    run has no spread to estimate, reported as 0.0 rather than NaN so tables
    stay printable.  An empty input raises :class:`ValueError`.
    """
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("mean_sd needs a non-empty 1-D sequence of numbers")
    mean = float(arr.mean())
    sd = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return mean, sd
