"""Runs: from a ``RunConfig`` to a trained, evaluated checkpoint with its records on disk.

A run folder holds::

    config.yaml          the resolved configuration
    train.csv val.csv test.csv   the split manifests (path, label, source, surface, box, sha256)
    bad_files.json       files that were converted or skipped while reading the data
    best.pt last.pt      best model by validation MCC; full training state for resume
    summary.json         validation and test metrics, timings, parameter count, size
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from distill.config import RunConfig, write_resolved
from distill.data.imageio import BadFileReport, BadImageError, decode_rgb
from distill.data.layouts import DatasetError, read_dataset
from distill.data.patches import PatchRule
from distill.data.samples import Sample
from distill.data.splits import read_manifest, split_by_source, subsample_labels, write_manifest


def patch_rule_of(cfg) -> PatchRule:
    return PatchRule(size=cfg.patch_size, stride=cfg.patch_stride)


def read_samples(path, *, layout: str = "auto", patch_rule: PatchRule | None = None,
                 report: BadFileReport | None = None, source_rule: str = "block:50") -> list[Sample]:
    """Samples of a dataset folder in any supported layout, or of a manifest CSV."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_checked_manifest(path)
    return read_dataset(path, layout=layout, patch_rule=patch_rule or PatchRule(),
                        source_rule=source_rule, report=report)


def read_checked_manifest(*paths) -> list[Sample] | tuple[list[Sample], ...]:
    """The samples of manifest CSVs whose every image exists, decodes and holds its box
    (one path: its list; several: a tuple of lists).

    A folder is checked as it is read (bad files skipped and reported); a manifest is a promise
    that its files are good, so a broken one is refused **before** training starts, naming the
    files of every manifest given, rather than failing an epoch into the run. Each image is
    decoded once.
    """
    lists = [read_manifest(path) for path in paths]
    problems = [f"{path}: {len(bad)} of the images it lists cannot be used:\n" + "\n".join(bad)
                for path, samples in zip(paths, lists) if (bad := _unusable_images(samples))]
    if problems:
        raise DatasetError("\n".join(problems) + "\nfix the files or remove their rows before training")
    return lists[0] if len(lists) == 1 else tuple(lists)


def _unusable_images(samples: list[Sample], limit: int = 20) -> list[str]:
    """``"  path: why"`` for each image of ``samples`` that cannot be used (``limit`` shown)."""
    bad: dict[str, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for sample in samples:
        if sample.path not in sizes and sample.path not in bad:
            try:
                image, _ = decode_rgb(sample.path)
                sizes[sample.path] = (image.shape[1], image.shape[0])
            except BadImageError as err:
                bad[sample.path] = str(err)
            except OSError as err:
                bad[sample.path] = f"cannot read it ({err.strerror or err})"
        if sample.box is not None and sample.path in sizes:
            (w, h), (x0, y0, x1, y1) = sizes[sample.path], sample.box
            if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
                bad.setdefault(sample.path, f"box {sample.box} is outside the {w}x{h} image")
    lines = [f"  {path}: {why}" for path, why in list(bad.items())[:limit]]
    return lines + ([f"  ... and {len(bad) - limit} more"] if len(bad) > limit else [])


def prepare_splits(cfg: RunConfig, out_dir: Path, report: BadFileReport, *,
                   write: bool = True) -> dict[str, list[Sample]]:
    """Train/val/test samples from manifests or a split of ``data.root``; written as manifests
    to ``out_dir`` unless ``write`` is False."""
    d = cfg.data
    if d.train_manifest:
        if not d.val_manifest:
            raise ValueError("data.train_manifest needs data.val_manifest too")
        given = [m for m in (d.train_manifest, d.val_manifest, d.test_manifest) if m]
        train, val, *test = read_checked_manifest(*given)
        splits = {"train": train, "val": val, "test": test[0] if test else []}
    elif d.root:
        samples = read_samples(d.root, layout=d.layout, patch_rule=patch_rule_of(d), report=report,
                               source_rule=d.source_rule)
        splits = split_by_source(samples, fractions=d.split, seed=d.split_seed)
    else:
        raise ValueError("no data: set data.root or data.train_manifest/val_manifest")
    if d.label_fraction < 1.0:
        splits["train"] = subsample_labels(splits["train"], d.label_fraction, seed=d.split_seed)
    if write:
        for name, samples in splits.items():
            write_manifest(out_dir / f"{name}.csv", samples)
    return splits


def model_size_mb(model) -> float:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6


def run(cfg: RunConfig, callback: Callable[[dict], None] | None = None, resume: bool = True) -> dict:
    """Train (teacher: loss "ce") or distil (student with teachers) as ``cfg`` says."""
    from distill.training.cache import TeacherCache
    from distill.models.checkpoint import load_classifier
    from distill.data.augment import AugmentConfig
    from distill.data.torch_dataset import PatchDataset
    from distill.models.ensemble import TeacherEnsemble
    from distill.training.losses import build_loss, needs_teacher
    from distill.models.registry import build_model
    from distill.training.loop import evaluate, fit, seed_everything

    # Under torchrun every rank runs this; only rank 0 writes the run's records.
    main = int(os.environ.get("RANK", "0")) == 0
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if main:
        write_resolved(cfg, out / "config.yaml")
    report = BadFileReport()
    splits = prepare_splits(cfg, out, report, write=main)
    if main:
        report.to_json(out / "bad_files.json")
    if len(report) and callback and main:
        callback({"event": "bad_files", "summary": report.summary()})

    size = cfg.data.input_size
    # The seed decides the initial weights too (student and FitNet adapter), the same on every rank.
    seed_everything(cfg.train.seed)
    student = build_model(cfg.model.arch, input_size=size, pretrained=cfg.model.pretrained)
    teacher = cache = None
    if needs_teacher(cfg.loss.name):
        if not cfg.teachers:
            raise ValueError(f"loss {cfg.loss.name!r} needs teachers: give teacher checkpoints")
        teacher = TeacherEnsemble.from_checkpoints(cfg.teachers, average=cfg.ensemble_average)
        if tuple(teacher.label_names) != tuple(student.meta.label_names):
            raise ValueError(f"teachers label {teacher.label_names}, student {student.meta.label_names}")
        cache_path = cfg.cache or str(out / "teacher_cache.sqlite")
        cache = TeacherCache(cache_path, teacher.fingerprint())
    t_channels = teacher.members[teacher.hint_member].feature_channels() if teacher is not None else None
    loss = build_loss(cfg.loss.name, temperature=cfg.loss.temperature, alpha=cfg.loss.alpha,
                      hint_weight=cfg.loss.hint_weight, rkd_distance_weight=cfg.loss.rkd_distance_weight,
                      rkd_angle_weight=cfg.loss.rkd_angle_weight,
                      student_channels=student.feature_channels(), teacher_channels=t_channels)

    augment = AugmentConfig() if cfg.data.augment else None
    train_ds = PatchDataset(splits["train"], size, augment=augment, seed=cfg.train.seed)
    val_ds = PatchDataset(splits["val"], size)
    t0 = time.perf_counter()
    try:
        result = fit(student, loss, train_ds, val_ds, out, cfg.train, teacher=teacher, cache=cache,
                     callback=callback, resume=resume, info={"loss": cfg.loss.name})
    finally:
        if cache is not None:
            cache.close()
    train_seconds = time.perf_counter() - t0
    summary = {
        "arch": cfg.model.arch, "loss": cfg.loss.name, "seed": cfg.train.seed,
        "train_samples": len(splits["train"]), "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
        "best_val_mcc": result.best_mcc, "train_seconds": round(train_seconds, 1),
        "params": sum(p.numel() for p in student.parameters()), "size_mb": round(model_size_mb(student), 2),
    }
    if cache is not None:
        summary["teacher_cache"] = {"hits": cache.hits, "misses": cache.misses}
    best_val = [h["val"] for h in result.history if h["epoch"] == result.best_epoch]
    if best_val:
        summary["val"] = best_val[0]
    if not main:
        return summary
    best = load_classifier(out / "best.pt")
    if splits.get("test"):
        summary["test"] = evaluate(best, PatchDataset(splits["test"], size)).to_dict()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


PACKAGE_SUFFIX = ".crackpkg"


def evaluate_model_path(model_path, data_path, *, layout: str = "auto", patch_rule: PatchRule | None = None,
                        batch_size: int = 128, source_rule: str = "block:50") -> dict:
    """Every metric of a model on a dataset folder or manifest; JSON-ready.

    ``model_path`` is a checkpoint (run by PyTorch) or a ``.crackpkg`` model package (FP32 or
    INT8, run by onnxruntime on the same uint8 patches): the same samples, the same numbers.
    """
    is_package = Path(model_path).suffix == PACKAGE_SUFFIX
    if is_package:
        from inspector.edge.package import load_package

        package = load_package(model_path)  # first: a bad model fails before a long read
        manifest = package.manifest
        arch, size, kind = manifest.architecture, manifest.input.size, manifest.quantization.type
    else:
        from distill.models.checkpoint import load_classifier

        model = load_classifier(model_path)
        arch, size, kind = model.meta.arch, model.meta.input_size, "checkpoint"
    if not Path(data_path).exists():
        raise FileNotFoundError(f"no dataset folder or manifest at {data_path}")
    report = BadFileReport()
    samples = read_samples(data_path, layout=layout, patch_rule=patch_rule, report=report,
                           source_rule=source_rule)
    if not samples:
        raise ValueError(f"no usable images in {data_path}")
    if is_package:
        from distill.export.package import evaluate_package

        metrics = evaluate_package(package, samples)
    else:
        from distill.data.torch_dataset import PatchDataset
        from distill.training.loop import evaluate

        metrics = evaluate(model, PatchDataset(samples, size), batch_size=batch_size).to_dict()
    return {"model": str(model_path), "data": str(data_path), "arch": arch, "kind": kind,
            "input_size": size, "metrics": metrics,
            "bad_files": [vars(e) if not isinstance(e, dict) else e for e in report.entries]}
