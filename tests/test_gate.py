"""The gate's rules without a model: the site rule's evidence (bootstrap lower bound, patches per
class, a non-degenerate candidate), cross-fitted thresholds, the INT8 candidate on the golden set,
the golden set's hashes, and the stratified site-validation split (the rule the app's plan shows)."""
from __future__ import annotations

import numpy as np
import pytest

DRIFT = {"top1_agreement": 0.99, "cam_corr_mean": 0.95, "n_images": 700, "cam_n_scored": 600}


def metrics(g, v, g8=None):
    out = {"fp32": {"golden": {"mcc": g, "n": 466}, "site_validation": {"mcc": v, "n": 36}}}
    if g8 is not None:
        out["int8"] = {"golden": {"mcc": g8, "n": 466}, "site_validation": {"mcc": v, "n": 36}}
    return out


def preds_with_mcc(y, target, seed=0):
    """0/1 predictions on labels ``y`` whose MCC is as near ``target`` as a greedy search gets."""
    from distill.metrics import mcc

    rng = np.random.default_rng(seed)
    best = None
    for _ in range(4000):
        p = rng.integers(0, 2, len(y))
        m = mcc(y, p, 2)
        if best is None or abs(m - target) < abs(best[0] - target):
            best = (m, p)
    return best[1]


def test_the_faint_crack_bridge_minus_020_to_000_on_35_patches_is_not_enough_evidence():
    from distill.metrics import mcc
    from distill.update.gate import judge, site_evidence

    y = np.array([1] * 17 + [0] * 18)
    base = preds_with_mcc(y, -0.20, seed=1)
    cand = preds_with_mcc(y, 0.00, seed=2)
    assert abs(mcc(y, base, 2) + 0.20) < 0.03 and abs(mcc(y, cand, 2)) < 0.03
    site = site_evidence(y, base, cand)
    assert site["point_diff"] > 0 and site["lower"] is not None and site["lower"] <= 0 and not site["passed"]
    result = judge(metrics(0.99, -0.2, 0.99), metrics(0.99, 0.0, 0.99), DRIFT, site)
    assert not result.passed and result.failed() == ["site_validation_mcc"]
    assert result.verdict == "not_enough_evidence"
    rule = next(r for r in result.rules if r["name"] == "site_validation_mcc")
    assert "not enough evidence" in rule["detail"] and "35 patches" in rule["detail"]
    # at chance by predicting one class only: degenerate, whatever the numbers
    flat = site_evidence(y, base, np.zeros_like(y))
    assert not flat["passed"] and "degenerate" in flat["reason"] and flat["candidate_mcc"] == 0.0


def test_a_clear_gain_passes_and_too_few_of_a_class_never_does():
    from distill.update.gate import judge, site_evidence

    y = np.array([1] * 15 + [0] * 15)
    base = np.zeros(30, dtype=int)
    base[:3] = 1                                    # finds 3 of 15 cracks
    cand = y.copy()
    cand[[0, 20]] = [0, 1]                          # misses one, one false alarm: MCC 0.87
    site = site_evidence(y, base, cand)
    assert site["passed"] and site["lower"] > 0
    result = judge(metrics(0.99, 0.3, 0.99), metrics(0.99, 0.87, 0.99), DRIFT, site)
    assert result.passed and result.verdict == "passed"
    few = np.array([1] * 4 + [0] * 30)
    site = site_evidence(few, np.zeros(34, int), few)     # perfect, but 4 crack patches
    assert not site["passed"] and "4 crack" in site["reason"]


def test_the_int8_candidate_is_gated_on_the_golden_set():
    from distill.update.gate import judge, site_evidence

    y = np.array([1] * 15 + [0] * 15)
    site = site_evidence(y, np.zeros(30, int), y)
    ok = judge(metrics(0.99, 0.0, 0.985), metrics(0.99, 1.0, 0.98), DRIFT, site)
    assert ok.passed and "golden_mcc_int8" in {r["name"] for r in ok.rules}
    bad = judge(metrics(0.99, 0.0, 0.99), metrics(0.99, 1.0, 0.95), DRIFT, site)   # FP32 fine, INT8 forgets
    assert bad.failed() == ["golden_mcc_int8"] and bad.verdict == "failed"
    # a base without its INT8 package: the INT8 candidate against the base's FP32
    no_int8 = judge(metrics(0.99, 0.0), metrics(0.99, 1.0, 0.97), DRIFT, site)
    assert no_int8.failed() == ["golden_mcc_int8"] and "FP32" in no_int8.rules[1]["detail"]


def test_the_threshold_is_judged_on_frames_it_was_not_tuned_on():
    from distill.update.gate import crossfit, folds, unbake
    from distill.update.threshold import bake_threshold  # noqa: F401  (the inverse unbake undoes)

    rng = np.random.default_rng(0)
    sources = [f"flag:{i}" for i in range(20) for _ in range(6)]
    y = np.array([int(k % 6 < 2) for k in range(120)])
    p = np.where(y == 1, rng.uniform(0.2, 0.45, 120), rng.uniform(0.0, 0.25, 120))   # cracks score low
    gy = np.array([0, 1] * 30)
    gp = np.where(gy == 1, 0.9, 0.05)
    f = folds(sources, y)
    assert set(f) == {0, 1} and all(len(set(f[[i for i, s in enumerate(sources) if s == src]])) == 1
                                    for src in set(sources))        # a source in one fold only
    fit = crossfit(y, sources, p, gy, gp)
    for fold in fit["folds"]:
        assert fold["chosen_on"] + fold["patches"] == 120 and fold["chosen_on"] == int((f != fold["fold"]).sum())
        assert 0.2 <= fold["threshold"] <= 0.3
    # labels flipped inside one fold change that fold's threshold input only through the other fold
    y2 = y.copy()
    y2[f == 0] = 1 - y2[f == 0]
    fit2 = crossfit(y2, sources, p, gy, gp)
    assert fit2["folds"][1]["threshold"] != fit["folds"][1]["threshold"] or \
        fit2["folds"][1]["reason"] != fit["folds"][1]["reason"]
    assert fit2["folds"][0]["threshold"] == fit["folds"][0]["threshold"]    # chosen on fold 1, unchanged
    assert np.allclose(unbake(1 / (1 + np.exp(-(np.log(p / (1 - p)) - np.log(0.3 / 0.7)))), 0.3), p)


def test_a_tampered_golden_file_is_a_clear_error(tmp_path):
    import cv2

    from distill.data.layouts import DatasetError
    from distill.data.samples import content_hash
    from distill.data.splits import read_manifest, write_manifest
    from distill.update.basedata import read_set, verify_samples
    from support import REPO

    samples = read_manifest(REPO / "models" / "golden" / "golden.csv")[:3]
    copies = []
    for i, s in enumerate(samples):
        dst = tmp_path / f"g{i}.png"
        dst.write_bytes(open(s.path, "rb").read())
        copies.append(type(s)(str(dst), s.label, s.source, s.surface, s.box, content_hash(dst, s.box)))
    write_manifest(tmp_path / "golden.csv", copies)
    golden = read_set(tmp_path, verify=True)
    verify_samples(golden)                              # untouched: fine
    img = cv2.imread(str(tmp_path / "g1.png"))
    img[0, 0] = 255 - img[0, 0]
    cv2.imwrite(str(tmp_path / "g1.png"), img)
    with pytest.raises(DatasetError, match=r"golden set does not match its hashes: content changed \(1\).*g1\.png"):
        verify_samples(golden)
    with pytest.raises(DatasetError, match="g1.png"):
        read_set(tmp_path, verify=True)


# ------------------------------------------------------------------ the site split


def test_site_split_is_stratified_deterministic_and_never_empty_for_a_class():
    from inspector.update.plan import site_split

    # the masonry site: 100 patches, 50 crack / 50 clean, four folder blocks
    masonry = {"crack/0": (25, 0), "crack/1": (25, 0), "no_crack/0": (0, 37), "no_crack/1": (0, 13)}
    for seed in range(10):
        split = site_split(masonry, seed=seed)
        assert split.ok and split.val_crack >= 5 and split.val_clean >= 5 and split.adapt_crack and split.adapt_clean
    assert site_split(dict(reversed(list(masonry.items())))) == site_split(masonry)
    # a few dozen flags of random ids, a third with cracks: never an empty class, whatever the ids
    rng = np.random.default_rng(0)
    for trial in range(200):
        units = {f"flag:{rng.integers(1 << 60):x}": ((1 + k % 3, 11 - k % 3) if k % 3 == 0 else (0, 12))
                 for k in range(int(rng.integers(18, 40)))}
        split = site_split(units)
        assert split.ok, (trial, split)
        assert set(split.val).isdisjoint(split.adapt) and set(split.val) | set(split.adapt) == set(units)


def test_site_split_says_what_is_missing():
    from inspector.update.plan import site_split

    one_crack_frame = {"flag:a": (3, 9), **{f"flag:{i}": (0, 12) for i in range(10)}}
    split = site_split(one_crack_frame)
    assert not split.ok and split.val_crack == 0
    assert split.missing[0].startswith("label at least 2 more frames with a crack tile")
    only_cracks = {"crack/0": (40, 0), "crack/1": (40, 0)}
    assert any("clean tiles" in m for m in site_split(only_cracks).missing)
