"""distill.training.loop.fit and distill.training.runs.run on a tiny real Özgenel set: events, checkpoints,
early stopping, exact resume, seeds, the KD path with a teacher-output cache."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.training.cache import TeacherCache
from distill.models.checkpoint import checkpoint_info, load_classifier
from distill.config import DataConfig, LossConfig, ModelConfig, RunConfig
from distill.data.augment import AugmentConfig
from distill.data.layouts import read_dataset
from distill.data.torch_dataset import PatchDataset
from distill.models.ensemble import TeacherEnsemble
from distill.training.losses import build_loss
from distill.models.registry import build_model
from distill.training.runs import run
from distill.training.loop import TrainConfig, evaluate, fit, teacher_targets
from support import one_thread  # noqa: F401  (autouse fixture)

DATA = Path(os.environ["CRACK_DATA_DIR"])
SIZE = 32
ARCH = "mobilenet_v3_small"


def make_tiny_folders(root: Path, per_class: int = 24) -> Path:
    """``root/{crack,no_crack}``: symlinks to real Özgenel patches spread over the numbering, in
    pairs of neighbours, so "block:50" gives many sources of one or two patches each."""
    for cls in ("crack", "no_crack"):
        files = sorted((DATA / "ozgenel_ccic_subset" / cls).glob("*.jpg"))
        stride = len(files) // (per_class // 2)
        picked = [files[i + j] for i in range(0, stride * (per_class // 2), stride) for j in (0, 1)]
        (root / cls).mkdir(parents=True)
        for f in picked[:per_class]:
            os.symlink(f, root / cls / f.name)
    return root




@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder, train samples: 16 + 16, val samples: 8 + 8)."""
    root = make_tiny_folders(tmp_path_factory.mktemp("tiny"))
    samples = read_dataset(root)
    crack = [s for s in samples if s.label == 1]
    no_crack = [s for s in samples if s.label == 0]
    return root, crack[:16] + no_crack[:16], crack[16:] + no_crack[16:]


def student(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ARCH, input_size=SIZE)


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=8, lr=1e-3, seed=0, device="cpu", patience=10, max_steps_per_epoch=2)
    base.update(kw)
    return TrainConfig(**base)


def state_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_ce_loss_falls_on_a_fixed_batch(tiny, tmp_path):
    _, train, val = tiny
    fixed = PatchDataset(train[:4] + train[-4:], SIZE)  # one batch of 8, no augmentation
    events = []
    fit(student(), build_loss("ce"), fixed, PatchDataset(val, SIZE), tmp_path,
        cfg(epochs=6, lr=3e-3, max_steps_per_epoch=None, patience=100), callback=events.append)
    losses = [e["loss"]["loss"] for e in events if e["event"] == "step"]
    assert len(losses) == 6
    assert losses[0] == pytest.approx(np.log(2), abs=0.1)  # an untrained 2-class head
    assert max(losses[-2:]) < 0.5 * losses[0]


def test_events_checkpoints_and_history(tiny, tmp_path):
    _, train, val = tiny
    events = []
    model = student()
    val_ds = PatchDataset(val, SIZE)
    result = fit(model, build_loss("ce"), PatchDataset(train, SIZE, augment=AugmentConfig()), val_ds,
                 tmp_path, cfg(epochs=2, max_steps_per_epoch=3), callback=events.append, info={"tag": "x"})

    kinds = [e["event"] for e in events]
    assert kinds == ["epoch_start"] + ["step"] * 3 + ["epoch_end"] + ["epoch_start"] + ["step"] * 3 \
        + ["epoch_end", "done"]
    assert events[0] == {"event": "epoch_start", "epoch": 0, "epochs": 2, "steps": 3}
    steps = [e for e in events if e["event"] == "step"]
    assert [(e["epoch"], e["step"], e["steps"]) for e in steps] == [(e, i, 3) for e in (0, 1) for i in range(3)]
    assert all(set(e["loss"]) == {"loss", "ce"} and np.isfinite(e["loss"]["loss"]) for e in steps)
    ends = [e for e in events if e["event"] == "epoch_end"]
    for end in ends:
        assert set(end["val"]) >= {"mcc", "accuracy", "precision", "recall", "f1", "roc_auc", "confusion", "n"}
        assert end["val"]["n"] == len(val)
        # train loss = mean of that epoch's step losses (equal batches of 8)
        mean = np.mean([s["loss"]["loss"] for s in steps if s["epoch"] == end["epoch"]])
        assert end["train_loss"] == pytest.approx(mean, abs=1e-4)
    assert ends[1]["best_mcc"] == max(ends[0]["val"]["mcc"], ends[1]["val"]["mcc"])
    assert events[-1] == {"event": "done", "best_epoch": result.best_epoch, "best_mcc": result.best_mcc,
                          "stopped_early": False}

    assert result.epochs_run == 2 and not result.stopped_early
    assert [h["epoch"] for h in result.history] == [0, 1]
    assert [h["val"] for h in result.history] == [e["val"] for e in ends]
    assert result.best_mcc == max(h["val"]["mcc"] for h in result.history)
    assert result.history[result.best_epoch]["val"]["mcc"] == result.best_mcc

    # best.pt: a loadable classifier whose recorded validation is what it really scores
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
    best = load_classifier(tmp_path / "best.pt")
    info = checkpoint_info(tmp_path / "best.pt")
    assert info["tag"] == "x" and info["epoch"] == result.best_epoch
    assert evaluate(best, val_ds).to_dict() == info["val"] == result.history[result.best_epoch]["val"]
    if result.best_epoch == 1:
        assert state_equal(best, model)
    last = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1 and last["best_epoch"] == result.best_epoch and len(last["history"]) == 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in last["student"].items())


def test_early_stopping_when_validation_cannot_improve(tiny, tmp_path):
    _, train, val = tiny
    one_class_val = PatchDataset([s for s in val if s.label == 1], SIZE)  # MCC is 0.0 for any model
    for patience in (0, 1):
        out = tmp_path / f"p{patience}"
        events = []
        result = fit(student(), build_loss("ce"), PatchDataset(train, SIZE), one_class_val, out,
                     cfg(epochs=5, patience=patience, max_steps_per_epoch=1), callback=events.append)
        # epoch 0 improves on "nothing yet"; epoch 1 does not -> stop after it
        assert result.epochs_run == 2, patience
        assert result.stopped_early and result.best_epoch == 0 and result.best_mcc == 0.0
        assert len(result.history) == 2
        assert [e["epoch"] for e in events if e["event"] == "epoch_end"] == [0, 1]
        assert events[-1]["event"] == "done" and events[-1]["stopped_early"] is True

    # a run that stopped early stays stopped when it is started again
    events = []
    again = fit(student(), build_loss("ce"), PatchDataset(train, SIZE), one_class_val, tmp_path / "p1",
                cfg(epochs=5, patience=1, max_steps_per_epoch=1), callback=events.append)
    assert [e["event"] for e in events] == ["resumed", "done"]
    assert again.stopped_early and again.epochs_run == 2 and len(again.history) == 2


def test_patience_counts_epochs_without_improvement(tiny, tmp_path):
    _, train, val = tiny
    one_class_val = PatchDataset([s for s in val if s.label == 0], SIZE)
    result = fit(student(), build_loss("ce"), PatchDataset(train, SIZE), one_class_val, tmp_path,
                 cfg(epochs=6, patience=3, max_steps_per_epoch=1))
    assert result.epochs_run == 4 and result.stopped_early  # epochs 1, 2, 3 without improvement


class Crash(Exception):
    pass


def test_resume_continues_exactly_where_it_stopped(tiny, tmp_path):
    _, train, val = tiny
    conf = cfg(epochs=2, max_steps_per_epoch=3, seed=3)

    def train_ds():
        return PatchDataset(train, SIZE, augment=AugmentConfig(), seed=3)

    whole = student()
    full = fit(whole, build_loss("ce"), train_ds(), PatchDataset(val, SIZE), tmp_path / "whole", conf)

    def crash_after_first_epoch(event):
        if event["event"] == "epoch_end" and event["epoch"] == 0:
            raise Crash

    with pytest.raises(Crash):
        fit(student(), build_loss("ce"), train_ds(), PatchDataset(val, SIZE), tmp_path / "cut", conf,
            callback=crash_after_first_epoch)
    assert not (tmp_path / "cut" / "summary.json").exists()
    events = []
    resumed_model = student(seed=99)  # other initial weights: they must come from last.pt
    resumed = fit(resumed_model, build_loss("ce"), train_ds(), PatchDataset(val, SIZE), tmp_path / "cut",
                  conf, callback=events.append)
    assert events[0] == {"event": "resumed", "epoch": 1}
    assert [e["epoch"] for e in events if e["event"] == "epoch_start"] == [1]
    assert resumed.epochs_run == 2 and len(resumed.history) == 2
    # CPU, num_workers=0: the loop is deterministic, so the resumed run is bit-identical
    assert state_equal(whole, resumed_model)
    assert resumed.history == full.history
    assert (resumed.best_epoch, resumed.best_mcc) == (full.best_epoch, full.best_mcc)

    # resume=False starts afresh even though last.pt exists
    events = []
    fit(student(), build_loss("ce"), train_ds(), PatchDataset(val, SIZE), tmp_path / "cut",
        cfg(epochs=1, max_steps_per_epoch=1), callback=events.append, resume=False)
    assert events[0]["event"] == "epoch_start" and events[0]["epoch"] == 0


def test_resume_from_another_model_is_a_clear_error(tiny, tmp_path):
    _, train, val = tiny
    fit(student(), build_loss("ce"), PatchDataset(train, SIZE), PatchDataset(val, SIZE), tmp_path,
        cfg(epochs=1, max_steps_per_epoch=1))
    other = build_model("resnet18", input_size=SIZE)
    with pytest.raises(ValueError, match="last.pt does not continue this run"):
        fit(other, build_loss("ce"), PatchDataset(train, SIZE), PatchDataset(val, SIZE), tmp_path,
            cfg(epochs=2, max_steps_per_epoch=1))


def test_same_seed_same_weights_other_seed_other_weights(tiny, tmp_path):
    _, train, val = tiny
    init = student()
    models = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        models[name] = copy.deepcopy(init)
        fit(models[name], build_loss("ce"), PatchDataset(train, SIZE, augment=AugmentConfig(), seed=seed),
            PatchDataset(val, SIZE), tmp_path / name, cfg(epochs=1, seed=seed))
    assert state_equal(models["a"], models["b"])
    assert not state_equal(models["a"], models["c"])
    assert not state_equal(models["a"], init)


def test_workers_preload_and_train_like_the_main_process(tiny, tmp_path):
    _, train, val = tiny
    init = student()
    models, datasets = [], []
    for workers in (0, 1):
        ds = PatchDataset(train, SIZE, augment=AugmentConfig(), seed=2)
        models.append(copy.deepcopy(init))
        datasets.append(ds)
        fit(models[-1], build_loss("ce"), ds, PatchDataset(val, SIZE), tmp_path / str(workers),
            cfg(epochs=1, max_steps_per_epoch=2, num_workers=workers))
    assert len(datasets[1]._cache) == len(train)  # decoded in the parent before the workers forked
    assert len(datasets[0]._cache) == 16  # without workers: only the 2 x 8 images it loaded
    assert state_equal(models[0], models[1])


def test_empty_validation_set_is_refused(tiny, tmp_path):
    _, train, _ = tiny
    with pytest.raises(ValueError, match="no validation samples"):
        fit(student(), build_loss("ce"), PatchDataset(train, SIZE), PatchDataset([], SIZE), tmp_path, cfg())
    assert not (tmp_path / "last.pt").exists()


def test_kd_with_cache_fitnet_and_rkd(tiny, tmp_path):
    _, train, val = tiny
    teacher_net = student(seed=7)
    ensemble = TeacherEnsemble([teacher_net])
    calls = []
    real_forward_all = ensemble.forward_all
    ensemble.forward_all = lambda x: calls.append(len(x)) or real_forward_all(x)
    conf = cfg(epochs=1, max_steps_per_epoch=2, seed=5)
    init = student(seed=1)
    channels = dict(student_channels=init.feature_channels(), teacher_channels=teacher_net.feature_channels())

    def run_once(out, loss_name):
        model = copy.deepcopy(init)
        torch.manual_seed(11)
        loss = build_loss(loss_name, **channels)
        cache = TeacherCache(tmp_path / "cache.sqlite", ensemble.fingerprint())
        events = []
        fit(model, loss, PatchDataset(train, SIZE, augment=AugmentConfig(), seed=5), PatchDataset(val, SIZE),
            tmp_path / out, conf, teacher=ensemble, cache=cache, callback=events.append)
        cache.close()
        return model, loss, cache, [e["loss"] for e in events if e["event"] == "step"]

    torch.manual_seed(11)  # as in run_once: the adapter's initial weights
    adapter_before = build_loss("kd+fitnet", **channels).terms["fitnet"].adapter.weight.detach().clone()

    cold_model, cold_loss, cold, parts = run_once("cold", "kd+fitnet")
    assert (cold.hits, cold.misses) == (0, 16) and sum(calls) == 16
    assert all({"loss", "kd", "ce", "hint", "kd/loss", "fitnet/loss"} <= set(p) for p in parts)
    assert all(np.isfinite(v) for p in parts for v in p.values()) and parts[0]["hint"] > 0
    adapter_after = cold_loss.terms["fitnet"].adapter.weight.detach()
    assert not torch.equal(adapter_before, adapter_after)  # the adapter is trained (in the optimizer)
    last = torch.load(tmp_path / "cold" / "last.pt", map_location="cpu", weights_only=False)
    assert torch.equal(last["loss"]["terms.fitnet.adapter.weight"], adapter_after)

    # same data, same seed: every target comes from the cache and the teacher never runs
    calls.clear()
    warm_model, warm_loss, warm, _ = run_once("warm", "kd+fitnet")
    assert (warm.hits, warm.misses) == (16, 0) and calls == []
    # ... and training is the same whether the cache was cold or warm
    assert state_equal(cold_model, warm_model)
    assert torch.equal(adapter_after, warm_loss.terms["fitnet"].adapter.weight.detach())

    _, _, rkd_cache, parts = run_once("rkd", "kd+rkd")
    assert rkd_cache.misses == 0 and calls == []
    assert all({"loss", "kd", "ce", "rkd_distance", "rkd_angle", "rkd/loss"} <= set(p) for p in parts)
    assert all(np.isfinite(v) for p in parts for v in p.values())


def test_teacher_targets_from_cache_match_the_teacher(tiny, tmp_path):
    _, train, _ = tiny
    ensemble = TeacherEnsemble([student(seed=7)])
    ds = PatchDataset(train[:6], SIZE)
    images = torch.stack([ds[i]["image"] for i in range(6)])
    keys = [ds[i]["key"] for i in range(6)]
    direct = teacher_targets(ensemble, None, images, keys, "cpu")
    cache = TeacherCache(tmp_path / "c.sqlite", ensemble.fingerprint())
    teacher_targets(ensemble, cache, images[:2], keys[:2], "cpu")  # two of six cached
    mixed = teacher_targets(ensemble, cache, images, keys, "cpu")
    assert (cache.hits, cache.misses) == (2, 2 + 4)
    assert set(mixed) == {"logits", "features", "embedding"}
    # float32 logits: equal up to batch-size-dependent rounding of the convolutions
    assert torch.allclose(mixed["logits"], direct["logits"], rtol=1e-5, atol=1e-6)
    for f in ("features", "embedding"):  # float16 maps: close
        assert torch.allclose(mixed[f], direct[f], rtol=1e-2, atol=1e-3)
    logits_only = TeacherCache(tmp_path / "l.sqlite", ensemble.fingerprint(), store_features=False)
    teacher_targets(ensemble, logits_only, images[:2], keys[:2], "cpu")
    out = teacher_targets(ensemble, logits_only, images, keys, "cpu")
    assert set(out) == {"logits"} and torch.allclose(out["logits"], direct["logits"], rtol=1e-5, atol=1e-6)
    cache.close()
    logits_only.close()


def test_run_seeds_initial_weights_and_writes_records(tiny, tmp_path):
    root, _, _ = tiny
    base = RunConfig(data=DataConfig(root=str(root), input_size=SIZE, split=(0.6, 0.2, 0.2)),
                     model=ModelConfig(ARCH), loss=LossConfig(name="ce"),
                     train=cfg(epochs=1, max_steps_per_epoch=1, seed=4))
    summaries = []
    for name in ("a", "b"):
        torch.manual_seed(len(name) * 1000 + ord(name))  # whatever the global RNG holds before
        base.out = str(tmp_path / name)
        summaries.append(run(base))
    a, b = (load_classifier(tmp_path / n / "best.pt") for n in ("a", "b"))
    assert state_equal(a, b)
    assert summaries[0]["test"] == summaries[1]["test"]
    for name in ("config.yaml", "train.csv", "val.csv", "test.csv", "bad_files.json", "best.pt", "last.pt",
                 "summary.json"):
        assert (tmp_path / "a" / name).is_file(), name
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["arch"] == ARCH and summary["loss"] == "ce"
    assert summary["val"]["mcc"] == summary["best_val_mcc"]
    assert summary["test"]["n"] == sum(1 for _ in open(tmp_path / "a" / "test.csv")) - 1
