"""Stage ``gate``: may the candidate replace the base? Five rules, each recorded with its numbers.

========================= ======================================================================
rule                      passes when
========================= ======================================================================
golden_mcc                candidate MCC − base MCC ≥ −GOLDEN_MAX_DROP (0.01) on the golden set
                          (FP32 packages through onnxruntime: the model, not its quantization)
golden_mcc_int8           the same for the INT8 candidate, the one that ships: its golden MCC −
                          the base's (its INT8 package when at hand, else its FP32) ≥ −0.01
site_validation_mcc       the site shows the gain (:func:`site_evidence`): site validation holds
                          ≥ SITE_MIN_PER_CLASS (5) crack and 5 clean patches, the candidate
                          predicts both classes there, and the 5th percentile of the
                          candidate − base MCC difference over BOOTSTRAP (2000) class-stratified
                          resamples of the site-validation patches (seed BOOTSTRAP_SEED) is > 0.
                          The candidate is judged **cross-fitted** (:func:`crossfit`): each half
                          of site validation at the threshold the calibrate rule picks on the
                          other half, never at one tuned on the same frames
int8_top1_agreement       INT8 and FP32 candidate agree on ≥ INT8_MIN_AGREEMENT (0.98) of the drift
                          images (golden + site validation + up to DRIFT_SITE_IMAGES site patches)
int8_heatmap_correlation  ``cam_corr_mean`` of ``distill.export.quantize.int8_drift`` ≥ INT8_MIN_CAM_CORR
                          (0.9): mean Pearson correlation of the crack heat-maps, INT8 against
                          FP32, at input resolution, over the images whose FP32 map is visible
========================= ======================================================================

The verdict: ``passed``; ``not_enough_evidence`` when every rule passes but the site rule, whose
point estimate rose but whose evidence does not show it (too few patches of a class, a
degenerate candidate, a lower bound ≤ 0): never promoted; ``failed`` otherwise. A candidate that
is not ``passed`` is not promoted unless the run overrides the gate (``--override-gate --confirm
"reason"``), which the lineage records with who and why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

GOLDEN_MAX_DROP = 0.01
INT8_MIN_AGREEMENT = 0.98
INT8_MIN_CAM_CORR = 0.9
DRIFT_SITE_IMAGES = 256
SITE_MIN_PER_CLASS = 5     # = inspector.update.plan.SITE_MIN_PER_CLASS and the threshold rule's minimum
BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0
LOWER_PERCENTILE = 5.0     # one-sided 95 % lower bound
CROSSFIT_FOLDS = 2
GOLDEN, SITE_VAL = "golden", "site_validation"
HEADLINE = ("mcc", "accuracy", "precision", "recall", "f1", "roc_auc", "n")


@dataclass
class GateResult:
    passed: bool
    rules: list[dict]
    metrics: dict
    int8_drift: dict = field(default_factory=dict)
    site: dict = field(default_factory=dict)       # site_evidence's numbers and the cross-fitting

    def failed(self) -> list[str]:
        return [r["name"] for r in self.rules if not r["passed"]]

    @property
    def verdict(self) -> str:
        failed = self.failed()
        if not failed:
            return "passed"
        if failed == ["site_validation_mcc"] and self.site.get("point_diff", 0.0) > 0:
            return "not_enough_evidence"
        return "failed"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "verdict": self.verdict, "failed": self.failed(), "rules": self.rules,
                "metrics": self.metrics, "int8_drift": self.int8_drift, "site_validation": self.site}


def headline(metrics: dict) -> dict:
    return {k: metrics[k] for k in HEADLINE if k in metrics}


def _rule(name: str, passed: bool, value, limit, detail: str) -> dict:
    value = None if value is None or (isinstance(value, float) and not math.isfinite(value)) else round(value, 4)
    return {"name": name, "passed": bool(passed), "value": value, "limit": limit, "detail": detail}


def _mcc(labels: np.ndarray, pred: np.ndarray) -> float:
    from distill.metrics import mcc

    return float(mcc(labels, pred, 2))


def site_evidence(labels, base_pred, cand_pred, *, n_boot: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED,
                  min_per_class: int = SITE_MIN_PER_CLASS) -> dict:
    """Does site validation show that the candidate is better than the base? ``*_pred``: 0/1 per
    patch (the candidate's cross-fitted). Paired bootstrap, stratified by class (the crack and
    the clean patches are each resampled with replacement, so every resample holds both classes
    in the part's proportions); ``lower`` is the LOWER_PERCENTILE-th percentile of the
    candidate − base MCC differences. ``passed`` needs ≥ ``min_per_class`` patches of each class,
    a candidate predicting both classes, and ``lower`` > 0; ``reason`` says which is missing."""
    y, b, c = (np.asarray(a, dtype=np.int64) for a in (labels, base_pred, cand_pred))
    n_crack, n_clean = int((y == 1).sum()), int((y == 0).sum())
    base_mcc, cand_mcc = _mcc(y, b), _mcc(y, c)
    out = {"n": int(len(y)), "crack": n_crack, "clean": n_clean, "base_mcc": round(base_mcc, 4),
           "candidate_mcc": round(cand_mcc, 4), "point_diff": round(cand_mcc - base_mcc, 4),
           "candidate_predicts": {"crack": int((c == 1).sum()), "clean": int((c == 0).sum())},
           "bootstrap": {"resamples": n_boot, "seed": seed, "percentile": LOWER_PERCENTILE,
                         "unit": "patch, stratified by class"},
           "lower": None, "min_per_class": min_per_class}
    if min(n_crack, n_clean) < min_per_class:
        out.update(passed=False, reason=f"{n_crack} crack / {n_clean} clean patches (< {min_per_class} of a class)")
        return out
    if out["candidate_predicts"]["crack"] == 0 or out["candidate_predicts"]["clean"] == 0:
        out.update(passed=False, reason="the candidate predicts one class only (degenerate)")
        return out
    rng = np.random.default_rng(seed)
    idx1, idx0 = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        sel = np.concatenate([rng.choice(idx1, len(idx1)), rng.choice(idx0, len(idx0))])
        diffs[i] = _mcc(y[sel], c[sel]) - _mcc(y[sel], b[sel])
    lower = float(np.percentile(diffs, LOWER_PERCENTILE))
    out["lower"] = round(lower, 4)
    out["passed"] = lower > 0
    out["reason"] = "" if lower > 0 else f"lower bound {lower:+.4f} of the MCC gain is not above 0"
    return out


def folds(sources, labels, k: int = CROSSFIT_FOLDS, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Fold index per patch: sources stratified as in the site split (crack sources, clean
    sources), each stratum's sources ranked by hash and dealt round-robin to the k folds."""
    from inspector.update.plan import _source_rank

    units: dict[str, bool] = {}
    for s, y in zip(sources, labels):
        units[s] = units.get(s, False) or int(y) == 1
    fold_of = {}
    for crack in (True, False):
        for i, s in enumerate(sorted((u for u, c in units.items() if c == crack),
                                     key=lambda u: _source_rank(seed, f"fold:{u}"))):
            fold_of[s] = i % k
    return np.array([fold_of[s] for s in sources], dtype=np.int64)


def crossfit(labels, sources, crack_probs, golden_labels, golden_probs, k: int = CROSSFIT_FOLDS) -> dict:
    """The candidate's site-validation predictions with the threshold chosen out of fold: for
    each fold, the calibrate rule (``threshold.decide``) on the other folds (and the golden set,
    for its cost) picks the threshold this fold is predicted at. ``crack_probs``: the candidate's
    probabilities *before* any threshold was baked in. Returns ``pred`` and the thresholds."""
    from distill.update.threshold import decide

    y, p = np.asarray(labels), np.asarray(crack_probs, dtype=np.float64)
    fold = folds(sources, y, k)
    pred = np.zeros(len(y), dtype=np.int64)
    thresholds = []
    for f in range(k):
        inside, outside = fold == f, fold != f
        d = decide(y[outside], p[outside], golden_labels, golden_probs) if outside.any() else None
        t = d.threshold if d is not None else 0.5
        pred[inside] = (p[inside] >= t).astype(np.int64)
        thresholds.append({"fold": f, "patches": int(inside.sum()), "threshold": t,
                           "chosen_on": int(outside.sum()), "reason": d.reason if d is not None else "empty"})
    return {"pred": pred, "folds": thresholds}


def unbake(crack_probs, threshold: float) -> np.ndarray:
    """A baked threshold undone: p before = sigmoid(logit(p after) + logit(t)) (threshold.bake_threshold)."""
    p = np.clip(np.asarray(crack_probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    if threshold == 0.5:
        return p
    z = np.log(p / (1 - p)) + math.log(threshold / (1 - threshold))
    return 1.0 / (1.0 + np.exp(-z))


def rules(metrics: dict, drift: dict, site: dict | None = None, int8_golden: tuple | None = None) -> list[dict]:
    """The five rules from the FP32 metrics ``{set: {"base": {...}, "candidate": {...}}}``, the
    drift report, :func:`site_evidence`'s result and ``int8_golden`` = (reference MCC, INT8
    candidate MCC, what the reference is)."""
    g = metrics[GOLDEN]
    dg = g["candidate"]["mcc"] - g["base"]["mcc"]
    agree, corr = drift["top1_agreement"], drift["cam_corr_mean"]
    corr_ok = corr is not None and math.isfinite(corr) and corr >= INT8_MIN_CAM_CORR
    out = [_rule("golden_mcc", dg >= -GOLDEN_MAX_DROP, dg, -GOLDEN_MAX_DROP,
                 f"golden MCC {g['base']['mcc']:.4f} -> {g['candidate']['mcc']:.4f} ({dg:+.4f}; may drop at most "
                 f"{GOLDEN_MAX_DROP})")]
    if int8_golden is None:
        out.append(_rule("golden_mcc_int8", False, None, -GOLDEN_MAX_DROP, "no INT8 candidate measured on the golden set"))
    else:
        ref, cand, what = int8_golden
        d8 = cand - ref
        out.append(_rule("golden_mcc_int8", d8 >= -GOLDEN_MAX_DROP, d8, -GOLDEN_MAX_DROP,
                         f"INT8 candidate golden MCC {cand:.4f} vs base {ref:.4f} ({what}; {d8:+.4f}; may drop at "
                         f"most {GOLDEN_MAX_DROP})"))
    if site is None:
        out.append(_rule("site_validation_mcc", False, None, 0.0, "no per-patch site-validation predictions"))
    else:
        lower = site.get("lower")
        verdict = "shown" if site["passed"] else "not enough evidence: " + site["reason"]
        out.append(_rule("site_validation_mcc", site["passed"], lower, 0.0,
                         f"site-validation MCC {site['base_mcc']:.4f} -> {site['candidate_mcc']:.4f} cross-fitted "
                         f"({site['point_diff']:+.4f}) on {site['n']} patches ({site['crack']} crack / "
                         f"{site['clean']} clean; candidate predicts {site['candidate_predicts']['crack']} crack / "
                         f"{site['candidate_predicts']['clean']} clean); {LOWER_PERCENTILE:g}th percentile of "
                         f"{site['bootstrap']['resamples']} bootstrap gains "
                         f"{'—' if lower is None else f'{lower:+.4f}'} (must be > 0, at least {site['min_per_class']} "
                         f"per class): {verdict}"))
    out += [
        _rule("int8_top1_agreement", agree >= INT8_MIN_AGREEMENT, agree, INT8_MIN_AGREEMENT,
              f"INT8 agrees with FP32 on {agree:.4f} of {drift['n_images']} images (at least {INT8_MIN_AGREEMENT})"),
        _rule("int8_heatmap_correlation", corr_ok, corr, INT8_MIN_CAM_CORR,
              f"crack heat-map correlation INT8 vs FP32 {corr if corr is None else round(corr, 4)} over "
              f"{drift['cam_n_scored']} visible maps (at least {INT8_MIN_CAM_CORR})"),
    ]
    return out


def evaluate_base(base, sets: dict[str, list], check=lambda: None) -> dict:
    """Every metric of the base's FP32 (and INT8, when at hand) package on ``sets``; ``check``
    is called between the sets (a cancel point)."""
    from distill.export.package import evaluate_package
    from inspector.edge.package import load_package

    out = {}
    for variant, path in (("fp32", base.fp32_path), ("int8", base.int8_path)):
        if path is None:
            continue
        pkg = load_package(path)
        out[variant] = {}
        for name, samples in sets.items():
            check()
            out[variant][name] = evaluate_package(pkg, samples)
    return out


def judge(base_metrics: dict, candidate_metrics: dict, drift: dict, site: dict | None = None) -> GateResult:
    """``*_metrics``: ``{"fp32": {set: metrics}, "int8": {...}}`` as from ``evaluate_base`` / build_packages;
    ``site``: :func:`site_evidence` on the cross-fitted site-validation predictions."""
    metrics = {}
    for variant in ("fp32", "int8"):
        if variant not in base_metrics or variant not in candidate_metrics:
            continue
        for name in candidate_metrics[variant]:
            key = name if variant == "fp32" else f"{name} (int8)"
            metrics[key] = {"base": headline(base_metrics[variant][name]),
                            "candidate": headline(candidate_metrics[variant][name])}
    if site is not None:
        metrics["site_validation (cross-fitted)"] = {"base": {"mcc": site["base_mcc"], "n": site["n"]},
                                                     "candidate": {"mcc": site["candidate_mcc"], "n": site["n"]}}
    metrics["int8_vs_fp32"] = {"agreement": drift["top1_agreement"], "heatmap_correlation": drift["cam_corr_mean"],
                               "n": drift["n_images"]}
    int8_golden = None
    if GOLDEN in candidate_metrics.get("int8", {}):
        ref_variant = "int8" if GOLDEN in base_metrics.get("int8", {}) else "fp32"
        int8_golden = (base_metrics[ref_variant][GOLDEN]["mcc"], candidate_metrics["int8"][GOLDEN]["mcc"],
                       f"its {'INT8' if ref_variant == 'int8' else 'FP32'} package")
    result = rules(metrics, drift, site, int8_golden)
    return GateResult(all(r["passed"] for r in result), result, metrics, drift, site or {})
