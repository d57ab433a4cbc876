"""``run_update``: the stages of a model update, in order, with resume (docs/design/update.md).

    read → split → adapt_teachers → teacher_outputs → distil → calibrate → export → gate → write

Every stage reports through a :class:`~distill.update.events.Reporter` (protocol events); a run
ends with exactly one ``result``, ``error`` or ``cancelled`` event, which ``run_update`` emits
itself before it returns the update record or raises the :class:`UpdateError`.

Files: the stages work in ``OUT/.work/`` (manifests, adapted teachers, the teacher-output cache,
the student's training state, the exported packages); only ``write`` puts files under their
final names in ``OUT`` (``NAME-VERSION.crackpkg``, ``-int8.crackpkg``, ``.pt``, ``.report.json``),
each atomically, ``update.json`` last. A cancelled or dead run leaves no package in ``OUT``.

Resume: ``OUT/.work/state.json`` records a fingerprint of the settings and of the data (content
hashes) and the stages done. A new run with the same fingerprint skips the training stages done
(``adapt_teachers``, ``teacher_outputs``, ``distil``, ``calibrate``; a training stage that died
continues from its last finished epoch) and always redoes ``export``, ``gate`` and ``write``
(so ``--override-gate`` or another ``--version`` on a finished run costs about a minute). Other
settings or other data: ``.work`` is cleared and the run starts afresh.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from inspector.update_protocol import STAGES

from distill.update import lineage as lin
from distill.update.config import UpdateConfig
from distill.update.errors import UpdateCancelled, UpdateDataError, UpdateError
from distill.update.events import Emit, Reporter

FORMAT = "crack-inspector-update/1"
TRAINING_STAGES = ("adapt_teachers", "teacher_outputs", "distil", "calibrate")


@dataclass
class Run:
    """What the stages hand each other."""

    cfg: UpdateConfig
    rep: Reporter
    out: Path
    work: Path
    state: dict = field(default_factory=dict)
    fp: dict = field(default_factory=dict)         # stage -> fingerprint of everything it depends on
    resumed: list = field(default_factory=list)
    base: object = None
    data: dict = field(default_factory=dict)       # name -> list[Sample]
    teachers: list = field(default_factory=list)   # checkpoints the student learns from
    version: str = ""
    threshold: dict | None = None
    report: dict = field(default_factory=dict)     # build_packages' report
    gate: dict = field(default_factory=dict)

    def done(self, stage: str) -> bool:
        """``stage`` was finished by an earlier run with the same inputs (its fingerprint)."""
        return self.state["done"].get(stage) == self.fp[stage]

    def skip_done(self, stage: str) -> None:
        self.resumed.append(stage)
        self.rep.skipped(stage, "done by an earlier run with the same settings and data")

    def begin(self, stage: str, folder: Path | None, detail: str | None = None) -> None:
        """Start a training stage: its folder is kept if an earlier run with the same inputs
        started it (training continues from its last finished epoch), else emptied."""
        self.rep.begin(stage, detail)
        if folder is not None and self.state["started"].get(stage) != self.fp[stage] and folder.exists():
            shutil.rmtree(folder)
        self.state["started"][stage] = self.fp[stage]
        _write_json(self.work / "state.json", self.state)

    def mark(self, stage: str) -> None:
        self.state["done"][stage] = self.fp[stage]
        _write_json(self.work / "state.json", self.state)


def _write_json(path: Path, doc: dict) -> None:
    from inspector.fsio import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: f.write((json.dumps(doc, indent=2, default=str) + "\n").encode()))


def _peek_base(path: str) -> dict:
    """name and version for the start event, before the base is validated."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            m = json.loads(zf.read("manifest.json"))
        return {"name": str(m["name"]), "version": str(m["version"])}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return {"name": Path(path).stem, "version": None}


def run_update(config: UpdateConfig, emit: Emit | None = None, *, reporter: Reporter | None = None) -> dict:
    """Run every stage; returns the update record (``update.json``). Emits the protocol events
    through ``emit`` (or ``reporter``), the final one included; raises UpdateError on failure."""
    rep = reporter or Reporter(emit)
    try:
        cfg = config.resolved()
    except UpdateError as exc:
        rep.send("error", message=str(exc), stage="read")
        raise
    run = Run(cfg, rep, Path(cfg.out), Path(cfg.out) / ".work")
    rep.send("start", base=_peek_base(cfg.base), out=str(run.out), stages=list(STAGES))
    try:
        import torch

        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
        for stage in STAGES:
            STAGE_FUNCTIONS[stage](run)
    except UpdateError as exc:
        exc.stage = exc.stage or rep.stage
        if isinstance(exc, UpdateCancelled):
            rep.send("cancelled", stage=exc.stage)
        else:
            rep.send("error", message=str(exc), stage=exc.stage)
        raise
    except Exception as exc:  # a bug or an unforeseen failure: still exactly one final event
        rep.send("error", message=f"{type(exc).__name__}: {exc}", stage=rep.stage)
        raise
    record = json.loads((run.out / "update.json").read_text())
    rep.send("result", update_json=str(run.out / "update.json"), promoted=record["promoted"],
             candidate={"version": run.version, **{k: str(run.out / record["candidate"][k])
                                                    for k in ("fp32", "int8", "checkpoint")}})
    return record


# ---------------------------------------------------------------------------------------- read


def stage_read(run: Run) -> None:
    from distill.update.base import find_base
    from distill.update.basedata import read_set
    from distill.update.sitedata import read_labelled, read_unlabelled, unlabelled_dir
    from distill.update.teachers import teacher_checkpoints

    cfg, rep = run.cfg, run.rep
    rep.begin("read")
    run.base = base = find_base(cfg.base)
    rep.log(f"base {base.name}-{base.version}: weights {base.checkpoint} (reproduce the package within "
            f"{base.weights_max_abs_diff:.1e}), tiling {base.tiling}")
    labelled = read_labelled(cfg.labelled, cfg.patch_size)
    folder = unlabelled_dir(cfg.unlabelled, cfg.labelled)
    unlabelled = read_unlabelled(folder, cfg.patch_size)
    golden = _read_named(read_set, cfg.golden, cfg.patch_size, "--golden")
    replay = _read_named(read_set, cfg.replay, cfg.patch_size, "--replay")
    golden_hashes = {s.sha256 for s in golden}
    for name, samples in (("--labelled", labelled), ("--unlabelled", unlabelled), ("--replay", replay)):
        if golden_hashes & {s.sha256 for s in samples}:
            raise UpdateDataError(f"{name} holds patches of the golden set: the gate's yardstick must stay unseen")
    run.data.update(labelled=labelled, unlabelled=unlabelled, golden=golden, replay_pool=replay)
    run.teachers = teacher_checkpoints(cfg.teachers) if cfg.recipe in ("full", "kd") else []
    _load_state(run)
    rep.done("read", f"{lin.counts(labelled)['patches']} labelled patches from {lin.counts(labelled)['sources']} "
                     f"sources, {len(unlabelled)} unlabelled ({folder or 'none'}), golden {len(golden)}, "
                     f"replay pool {len(replay)}")


def _read_named(reader, path, patch_size, flag):
    from distill.data.layouts import DatasetError

    try:
        samples = reader(path, patch_size)
    except (DatasetError, FileNotFoundError) as exc:
        raise UpdateDataError(f"{flag} {path}: {exc}") from None
    if not samples:
        raise UpdateDataError(f"{flag} {path}: no samples")
    return samples


# What each training stage depends on, besides the stages before it (fingerprints are chained).
STAGE_INPUTS = {
    "read": ("seed", "val_fraction", "patch_size", "max_unlabelled", "replay_ratio"),
    "adapt_teachers": ("recipe", "teacher_epochs", "teacher_layers", "teacher_lr", "batch_size", "max_steps"),
    "teacher_outputs": ("teacher_views",),
    "distil": ("epochs", "lr", "alpha", "temperature", "student_bn", "batch_size", "max_steps"),
    "calibrate": ("calibrate",),
}


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _fingerprints(run: Run) -> dict[str, str]:
    cfg, fields = run.cfg, run.cfg.fingerprint_fields()
    files = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in [*run.teachers, run.base.checkpoint]]
    data = [lin.digest(run.data[k]) for k in ("labelled", "unlabelled", "golden", "replay_pool")]
    fp, previous = {}, _digest(run.base.manifest.model_sha256, files, data)
    for stage, keys in STAGE_INPUTS.items():
        values = {k: fields[k] for k in keys}
        if stage == "teacher_outputs" and cfg.teacher_views == "per_epoch":
            values["epochs"] = cfg.epochs        # one teacher view per student epoch
        fp[stage] = previous = _digest(previous, stage, values)
    return fp


def _load_state(run: Run) -> None:
    run.fp = _fingerprints(run)
    state_file = run.work / "state.json"
    try:
        old = json.loads(state_file.read_text()) if state_file.is_file() else {}
    except ValueError:
        old = {}
    if old.get("format") != FORMAT or old.get("fp", {}).get("read") != run.fp["read"]:
        if run.work.exists():
            run.rep.log("other data or base than the earlier run in this folder: starting afresh")
            shutil.rmtree(run.work)
        old = {}
    run.work.mkdir(parents=True, exist_ok=True)
    run.state = {"format": FORMAT, "fp": run.fp, "started": old.get("started", {}), "done": old.get("done", {}),
                 "threshold": old.get("threshold")}
    reusable = [s for s in TRAINING_STAGES if run.done(s)]
    if reusable:
        run.rep.log(f"resuming: {', '.join(reusable)} done by an earlier run with the same inputs")
    _write_json(state_file, run.state)


# ---------------------------------------------------------------------------------------- split


def stage_split(run: Run) -> None:
    from distill.data.splits import source_unit, write_manifest
    from distill.update.sitedata import split_site, usable_unlabelled

    cfg, rep, d = run.cfg, run.rep, run.data
    rep.begin("split")
    adapt, val = split_site(d["labelled"], cfg.val_fraction, cfg.seed)
    unlabelled = usable_unlabelled(d["unlabelled"], d["labelled"], val, cfg.max_unlabelled, cfg.seed)
    pool = sorted(d["replay_pool"], key=lambda s: source_unit(cfg.seed, s.sha256, "replay"))
    site_train = adapt + unlabelled
    n_teacher, n_student = round(cfg.replay_ratio * len(adapt)), round(cfg.replay_ratio * len(site_train))
    if n_student > len(pool):
        rep.log(f"replay: {n_student} base patches wanted, the pool holds {len(pool)}; using all", "warning")
    d.update(adapt=adapt, val=val, unlabelled_used=unlabelled, site_train=site_train,
             replay_teachers=pool[:n_teacher], replay_student=pool[:n_student])
    for name in ("adapt", "val", "unlabelled_used", "replay_teachers", "replay_student"):
        write_manifest(run.work / "data" / f"{name}.csv", d[name])
    val_counts = lin.counts(val)
    if min(val_counts["crack"], val_counts["no_crack"]) == 0:
        rep.log(f"the site-validation part has only one class ({val_counts}): its MCC is 0 for any model and the "
                "site rule of the gate cannot pass; label frames with both crack and clean tiles", "warning")
    rep.done("split", f"adapt {len(adapt)} ({lin.counts(adapt)['sources']} sources), site validation {len(val)} "
                      f"({val_counts['sources']} sources), unlabelled {len(unlabelled)}, replay "
                      f"{n_teacher} (teachers) / {min(n_student, len(pool))} (student)")


# ------------------------------------------------------------------------------- adapt_teachers


def stage_adapt_teachers(run: Run) -> None:
    from distill.update.teachers import TeacherPlan, adapt_teacher

    cfg, rep = run.cfg, run.rep
    if cfg.recipe != "full":
        rep.skipped("adapt_teachers", {"kd": "recipe kd: the shipped teachers as they are",
                                       "finetune": "recipe finetune: no teachers",
                                       "threshold": "recipe threshold: no training"}[cfg.recipe])
        return
    folder = run.work / "teachers"
    adapted = [folder / f"{Path(p).stem}.pt" for p in run.teachers]
    if run.done("adapt_teachers") and all(p.is_file() for p in adapted):
        run.skip_done("adapt_teachers")
        run.teachers = adapted
        return
    run.begin("adapt_teachers", folder, f"{len(run.teachers)} teachers, layers {cfg.teacher_layers}, "
                                        f"{cfg.teacher_epochs} epochs")
    plan = TeacherPlan(cfg.teacher_epochs, cfg.teacher_lr, cfg.teacher_layers, cfg.batch_size, cfg.seed, cfg.max_steps)
    train = run.data["adapt"] + run.data["replay_teachers"]
    run.teachers = [p if p.is_file() else adapt_teacher(Path(src), train, run.data["val"], plan, folder, rep)
                    for src, p in zip(run.teachers, adapted)]
    run.mark("adapt_teachers")
    rep.done("adapt_teachers")


# ------------------------------------------------------------------------------ teacher_outputs


def _student_train_samples(run: Run) -> list:
    d = run.data
    if run.cfg.recipe == "finetune":
        return d["adapt"] + d["replay_teachers"]
    return d["site_train"] + d["replay_student"]


def _ensemble(run: Run):
    from distill.ensemble import TeacherEnsemble

    return TeacherEnsemble.from_checkpoints([str(p) for p in run.teachers], average="logits")


def stage_teacher_outputs(run: Run) -> None:
    from distill.update.student import open_cache, precompute_teacher_outputs, train_dataset

    cfg, rep = run.cfg, run.rep
    if cfg.recipe not in ("full", "kd"):
        rep.skipped("teacher_outputs", f"recipe {cfg.recipe}: no teachers")
        return
    if run.done("teacher_outputs"):
        run.skip_done("teacher_outputs")
        return
    run.begin("teacher_outputs", None)   # the cache is keyed by the teachers' weights: never stale
    ensemble = _ensemble(run)
    cache = open_cache(run.work / "teacher_cache.sqlite", ensemble)
    try:
        ds = train_dataset(_student_train_samples(run), _student_size(run), cfg.seed, cfg.teacher_views)
        stats = precompute_teacher_outputs(ensemble, cache, ds, cfg.epochs, rep)
    finally:
        cache.close()
    run.mark("teacher_outputs")
    rep.done("teacher_outputs", f"{stats['views']} views ({stats['cached']} already cached)")


def _student_size(run: Run) -> int:
    return run.base.manifest.input.size


# -------------------------------------------------------------------------------------- distil


def stage_distil(run: Run) -> None:
    from distill.checkpoint import save_checkpoint
    from distill.data.torch_dataset import PatchDataset
    from distill.update.student import StudentPlan, distil, open_cache, train_dataset

    cfg, rep = run.cfg, run.rep
    out = run.work / "student.pt"
    if cfg.recipe == "threshold":
        rep.skipped("distil", "recipe threshold: the base weights as they are")
        return
    if run.done("distil") and out.is_file():
        run.skip_done("distil")
        return
    run.begin("distil", run.work / "student", f"recipe {cfg.recipe}, {cfg.epochs} epochs")
    plan = StudentPlan(cfg.epochs, cfg.lr, cfg.alpha, cfg.temperature, cfg.batch_size, cfg.seed, cfg.max_steps,
                       freeze_bn=cfg.student_bn == "frozen")
    size = _student_size(run)
    ensemble = cache = None
    if cfg.recipe in ("full", "kd"):
        ensemble = _ensemble(run)
        cache = open_cache(run.work / "teacher_cache.sqlite", ensemble)
    try:
        model = distil(run.base.checkpoint, train_dataset(_student_train_samples(run), size, cfg.seed, cfg.teacher_views),
                       PatchDataset(run.data["val"], size), plan, run.work / "student", rep,
                       ensemble=ensemble, cache=cache)
    finally:
        if cache is not None:
            cache.close()
    model.meta.extra = {**model.meta.extra, "tiling": run.base.tiling}
    save_checkpoint(out, model, info={"recipe": cfg.recipe, "parent": f"{run.base.name}-{run.base.version}"})
    run.mark("distil")
    rep.done("distil")


# ----------------------------------------------------------------------------------- calibrate


def stage_calibrate(run: Run) -> None:
    from distill.checkpoint import load_classifier, save_checkpoint
    from distill.data.torch_dataset import PatchDataset
    from distill.train import predict
    from distill.update.threshold import ThresholdDecision, bake_threshold, decide

    cfg, rep = run.cfg, run.rep
    out = run.work / "candidate.pt"
    trained = run.work / "student.pt"
    source = trained if trained.is_file() else run.base.checkpoint
    if run.done("calibrate") and out.is_file():
        run.threshold = run.state.get("threshold")
        run.skip_done("calibrate")
        return
    run.begin("calibrate", None)
    model = load_classifier(source).float()
    if cfg.calibrate:
        size = model.meta.input_size
        val_p, val_y = predict(model, PatchDataset(run.data["val"], size))
        rep.check()
        gold_p, gold_y = predict(model, PatchDataset(run.data["golden"], size))
        decision = decide(val_y, val_p[:, 1], gold_y, gold_p[:, 1])
        if decision.adopted:
            bake_threshold(model, decision.threshold, crack_index=model.meta.label_names.index("crack"))
    else:
        decision = ThresholdDecision(False, 0.5, None, None, reason="switched off (calibrate=False)")
    run.threshold = decision.to_dict()
    model.meta.extra = {**model.meta.extra, "tiling": run.base.tiling, "threshold": run.threshold}
    save_checkpoint(out, model, info={"recipe": cfg.recipe, "parent": f"{run.base.name}-{run.base.version}",
                                      "threshold": run.threshold})
    run.state["threshold"] = run.threshold
    run.mark("calibrate")
    rep.done("calibrate", decision.reason if not decision.adopted else f"adopted: {decision.reason}")


# -------------------------------------------------------------------------------------- export


def stage_export(run: Run) -> None:
    from distill.edge import build_packages
    from distill.update.gate import GOLDEN, SITE_VAL

    cfg, rep, d, base = run.cfg, run.rep, run.data, run.base
    run.version = cfg.version or lin.next_version(base.version)
    rep.begin("export", f"{base.name}-{run.version}, tiling {base.tiling}")
    work = run.work / "export"
    if work.exists():
        shutil.rmtree(work)
    calibration = d["site_train"] + d["replay_student"] if d["replay_student"] else d["site_train"] + d["replay_teachers"]
    run.report = build_packages(
        run.work / "candidate.pt", work, name=base.name, version=run.version, calibration=calibration,
        eval_sets={GOLDEN: d["golden"], SITE_VAL: d["val"]}, training_data=[dict(t) for t in base.manifest.training_data],
        parent_version=base.version, tiling=base.tiling, seed=cfg.seed, on_step=lambda name: rep.check())
    rep.done("export", f"INT8 vs FP32 on the golden set: agreement {run.report['quantization']['top1_agreement']:.4f}")


# ---------------------------------------------------------------------------------------- gate


def stage_gate(run: Run) -> None:
    from distill.edge import uint8_patches
    from distill.quantize import int8_drift
    from distill.update.gate import DRIFT_SITE_IMAGES, GOLDEN, SITE_VAL, evaluate_base, judge
    from inspector.package import load_package

    cfg, rep, d = run.cfg, run.rep, run.data
    rep.begin("gate")
    base_metrics = evaluate_base(run.base, {GOLDEN: d["golden"], SITE_VAL: d["val"]}, rep.check)
    rep.check()
    onnx = {}
    for variant, path in run.report["packages"].items():
        onnx[variant] = run.work / "gate" / f"{variant}.onnx"
        onnx[variant].parent.mkdir(parents=True, exist_ok=True)
        onnx[variant].write_bytes(load_package(path).onnx_bytes)
    images = uint8_patches(d["golden"] + d["val"] + d["site_train"][:DRIFT_SITE_IMAGES], _student_size(run))
    drift = int8_drift(onnx["fp32"], onnx["int8"], images)
    result = judge(base_metrics, run.report["metrics"], drift)
    promoted = result.passed or cfg.override_gate
    override = None
    if cfg.override_gate:
        override = {"by": cfg.pushed_by, "reason": cfg.confirm, "failed": result.failed(),
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        rep.log(f"gate overridden by {cfg.pushed_by}: {cfg.confirm!r} (failed rules: {result.failed() or 'none'})",
                "warning")
    run.gate = {**result.to_dict(), "promoted": promoted, "override": override}
    rep.send("gate", passed=result.passed, rules=result.rules, metrics=result.metrics)
    rep.done("gate", "passed" if result.passed else f"failed: {', '.join(result.failed())}")


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
                        "teacher_views": c.teacher_views, "batch_norm": c.student_bn}}


def stage_write(run: Run) -> None:
    cfg, rep, base, d = run.cfg, run.rep, run.base, run.data
    rep.begin("write")   # the last cancel check: from here on the run finishes (renames only)
    record = lin.data_record(cfg, d["labelled"], d["adapt"], d["val"], d["unlabelled_used"],
                             d["replay_student"] or d["replay_teachers"], d["golden"])
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
    _write_json(run.out / names["report"], {**run.report, "packages": {k: names[k] for k in ("fp32", "int8")}})
    doc = {
        "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "promoted": promoted,
        "gate": run.gate, "override": run.gate["override"],
        "base": {"name": base.name, "version": base.version, "fp32": str(base.fp32_path),
                 "int8": None if base.int8_path is None else str(base.int8_path), "checkpoint": str(base.checkpoint),
                 "model_sha256": base.manifest.model_sha256},
        "candidate": {"name": base.name, "version": run.version, **names, "tiling": base.tiling},
        "data": record, "recipe": recipe, "threshold": run.threshold, "pushed_by": cfg.pushed_by,
        "resumed": run.resumed,
        "timings_s": rep.timings,
    }
    rep.done("write")
    doc["timings_s"] = rep.timings
    _write_json(run.out / "update.json", doc)


STAGE_FUNCTIONS = {"read": stage_read, "split": stage_split, "adapt_teachers": stage_adapt_teachers,
                   "teacher_outputs": stage_teacher_outputs, "distil": stage_distil, "calibrate": stage_calibrate,
                   "export": stage_export, "gate": stage_gate, "write": stage_write}
