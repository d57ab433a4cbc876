"""The rules of ``distill update`` without a run: the decision threshold and baking it into the
bias, the gate's rules, the label sources counted from a flag export's metadata, and the site
distillation loss that learns labels only where there are labels (the end-to-end runs are in
test_update.py)."""
from __future__ import annotations

import json
import math

import numpy as np


def test_threshold_rule_and_baking_it_into_the_bias():
    import torch

    from distill.models.registry import build_model
    from distill.update.threshold import bake_threshold, decide

    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 20)
    probs = np.where(labels == 1, rng.uniform(0.2, 0.45, 40), rng.uniform(0.0, 0.25, 40))  # cracks score low
    golden_y = np.array([0, 1] * 20)
    d = decide(labels, probs, golden_y, np.where(golden_y == 1, 0.9, 0.05))
    assert d.adopted and 0.2 <= d.threshold <= 0.3 and d.val_mcc_at_threshold > d.val_mcc_at_half
    # a threshold that would cost the golden set is refused
    d2 = decide(labels, probs, golden_y, np.where(golden_y == 1, 0.9, 0.4))
    assert not d2.adopted and "golden" in d2.reason
    # too few of a class: refused
    assert not decide(labels[17:25], probs[17:25], golden_y, golden_y).adopted

    model = build_model("resnet18").eval()
    x = torch.rand(16, 3, 96, 96)
    with torch.no_grad():
        before = torch.softmax(model(x), 1)[:, 1]
        bake_threshold(model, 0.3)
        after = torch.softmax(model(x), 1)[:, 1]
    assert torch.equal(before >= 0.3, after >= 0.5)


def test_gate_rules():
    from distill.update.gate import judge, site_evidence

    def metrics(g, v):
        return {"fp32": {"golden": {"mcc": g, "n": 466}, "site_validation": {"mcc": v, "n": 36}},
                "int8": {"golden": {"mcc": g, "n": 466}, "site_validation": {"mcc": v, "n": 36}}}

    y = np.array([1] * 18 + [0] * 18)
    base, gain, same = np.r_[np.ones(9), np.zeros(27)], y.copy(), np.r_[np.ones(9), np.zeros(27)]
    drift = {"top1_agreement": 0.99, "cam_corr_mean": 0.95, "n_images": 700, "cam_n_scored": 600}
    assert judge(metrics(0.99, 0.4), metrics(0.985, 0.6), drift, site_evidence(y, base, gain)).passed
    assert judge(metrics(0.99, 0.4), metrics(0.97, 0.6), drift, site_evidence(y, base, gain)).failed() == [
        "golden_mcc", "golden_mcc_int8"]
    same_site = judge(metrics(0.99, 0.4), metrics(0.99, 0.4), drift, site_evidence(y, base, same))
    assert same_site.failed() == ["site_validation_mcc"] and same_site.verdict == "failed"
    assert judge(metrics(0.99, 0.4), metrics(0.99, 0.6), drift).failed() == ["site_validation_mcc"]  # no evidence
    bad = {**drift, "top1_agreement": 0.9, "cam_corr_mean": math.nan}
    assert judge(metrics(0.99, 0.4), metrics(0.99, 0.6), bad, site_evidence(y, base, gain)).failed() == [
        "int8_top1_agreement", "int8_heatmap_correlation"]


def test_label_sources_are_counted_from_the_export_metadata(tmp_path):
    from distill.data.samples import Sample
    from distill.update.sitedata import label_source_counts

    rows = [{"file": "crack/a_000.png", "label": "crack", "label_source": "tile_marked"},
            {"file": "no_crack/a_001.png", "label": "no_crack", "label_source": "tile_marked"},
            {"file": "no_crack/b_000.png", "label": "no_crack", "label_source": "frame_clean"},
            {"file": "crack/c_000.png", "label": "crack", "label_source": "verdicts_accepted"},
            {"file": "no_crack/d_000.png", "label": "no_crack"},                      # an older export
            {"file": "unlabelled/e_000.png", "label": "unlabelled", "label_source": "unlabelled"}]
    (tmp_path / "metadata.json").write_text(json.dumps({"patches": rows}))
    assert label_source_counts(str(tmp_path)) == {"frame_clean": 1, "tile_marked": 2, "unknown": 1,
                                                  "verdicts_accepted": 1}
    samples = [Sample(str(tmp_path / r["file"]), 1, "s") for r in rows[:2]] + [Sample("/elsewhere.png", 0, "t")]
    assert label_source_counts(str(tmp_path), samples) == {"tile_marked": 2, "unknown": 1}
    (tmp_path / "metadata.json").unlink()
    assert label_source_counts(str(tmp_path), samples) == {"unknown": 3}


def test_site_kd_loss_learns_labels_only_where_there_are_labels():
    import torch

    from distill.training.losses import HintonKDLoss, StepOutputs
    from distill.update.student import SiteKDLoss

    s, t = torch.randn(6, 2), torch.randn(6, 2)
    y = torch.tensor([1, 0, 1, 0, 1, 0])
    full = SiteKDLoss(4.0, 0.5)(StepOutputs(s, y, teacher_logits=t))
    ref = HintonKDLoss(4.0, 0.5)(StepOutputs(s, y, teacher_logits=t))
    assert torch.allclose(full["loss"], ref["loss"])
    masked = SiteKDLoss(4.0, 0.5)(StepOutputs(s, torch.tensor([1, -1, -1, -1, -1, 0]), teacher_logits=t))
    assert torch.allclose(masked["ce"], torch.nn.functional.cross_entropy(s[[0, 5]], torch.tensor([1, 0])))
    none = SiteKDLoss(4.0, 0.5)(StepOutputs(s, torch.full((6,), -1), teacher_logits=t))
    assert none["ce"].item() == 0.0 and torch.allclose(none["loss"], 0.5 * ref["kd"])
