"""The last stages of a model update: ``export`` (FP32 + INT8 packages with the parent's tiling),
``gate`` (``gate.py``'s rules) and ``write`` (final packages with their lineage, the checkpoint,
the report and ``update.json``, each atomically, ``update.json`` last). Always redone, so an
override or another version costs about a minute on a finished run."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from distill.update import lineage as lin
from distill.update.run import FORMAT, Run, write_json
from distill.update.training import student_input_size

# -------------------------------------------------------------------------------------- export


def stage_export(run: Run) -> None:
    from distill.export.package import build_packages
    from distill.update.gate import GOLDEN, SITE_VAL

    cfg, rep, d, base = run.cfg, run.rep, run.data, run.base
    run.version = cfg.version or lin.next_version(base.version)
    rep.begin("export", f"{base.name}-{run.version}, tiling {base.tiling}")
    work = run.work / "export"
    if work.exists():
        shutil.rmtree(work)
    calibration = d["site_train"] + d["replay_student"]   # INT8 ranges from what the model will see and saw
    run.report = build_packages(
        run.work / "candidate.pt", work, name=base.name, version=run.version, calibration=calibration,
        eval_sets={GOLDEN: d["golden"], SITE_VAL: d["val"]}, training_data=[dict(t) for t in base.manifest.training_data],
        parent_version=base.version, tiling=base.tiling, seed=cfg.seed, on_step=lambda name: rep.check())
    rep.done("export", f"INT8 vs FP32 on the golden set: agreement {run.report['quantization']['top1_agreement']:.4f}")


# ---------------------------------------------------------------------------------------- gate


def stage_gate(run: Run) -> None:
    from distill.export.package import uint8_patches
    from distill.export.quantize import int8_drift
    from distill.update.gate import DRIFT_SITE_IMAGES, GOLDEN, SITE_VAL, evaluate_base, judge
    from inspector.edge.package import load_package

    cfg, rep, d = run.cfg, run.rep, run.data
    rep.begin("gate")
    _verify_golden(run)
    base_metrics = evaluate_base(run.base, {GOLDEN: d["golden"], SITE_VAL: d["val"]}, rep.check)
    rep.check()
    onnx = {}
    for variant, path in run.report["packages"].items():
        onnx[variant] = run.work / "gate" / f"{variant}.onnx"
        onnx[variant].parent.mkdir(parents=True, exist_ok=True)
        onnx[variant].write_bytes(load_package(path).onnx_bytes)
    images = uint8_patches(d["golden"] + d["val"] + d["site_train"][:DRIFT_SITE_IMAGES], student_input_size(run))
    drift = int8_drift(onnx["fp32"], onnx["int8"], images)
    rep.check()
    site = _site_evidence(run, onnx["fp32"])
    result = judge(base_metrics, run.report["metrics"], drift, site)
    promoted = result.passed or cfg.override_gate
    override = None
    if cfg.override_gate:
        override = {"by": cfg.pushed_by, "reason": cfg.confirm, "failed": result.failed(),
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        rep.log(f"gate overridden by {cfg.pushed_by}: {cfg.confirm!r} (failed rules: {result.failed() or 'none'})",
                "warning")
    run.gate = {**result.to_dict(), "promoted": promoted, "override": override}
    rep.send("gate", passed=result.passed, verdict=result.verdict, rules=result.rules, metrics=result.metrics)
    rep.done("gate", "passed" if result.passed else
             f"{result.verdict.replace('_', ' ')}: {', '.join(result.failed())}")


def _verify_golden(run: Run) -> None:
    """The golden set's pixels against their hashes, each time the gate reads it."""
    from distill.data.layouts import DatasetError
    from distill.update.basedata import verify_samples
    from distill.update.errors import UpdateDataError

    try:
        verify_samples(run.data["golden"], "golden set")
    except DatasetError as exc:
        raise UpdateDataError(f"--golden {run.cfg.golden}: {exc}; the gate's yardstick must not change") from None


def _site_evidence(run: Run, candidate_onnx: Path) -> dict:
    """Base and cross-fitted candidate predictions on site validation (FP32 packages), then
    ``gate.site_evidence``; the candidate's baked threshold is undone first, so each fold is
    predicted at the threshold the calibrate rule picks on the other folds."""
    import numpy as np

    from distill.export.package import onnx_session, run_onnx, uint8_patches
    from distill.update.gate import crossfit, site_evidence, unbake
    from inspector.edge.package import load_package

    d = run.data
    base_pkg = load_package(run.base.fp32_path)
    labels = list(base_pkg.manifest.labels)
    crack = labels.index("crack") if "crack" in labels else len(labels) - 1
    y = np.array([s.label for s in d["val"]])
    base_p = run_onnx(onnx_session(base_pkg.onnx_bytes), uint8_patches(d["val"], base_pkg.manifest.input.size))["probs"]
    run.rep.check()
    size = student_input_size(run)
    cand = onnx_session(candidate_onnx)
    cand_p = run_onnx(cand, uint8_patches(d["val"], size))["probs"][:, crack]
    run.rep.check()
    gold_p = run_onnx(cand, uint8_patches(d["golden"], size))["probs"][:, crack]
    th = run.threshold or {}
    t = float(th.get("threshold", 0.5)) if th.get("adopted") else 0.5
    fit = crossfit(y, [s.source for s in d["val"]], unbake(cand_p, t), np.array([s.label for s in d["golden"]]),
                   unbake(gold_p, t))
    out = site_evidence(y, (base_p[:, crack] >= 0.5).astype(np.int64), fit["pred"])
    out["crossfit"] = {"folds": fit["folds"], "shipped_threshold": t,
                       "rule": "each fold of site validation (sources, stratified by class) predicted at the "
                               "threshold the calibrate rule picks on the other fold; the base at its own 0.5"}
    return out


# --------------------------------------------------------------------------------------- write


def _copy_atomic(src: Path, dst: Path) -> None:
    from inspector.fsio import write_atomic

    with open(src, "rb") as fin:
        write_atomic(dst, lambda f: shutil.copyfileobj(fin, f))


def _recipe(run: Run) -> dict:
    c = run.cfg
    return {"name": c.recipe, "seed": c.seed, "patch_size": c.patch_size, "val_fraction": c.val_fraction,
            "replay_ratio": c.replay_ratio, "max_unlabelled": c.max_unlabelled,
            "teachers": {"members": [Path(p).name for p in run.teachers], "adapted": c.recipe == "full",
                         "layers": c.teacher_layers, "epochs": c.teacher_epochs, "lr": c.teacher_lr},
            "student": {"init": f"{run.base.name}-{run.base.version} weights", "epochs": c.epochs, "lr": c.lr,
                        "batch_size": c.batch_size, "loss": "Hinton KD (all samples) + CE (labelled)",
                        "alpha": c.alpha if c.recipe in ("full", "kd") else 0.0, "temperature": c.temperature,
                        "teacher_views": c.teacher_views, "batch_norm": c.student_bn,
                        "input_size": student_input_size(run), "lwf": {"replay": c.lwf, "site": c.lwf_site},
                        "weight_mix": run.state.get("weight_mix") if c.weight_mix == "auto" and c.recipe != "threshold"
                                      else None}}


def _replay_used(run: Run) -> list:
    """The base patches the candidate's student saw (the teachers' share is in the recipe)."""
    recipe, d = run.cfg.recipe, run.data
    return [] if recipe == "threshold" else d["replay_teachers"] if recipe == "finetune" else d["replay_student"]


def stage_write(run: Run) -> None:
    cfg, rep, base, d = run.cfg, run.rep, run.base, run.data
    rep.begin("write")   # the last cancel check: from here on the run finishes (renames only)
    record = lin.data_record(cfg, d["labelled"], d["adapt"], d["val"], d["unlabelled_used"],
                             _replay_used(run), d["golden"])
    record["site"]["label_source"] = dict(run.label_sources)
    record["site"]["split"] = {**run.split, "rule": "stratified by class over sources (inspector.update.plan."
                                                    "site_split): crack sources and clean sources ranked by hash, "
                                                    f"{cfg.val_fraction:g} of each to site validation, topped up "
                                                    "to 5 patches per class, one source per stratum kept for training"}
    record["golden"]["digest"] = lin.digest(d["golden"])
    recipe = _recipe(run)
    promoted = run.gate["promoted"]
    lineage = lin.lineage(base, record, recipe, run.threshold, run.gate, promoted=promoted,
                          override=run.gate["override"], pushed_by=cfg.pushed_by)
    training = lin.training_data(base.manifest, record)
    stem = f"{base.name}-{run.version}"
    names = {"fp32": f"{stem}.crackpkg", "int8": f"{stem}-int8.crackpkg", "checkpoint": f"{stem}.pt",
             "report": f"{stem}.report.json"}
    for variant in ("fp32", "int8"):
        lin.finalize_package(run.report["packages"][variant], run.out / names[variant], training=training,
                             lineage_record=lineage)
    _copy_atomic(run.work / "candidate.pt", run.out / names["checkpoint"])
    write_json(run.out / names["report"], {**run.report, "packages": {k: names[k] for k in ("fp32", "int8")}})
    doc = {
        "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "promoted": promoted,
        "gate": run.gate, "override": run.gate["override"],
        "base": {"name": base.name, "version": base.version, "fp32": str(base.fp32_path),
                 "int8": None if base.int8_path is None else str(base.int8_path), "checkpoint": str(base.checkpoint),
                 "model_sha256": base.manifest.model_sha256},
        "candidate": {"name": base.name, "version": run.version, **names, "tiling": base.tiling},
        "data": record, "recipe": recipe, "pushed_by": cfg.pushed_by,
        "threshold": {**(run.threshold or {}),
                      "chosen_on": "site validation (all of it) for the shipped candidate",
                      "judged_on": "cross-fitted: the gate predicts each half of site validation at the threshold "
                                   "chosen on the other half (gate.site_validation.crossfit), never on the frames "
                                   "a threshold was tuned on"},
        "resumed": run.resumed,
        "timings_s": rep.timings,
    }
    rep.done("write")
    doc["timings_s"] = rep.timings
    write_json(run.out / "update.json", doc)
