"""Stage ``gate``: may the candidate replace the base? Four rules, each recorded with its numbers.

========================= ======================================================================
rule                      passes when
========================= ======================================================================
golden_mcc                candidate MCC − base MCC ≥ −GOLDEN_MAX_DROP (0.01) on the golden set
                          (FP32 packages through onnxruntime: the model, not its quantization)
site_validation_mcc       candidate MCC > base MCC on the site-validation part (strictly: an update
                          that does not help the site it was made for is not worth a push)
int8_top1_agreement       INT8 and FP32 candidate agree on ≥ INT8_MIN_AGREEMENT (0.98) of the drift
                          images (golden + site validation + up to DRIFT_SITE_IMAGES site patches)
int8_heatmap_correlation  ``cam_corr_mean`` of ``distill.quantize.int8_drift`` ≥ INT8_MIN_CAM_CORR
                          (0.9): mean Pearson correlation of the crack heat-maps, INT8 against
                          FP32, at input resolution, over the images whose FP32 map is visible
========================= ======================================================================

A candidate that fails a rule is not promoted unless the run overrides the gate (``--override-gate
--confirm "reason"``), which the lineage records with who and why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

GOLDEN_MAX_DROP = 0.01
INT8_MIN_AGREEMENT = 0.98
INT8_MIN_CAM_CORR = 0.9
DRIFT_SITE_IMAGES = 256
GOLDEN, SITE_VAL = "golden", "site_validation"
HEADLINE = ("mcc", "accuracy", "precision", "recall", "f1", "roc_auc", "n")


@dataclass
class GateResult:
    passed: bool
    rules: list[dict]
    metrics: dict
    int8_drift: dict = field(default_factory=dict)

    def failed(self) -> list[str]:
        return [r["name"] for r in self.rules if not r["passed"]]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "failed": self.failed(), "rules": self.rules, "metrics": self.metrics,
                "int8_drift": self.int8_drift}


def headline(metrics: dict) -> dict:
    return {k: metrics[k] for k in HEADLINE if k in metrics}


def _rule(name: str, passed: bool, value, limit, detail: str) -> dict:
    value = None if value is None or (isinstance(value, float) and not math.isfinite(value)) else round(value, 4)
    return {"name": name, "passed": bool(passed), "value": value, "limit": limit, "detail": detail}


def rules(metrics: dict, drift: dict) -> list[dict]:
    """The four rules from the FP32 metrics ``{set: {"base": {...}, "candidate": {...}}}`` and the drift report."""
    g, v = metrics[GOLDEN], metrics[SITE_VAL]
    dg = g["candidate"]["mcc"] - g["base"]["mcc"]
    dv = v["candidate"]["mcc"] - v["base"]["mcc"]
    agree, corr = drift["top1_agreement"], drift["cam_corr_mean"]
    corr_ok = corr is not None and math.isfinite(corr) and corr >= INT8_MIN_CAM_CORR
    return [
        _rule("golden_mcc", dg >= -GOLDEN_MAX_DROP, dg, -GOLDEN_MAX_DROP,
              f"golden MCC {g['base']['mcc']:.4f} -> {g['candidate']['mcc']:.4f} ({dg:+.4f}; may drop at most "
              f"{GOLDEN_MAX_DROP})"),
        _rule("site_validation_mcc", dv > 0, dv, 0.0,
              f"site-validation MCC {v['base']['mcc']:.4f} -> {v['candidate']['mcc']:.4f} ({dv:+.4f}; must rise) "
              f"on {v['candidate']['n']} patches"),
        _rule("int8_top1_agreement", agree >= INT8_MIN_AGREEMENT, agree, INT8_MIN_AGREEMENT,
              f"INT8 agrees with FP32 on {agree:.4f} of {drift['n_images']} images (at least {INT8_MIN_AGREEMENT})"),
        _rule("int8_heatmap_correlation", corr_ok, corr, INT8_MIN_CAM_CORR,
              f"crack heat-map correlation INT8 vs FP32 {corr if corr is None else round(corr, 4)} over "
              f"{drift['cam_n_scored']} visible maps (at least {INT8_MIN_CAM_CORR})"),
    ]


def evaluate_base(base, sets: dict[str, list], check=lambda: None) -> dict:
    """Every metric of the base's FP32 (and INT8, when at hand) package on ``sets``; ``check``
    is called between the sets (a cancel point)."""
    from distill.edge import evaluate_package
    from inspector.package import load_package

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


def judge(base_metrics: dict, candidate_metrics: dict, drift: dict) -> GateResult:
    """``*_metrics``: ``{"fp32": {set: metrics}, "int8": {...}}`` as from ``evaluate_base`` / build_packages."""
    metrics = {}
    for variant in ("fp32", "int8"):
        if variant not in base_metrics or variant not in candidate_metrics:
            continue
        for name in candidate_metrics[variant]:
            key = name if variant == "fp32" else f"{name} (int8)"
            metrics[key] = {"base": headline(base_metrics[variant][name]),
                            "candidate": headline(candidate_metrics[variant][name])}
    metrics["int8_vs_fp32"] = {"agreement": drift["top1_agreement"], "heatmap_correlation": drift["cam_corr_mean"],
                               "n": drift["n_images"]}
    result = rules(metrics, drift)
    return GateResult(all(r["passed"] for r in result), result, metrics, drift)
