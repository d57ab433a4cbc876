"""Keeping what the base knew (distill/update/anchor.py): the base student's own outputs in the
KD targets (learning without forgetting) and the weight mix with the base (WiSE-FT), on the
shipped student and real patches of its replay set."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distill.data.splits import read_manifest
from distill.data.torch_dataset import PatchDataset
from distill.models.checkpoint import load_classifier
from distill.update.anchor import AnchoredTargets, choose_mix, mixed_state
from inspector.update.protocol import EXIT_OK
from test_update import BASE_INT8, MODELS, QUICK, flag_export, golden_slice, run_cli

CKPT = MODELS / "crack-student-1.1.1.pt"


@pytest.fixture(scope="module")
def base():
    return load_classifier(CKPT).float().eval()


@pytest.fixture(scope="module")
def replay_patches():
    return read_manifest(MODELS / "replay" / "replay.csv")


class Ensemble(torch.nn.Module):
    """Stands for the teacher ensemble: a fixed classifier with the ensemble's interface."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward_all(self, x):
        return {"logits": self.model(x)}

    def fingerprint(self) -> str:
        return "ensemble"


def _flipped(model):
    """The same network with its classes swapped: a student that forgot everything."""
    bad = load_classifier(CKPT).float().eval()
    head = [m for m in bad.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight.copy_(head.weight.flip(0))
        head.bias.copy_(head.bias.flip(0))
    return bad


def test_mixed_state_interpolates_floats_and_keeps_the_trained_counters(base):
    bad = _flipped(base)
    a, b = base.state_dict(), bad.state_dict()
    for lam, expect in ((1.0, b), (0.0, a)):
        mixed = mixed_state(a, b, lam)
        assert all(torch.equal(mixed[k], expect[k]) for k in a if a[k].is_floating_point())
    half = mixed_state(a, b, 0.5)
    k = next(k for k in a if k.endswith("weight") and not torch.equal(a[k], b[k]))
    assert torch.allclose(half[k], (a[k] + b[k]) / 2)
    counters = [k for k in a if not a[k].is_floating_point()]
    assert counters and all(torch.equal(half[k], b[k]) for k in counters)
    with pytest.raises(ValueError, match="architecture"):
        mixed_state(a, {k: v for k, v in b.items() if k != counters[0]}, 0.5)


def test_anchored_targets_mix_the_base_in_on_replay_and_site_frames_by_their_weights(base, replay_patches):
    bad = _flipped(base)
    samples = replay_patches[:6]
    x = torch.stack([PatchDataset(samples, 96)[i]["image"] for i in range(6)])
    shas = [s.sha256 for s in samples]
    T = 4.0
    with torch.no_grad():
        p_teacher, p_base = torch.softmax(bad(x) / T, 1), torch.softmax(base(x) / T, 1)

    def probs(targets):
        return torch.softmax(torch.from_numpy(targets.logits(x, shas)) / T, 1)

    replay = set(shas[:3])
    only_teacher = AnchoredTargets(Ensemble(bad), base, replay, 0.0, 0.0, T)
    assert torch.allclose(probs(only_teacher), p_teacher, atol=1e-5)
    mixed = probs(AnchoredTargets(Ensemble(bad), base, replay, 1.0, 0.25, T))
    assert torch.allclose(mixed[:3], p_base[:3], atol=1e-5)                       # replay: the base alone
    assert torch.allclose(mixed[3:], 0.75 * p_teacher[3:] + 0.25 * p_base[3:], atol=1e-5)   # site frames
    fingerprints = {AnchoredTargets(Ensemble(bad), m, replay, w, 0.0, T).fingerprint()
                    for m in (base, bad) for w in (0.0, 0.5)}
    assert len(fingerprints) == 4            # the weights and the base's weights are part of the cache key
    with pytest.raises(RuntimeError, match="precomputed"):
        only_teacher.forward_all(x)
    with pytest.raises(ValueError, match="lwf"):
        AnchoredTargets(Ensemble(bad), base, replay, 1.5, 0.0, T)


def test_the_mix_keeps_the_golden_mcc_and_falls_back_to_the_base_when_every_mix_forgets(base, replay_patches):
    golden = PatchDataset(read_manifest(MODELS / "golden" / "golden.csv")[::4], 96)
    val = PatchDataset(replay_patches[120:200], 96)
    same = load_classifier(CKPT).float().eval()
    choice = choose_mix(base, same, val, golden)
    scored = [row for row in choice.table if "allowed" in row]
    assert choice.lam == 1.0 and len(scored) == 1 and scored[0]["golden_drop"] == 0   # nothing forgotten
    bad = _flipped(base)
    choice = choose_mix(base, bad, val, golden)
    scored = [row for row in choice.table if "allowed" in row]
    chosen = next(row for row in scored if row["lam"] == choice.lam)
    # a student with its classes swapped: only a mix close to the base keeps the golden MCC
    assert choice.lam < 0.5 and chosen["allowed"] and chosen["golden_drop"] <= 0.01
    assert all(not row["allowed"] for row in scored if row is not chosen)
    assert all(row["site_val_best"] <= chosen["site_val_best"] for row in choice.table if "allowed" not in row)
    with torch.no_grad():                    # the model now holds the chosen mix
        x = golden[0]["image"][None]
        ref = load_classifier(CKPT).float().eval()
        ref.load_state_dict(mixed_state(base.state_dict(), _flipped(base).state_dict(), choice.lam))
        assert torch.allclose(bad(x), ref(x), atol=1e-5)
    everything_forgets = choose_mix(base, _flipped(base), val, golden, grid=(1.0,))
    assert everything_forgets.lam == 0.0 and "every mix forgets" in everything_forgets.reason


@pytest.mark.slow
def test_an_update_with_lwf_the_weight_mix_and_a_larger_input_records_them_and_ships_that_input(tmp_path):
    """One quick run with every new setting: each is recorded, the mix kept the golden MCC."""
    from inspector.edge.package import load_package
    from inspector.store.database import FlagStore

    with FlagStore(tmp_path / "flags") as s:
        export = flag_export(s, tmp_path / "export")
    out = tmp_path / "update"
    proc, events = run_cli("--base", str(BASE_INT8), "--labelled", str(export), "--out", str(out),
                           "--golden", str(golden_slice(tmp_path)), "--pushed-by", "ana",
                           "--lwf", "0.5", "--lwf-site", "0.1", "--weight-mix", "auto", "--input-size", "128", *QUICK)
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]    # promoted or refused, not an error
    assert events[-1]["event"] == "result"
    record = json.loads((out / "update.json").read_text())
    student = record["recipe"]["student"]
    assert student["lwf"] == {"replay": 0.5, "site": 0.1} and student["input_size"] == 128
    base = load_package(BASE_INT8).manifest
    for variant in ("fp32", "int8"):          # 160 px tiles seen whole at 128 px, not downscaled to 96
        m = load_package(out / record["candidate"][variant]).manifest
        assert m.input.size == 128 and m.tiling == base.tiling
    mix = student["weight_mix"]
    assert [row["lam"] for row in mix["table"]] == [1.0, 0.8, 0.6, 0.4, 0.2]
    chosen = next((row for row in mix["table"] if row["lam"] == mix["lam"]), None)
    assert chosen is None if mix["lam"] == 0.0 else (chosen["allowed"] and chosen["golden_drop"] <= 0.01)


def test_lwf_needs_teachers_bad_settings_are_refused_by_name_and_the_mix_is_the_default(tmp_path):
    from distill.update.config import UpdateConfig
    from distill.update.errors import UpdateConfigError

    common = {"base": str(BASE_INT8), "labelled": str(MODELS / "golden"), "out": str(tmp_path)}
    with pytest.raises(UpdateConfigError, match="no teachers"):
        UpdateConfig(**common, recipe="finetune", lwf=0.5).resolved()
    assert UpdateConfig(**common).resolved().weight_mix == "auto"      # the app's default since issue 20
    with pytest.raises(UpdateConfigError, match="lwf_site must be in"):
        UpdateConfig(**common, lwf_site=-0.1).resolved()
    with pytest.raises(UpdateConfigError, match="weight_mix"):
        UpdateConfig(**common, weight_mix="maybe").resolved()
    with pytest.raises(UpdateConfigError, match="input_size must be"):
        UpdateConfig(**common, input_size=8).resolved()
    with pytest.raises(UpdateConfigError, match="trains nothing"):
        UpdateConfig(**common, recipe="threshold", input_size=160).resolved()
    assert np.isclose(UpdateConfig(**common, recipe="finetune", weight_mix="auto").resolved().lwf, 0.0)
