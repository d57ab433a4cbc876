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

import json
import os
from pathlib import Path

from inspector.update.protocol import STAGES

from distill.update import lineage as lin
from distill.update.config import UpdateConfig
from distill.update.errors import UpdateCancelled, UpdateDataError, UpdateError
from distill.update.events import Emit, Reporter
from distill.update.release import stage_export, stage_gate, stage_write
from distill.update.run import Run, load_state
from distill.update.training import stage_adapt_teachers, stage_calibrate, stage_distil, stage_teacher_outputs


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
    from distill.update.sitedata import label_source_counts

    rep.send("start", base=_peek_base(cfg.base), out=str(run.out), stages=list(STAGES),
             label_sources=label_source_counts(cfg.labelled) or None)
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
    if record["promoted"]:
        _drop_work(run)
    rep.send("result", update_json=str(run.out / "update.json"), promoted=record["promoted"],
             candidate={"version": run.version, **{k: str(run.out / record["candidate"][k])
                                                    for k in ("fp32", "int8", "checkpoint")}})
    return record


def _drop_work(run: Run) -> None:
    """A promoted candidate needs nothing more from ``.work`` (adapted teachers, teacher outputs,
    export scratch: ~0.7 GB on the shipped ensemble), so it goes; a refused run keeps it, so an
    ``--override-gate`` re-run in the same folder resumes in seconds instead of retraining."""
    import shutil

    shutil.rmtree(run.work, ignore_errors=True)
    run.rep.log(f"promoted: removed the working files in {run.work}")


# ---------------------------------------------------------------------------------------- read


def stage_read(run: Run) -> None:
    from distill.update.base import find_base
    from distill.update.basedata import read_set
    from distill.update.sitedata import label_source_counts, read_labelled, read_unlabelled, unlabelled_dir
    from distill.update.teachers import teacher_checkpoints

    cfg, rep = run.cfg, run.rep
    rep.begin("read")
    run.base = base = find_base(cfg.base)
    rep.log(f"base {base.name}-{base.version}: weights {base.checkpoint} (reproduce the package within "
            f"{base.weights_max_abs_diff:.1e}), tiling {base.tiling}")
    labelled = read_labelled(cfg.labelled, cfg.patch_size)
    folder = unlabelled_dir(cfg.unlabelled, cfg.labelled)
    unlabelled = read_unlabelled(folder, cfg.patch_size)
    golden = _read_named(lambda p, size: read_set(p, size, verify=True), cfg.golden, cfg.patch_size, "--golden")
    replay = _read_named(read_set, cfg.replay, cfg.patch_size, "--replay")
    golden_hashes = {s.sha256 for s in golden}
    for name, samples in (("--labelled", labelled), ("--unlabelled", unlabelled), ("--replay", replay)):
        if golden_hashes & {s.sha256 for s in samples}:
            raise UpdateDataError(f"{name} holds patches of the golden set: the gate's yardstick must stay unseen")
    run.data.update(labelled=labelled, unlabelled=unlabelled, golden=golden, replay_pool=replay)
    run.label_sources = label_source_counts(cfg.labelled, labelled)
    run.teachers = teacher_checkpoints(cfg.teachers) if cfg.recipe in ("full", "kd") else []
    load_state(run)
    rep.done("read", f"{lin.counts(labelled)['patches']} labelled patches from {lin.counts(labelled)['sources']} "
                     f"sources, {len(unlabelled)} unlabelled ({folder or 'none'}), golden {len(golden)}, "
                     f"replay pool {len(replay)}; labels given by "
                     f"{', '.join(f'{k} {v}' for k, v in run.label_sources.items())}")


def _read_named(reader, path, patch_size, flag):
    from distill.data.layouts import DatasetError

    try:
        samples = reader(path, patch_size)
    except (DatasetError, FileNotFoundError) as exc:
        raise UpdateDataError(f"{flag} {path}: {exc}") from None
    if not samples:
        raise UpdateDataError(f"{flag} {path}: no samples")
    return samples


# ---------------------------------------------------------------------------------------- split


def stage_split(run: Run) -> None:
    from distill.data.splits import source_unit, write_manifest
    from distill.update.sitedata import split_site, usable_unlabelled

    cfg, rep, d = run.cfg, run.rep, run.data
    rep.begin("split")
    adapt, val, split = split_site(d["labelled"], cfg.val_fraction, cfg.seed)   # refuses before training
    run.split = split.to_dict()
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
    rep.done("split", f"adapt {len(adapt)} ({lin.counts(adapt)['sources']} sources), site validation {len(val)} "
                      f"({val_counts['sources']} sources), unlabelled {len(unlabelled)}, replay "
                      f"{n_teacher} (teachers) / {min(n_student, len(pool))} (student)")


STAGE_FUNCTIONS = {"read": stage_read, "split": stage_split, "adapt_teachers": stage_adapt_teachers,
                   "teacher_outputs": stage_teacher_outputs, "distil": stage_distil, "calibrate": stage_calibrate,
                   "export": stage_export, "gate": stage_gate, "write": stage_write}
