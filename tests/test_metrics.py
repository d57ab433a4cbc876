"""Tests for distill.metrics, with scikit-learn as the oracle (tests only)."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from distill.metrics import (
    ClassificationReport,
    confusion_matrix,
    evaluate_predictions,
    mcc,
    mean_sd,
    roc_auc,
)

SEEDS = range(8)


def random_binary(seed: int, n: int = 200, positive_rate: float = 0.3):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < positive_rate).astype(np.int64)
    # Scores correlated with the label, so metrics are away from chance.
    p1 = np.clip(0.35 * y + rng.random(n) * 0.75, 0.0, 1.0)
    return y, np.column_stack([1.0 - p1, p1])


def random_multiclass(seed: int, n: int = 300, num_classes: int = 4):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), y] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


# -------------------------------------------------------------------- confusion matrix


def test_confusion_matrix_layout_rows_true_cols_pred():
    y_true = [0, 0, 0, 1, 1]
    y_pred = [0, 1, 1, 0, 1]
    # [[TN, FP], [FN, TP]] = [[1, 2], [1, 1]]
    cm = confusion_matrix(y_true, y_pred, 2)
    assert cm.tolist() == [[1, 2], [1, 1]]
    assert cm.dtype == np.int64


@pytest.mark.parametrize("seed", SEEDS)
def test_confusion_matrix_matches_sklearn(seed):
    y, probs = random_multiclass(seed)
    pred = probs.argmax(axis=1)
    expected = skm.confusion_matrix(y, pred, labels=range(4))
    np.testing.assert_array_equal(confusion_matrix(y, pred, 4), expected)


def test_confusion_matrix_rejects_bad_labels():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 2], [0, 1], 2)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 1], [0, -1], 2)
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix([0, 1, 1], [0, 1], 2)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix([0.5, 1.0], [0, 1], 2)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix([0], [0], 0)


# ------------------------------------------------------------------------------- MCC


def test_mcc_hand_computed_2x2():
    tn, fp, fn, tp = 50, 10, 5, 35
    y_true = [0] * (tn + fp) + [1] * (fn + tp)
    y_pred = [0] * tn + [1] * fp + [0] * fn + [1] * tp
    assert confusion_matrix(y_true, y_pred, 2).tolist() == [[tn, fp], [fn, tp]]
    # MCC = (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 1700 / sqrt(45·40·60·55)
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert expected == pytest.approx(1700 / math.sqrt(5_940_000))
    assert mcc(y_true, y_pred) == pytest.approx(expected, abs=1e-12)
    assert mcc(y_true, y_pred) == pytest.approx(0.6975, abs=1e-4)


@pytest.mark.parametrize("seed", SEEDS)
def test_mcc_binary_matches_sklearn(seed):
    y, probs = random_binary(seed)
    pred = probs.argmax(axis=1)
    assert mcc(y, pred) == pytest.approx(skm.matthews_corrcoef(y, pred), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_mcc_multiclass_matches_sklearn(seed):
    y, probs = random_multiclass(seed, num_classes=3 + seed % 3)
    pred = probs.argmax(axis=1)
    num_classes = probs.shape[1]
    assert mcc(y, pred, num_classes) == pytest.approx(skm.matthews_corrcoef(y, pred), abs=1e-12)


def test_mcc_edge_cases():
    y = np.array([0, 1, 1, 0, 1, 0, 0])
    assert mcc(y, y) == 1.0  # perfect
    assert mcc(y, 1 - y) == -1.0  # inverted
    assert mcc(y, np.zeros_like(y)) == 0.0  # constant predictor: undefined -> 0
    assert mcc(y, np.ones_like(y)) == 0.0
    assert mcc(np.zeros(5, dtype=int), [0, 1, 0, 1, 0]) == 0.0  # one true class
    assert skm.matthews_corrcoef(y, np.zeros_like(y)) == 0.0  # same convention as sklearn
    assert mcc([], [], 2) == 0.0
    y3 = np.array([0, 1, 2, 2, 1, 0])
    assert mcc(y3, y3, 3) == pytest.approx(1.0)


# --------------------------------------------------------------------------- ROC-AUC


@pytest.mark.parametrize("seed", SEEDS)
def test_roc_auc_matches_sklearn(seed):
    y, probs = random_binary(seed)
    assert roc_auc(y, probs[:, 1]) == pytest.approx(skm.roc_auc_score(y, probs[:, 1]), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_roc_auc_with_ties_matches_sklearn(seed):
    y, probs = random_binary(seed)
    scores = np.round(probs[:, 1], 1)  # ~11 distinct values: many ties across classes
    assert len(np.unique(scores)) < 15
    assert roc_auc(y, scores) == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)


def test_roc_auc_edge_cases():
    y = [0, 0, 1, 1]
    assert roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied
    # One positive tied with one negative: pairs (pos > neg) = 1 + 0.5 tie out of 2.
    assert roc_auc([0, 0, 1], [0.2, 0.7, 0.7]) == pytest.approx(0.75)
    assert roc_auc([0, 0, 0], [0.1, 0.2, 0.3]) is None
    assert roc_auc([1, 1], [0.1, 0.2]) is None
    assert roc_auc([True, False], [0.9, 0.1]) == 1.0


def test_roc_auc_rejects_bad_input():
    with pytest.raises(ValueError, match="binary"):
        roc_auc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="length"):
        roc_auc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([0, 1], [0.1, float("nan")])


# ----------------------------------------------------------------- evaluate_predictions


def assert_binary_report_matches_sklearn(report: ClassificationReport, y, pred, scores) -> None:
    assert report.mcc == pytest.approx(skm.matthews_corrcoef(y, pred), abs=1e-12)
    assert report.accuracy == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    kw = dict(pos_label=1, zero_division=0)
    assert report.precision == pytest.approx(skm.precision_score(y, pred, **kw), abs=1e-12)
    assert report.recall == pytest.approx(skm.recall_score(y, pred, **kw), abs=1e-12)
    assert report.f1 == pytest.approx(skm.f1_score(y, pred, **kw), abs=1e-12)
    if len(set(np.asarray(y).tolist())) == 2:
        assert report.roc_auc == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)
    else:
        assert report.roc_auc is None
    assert report.confusion == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert report.n == len(y)


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_report_matches_sklearn(seed):
    y, probs = random_binary(seed)
    report = evaluate_predictions(y, probs)
    assert_binary_report_matches_sklearn(report, y, probs.argmax(axis=1), probs[:, 1])
    assert report.label_names == ["no_crack", "crack"]
    assert report.per_surface == {}


@pytest.mark.parametrize(
    "y, p1",
    [
        ([0, 0, 0, 0], [0.1, 0.7, 0.2, 0.9]),  # all one class (negatives)
        ([1, 1, 1], [0.1, 0.7, 0.9]),  # all one class (positives)
        ([0, 1, 0, 1], [0.2, 0.8, 0.1, 0.9]),  # perfect
        ([0, 1, 0, 1], [0.8, 0.2, 0.9, 0.1]),  # inverted
        ([0, 1, 0, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.45]),  # never predicts crack
        ([0, 1, 1, 0, 1], [0.6, 0.6, 0.9, 0.6, 0.3]),  # ties in scores
    ],
    ids=["all-negative", "all-positive", "perfect", "inverted", "never-crack", "ties"],
)
def test_binary_report_edge_cases_match_sklearn(y, p1):
    p1 = np.asarray(p1)
    probs = np.column_stack([1 - p1, p1])
    report = evaluate_predictions(y, probs)
    pred = probs.argmax(axis=1)
    assert_binary_report_matches_sklearn(report, y, pred, p1)


def test_binary_report_perfect_and_inverted_values():
    y = [0, 1, 0, 1]
    perfect = evaluate_predictions(y, [[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.9]])
    assert (perfect.mcc, perfect.accuracy, perfect.f1, perfect.roc_auc) == (1.0, 1.0, 1.0, 1.0)
    inverted = evaluate_predictions(y, [[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.9, 0.1]])
    assert inverted.mcc == -1.0 and inverted.accuracy == 0.0 and inverted.roc_auc == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_multiclass_report_is_macro_and_matches_sklearn(seed):
    num_classes = 3 + seed % 2
    y, probs = random_multiclass(seed, num_classes=num_classes)
    names = [f"c{i}" for i in range(num_classes)]
    report = evaluate_predictions(y, probs, label_names=names)
    pred = probs.argmax(axis=1)
    kw = dict(labels=list(range(num_classes)), average="macro", zero_division=0)
    assert report.mcc == pytest.approx(skm.matthews_corrcoef(y, pred), abs=1e-12)
    assert report.accuracy == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert report.precision == pytest.approx(skm.precision_score(y, pred, **kw), abs=1e-12)
    assert report.recall == pytest.approx(skm.recall_score(y, pred, **kw), abs=1e-12)
    assert report.f1 == pytest.approx(skm.f1_score(y, pred, **kw), abs=1e-12)
    assert report.roc_auc is None
    assert report.label_names == names


def test_multiclass_macro_counts_absent_class_like_sklearn():
    y = [0, 0, 1, 1]
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    report = evaluate_predictions(y, probs, label_names=("a", "b", "c"))
    pred = probs.argmax(axis=1)
    kw = dict(labels=[0, 1, 2], average="macro", zero_division=0)
    assert report.precision == pytest.approx(skm.precision_score(y, pred, **kw))
    assert report.recall == pytest.approx(skm.recall_score(y, pred, **kw))
    assert report.f1 == pytest.approx(skm.f1_score(y, pred, **kw))


def test_threshold_behaviour():
    y = [0, 0, 1, 1, 1]
    p1 = np.array([0.1, 0.3, 0.3, 0.5, 0.05])
    probs = np.column_stack([1 - p1, p1])
    argmax = evaluate_predictions(y, probs)
    # argmax: 0.5/0.5 is a tie -> lower index ("no_crack"), so nothing is called crack
    assert argmax.confusion == [[2, 0], [3, 0]]
    low = evaluate_predictions(y, probs, threshold=0.3)
    # crack iff p1 >= 0.3: the two 0.3 scores (one each class) and 0.5 count as crack
    assert low.confusion == [[1, 1], [1, 2]]
    assert low.threshold == 0.3 and argmax.threshold is None
    pred = (p1 >= 0.3).astype(int)
    assert_binary_report_matches_sklearn(low, y, pred, p1)
    assert evaluate_predictions(y, probs, threshold=0.0).confusion == [[0, 2], [0, 3]]
    assert evaluate_predictions(y, probs, threshold=1.0).confusion == [[2, 0], [3, 0]]
    # ROC-AUC does not depend on the threshold.
    assert low.roc_auc == argmax.roc_auc


def test_threshold_rejected_when_invalid():
    with pytest.raises(ValueError, match="binary"):
        evaluate_predictions([0, 1, 2], np.eye(3), label_names=("a", "b", "c"), threshold=0.5)
    with pytest.raises(ValueError, match="threshold"):
        evaluate_predictions([0, 1], [[0.5, 0.5], [0.2, 0.8]], threshold=1.5)


def test_per_surface_breakdown():
    y = np.array([0, 1, 1, 0, 1, 0, 1, 0])
    p1 = np.array([0.2, 0.9, 0.4, 0.1, 0.8, 0.7, 0.6, 0.3])
    surfaces = ["wall", "wall", "wall", "deck", "deck", "deck", None, "wall"]
    probs = np.column_stack([1 - p1, p1])
    report = evaluate_predictions(y, probs, surfaces=surfaces)
    pred = probs.argmax(axis=1)
    assert list(report.per_surface) == ["deck", "wall"]  # sorted, None excluded
    for surface in ("wall", "deck"):
        idx = [i for i, s in enumerate(surfaces) if s == surface]
        stats = report.per_surface[surface]
        assert set(stats) == {"mcc", "n", "accuracy"}
        assert stats["n"] == len(idx)
        assert stats["accuracy"] == pytest.approx(skm.accuracy_score(y[idx], pred[idx]))
        assert stats["mcc"] == pytest.approx(skm.matthews_corrcoef(y[idx], pred[idx]), abs=1e-12)
    # By hand: wall = (0✓, 1✓, 1✗, 0✓) -> accuracy 3/4; deck = (0✓, 1✓, 0✗) -> 2/3.
    assert report.per_surface["wall"]["accuracy"] == 0.75
    assert report.per_surface["deck"]["accuracy"] == pytest.approx(2 / 3)
    assert report.n == 8  # the None-surface sample still counts overall
    with pytest.raises(ValueError, match="surfaces"):
        evaluate_predictions(y, probs, surfaces=surfaces[:-1])


def test_to_dict_is_json_serialisable():
    y, probs = random_binary(0, n=40)
    report = evaluate_predictions(y, probs, surfaces=["a", "b"] * 20, threshold=0.4)
    d = report.to_dict()
    text = json.dumps(d)
    assert json.loads(text) == d
    assert set(d) >= {"mcc", "accuracy", "precision", "recall", "f1", "roc_auc", "confusion", "n",
                      "per_surface", "label_names"}
    assert isinstance(d["mcc"], float) and isinstance(d["n"], int)
    assert isinstance(d["confusion"], list) and all(isinstance(v, int) for row in d["confusion"] for v in row)
    undefined = evaluate_predictions([0, 0], [[0.9, 0.1], [0.6, 0.4]]).to_dict()
    assert undefined["roc_auc"] is None
    assert '"roc_auc": null' in json.dumps(undefined)


def test_evaluate_predictions_rejects_bad_input():
    with pytest.raises(ValueError, match="N×C"):
        evaluate_predictions([0, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="label_names"):
        evaluate_predictions([0, 1], np.eye(3)[:2])
    with pytest.raises(ValueError, match="labels"):
        evaluate_predictions([0, 1, 1], [[0.5, 0.5], [0.2, 0.8]])
    with pytest.raises(ValueError, match="nothing"):
        evaluate_predictions([], np.zeros((0, 2)))
    with pytest.raises(ValueError, match="outside"):
        evaluate_predictions([0, 2], [[0.5, 0.5], [0.2, 0.8]])


# ---------------------------------------------------------------------------- mean_sd


def test_mean_sd():
    values = [0.71, 0.74, 0.69, 0.80]
    mean, sd = mean_sd(values)
    assert mean == pytest.approx(statistics.mean(values))
    assert sd == pytest.approx(statistics.stdev(values))  # sample SD, ddof = 1
    assert mean_sd([0.5]) == (0.5, 0.0)
    assert mean_sd(np.array([1.0, 3.0])) == (2.0, pytest.approx(math.sqrt(2.0)))
    with pytest.raises(ValueError):
        mean_sd([])


def test_metrics_module_imports_neither_torch_nor_sklearn():
    code = "import sys, distill.metrics; print('torch' in sys.modules, 'sklearn' in sys.modules)"
    repo_root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root)
    assert out.stdout.split() == ["False", "False"]
