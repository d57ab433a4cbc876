"""The state a model update carries from stage to stage, and what makes a re-run resume.

``OUT/.work/state.json`` holds a fingerprint per stage, chained: ``read`` covers the content
hashes of the site data, the golden and replay sets, and the weights of the base and the
teachers; each training stage adds the settings it depends on (:data:`STAGE_INPUTS`). A stage
whose fingerprint matches the one recorded as done is skipped; one recorded as started keeps its
folder (the trainer continues from its ``last.pt``); otherwise its folder is emptied first.
Another base or other data (``read`` differs) clears ``.work``.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from distill.update import lineage as lin
from distill.update.config import UpdateConfig
from distill.update.events import Reporter

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
    label_sources: dict = field(default_factory=dict)   # how the labelled patches were labelled: counts
    split: dict = field(default_factory=dict)           # the site split's counts (inspector.update.plan.SiteSplit)

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
        write_json(self.work / "state.json", self.state)

    def mark(self, stage: str) -> None:
        self.state["done"][stage] = self.fp[stage]
        write_json(self.work / "state.json", self.state)


def write_json(path: Path, doc: dict) -> None:
    from inspector.fsio import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: f.write((json.dumps(doc, indent=2, default=str) + "\n").encode()))


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


def load_state(run: Run) -> None:
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
                 "threshold": old.get("threshold"), "weight_mix": old.get("weight_mix")}
    reusable = [s for s in TRAINING_STAGES if run.done(s)]
    if reusable:
        run.rep.log(f"resuming: {', '.join(reusable)} done by an earlier run with the same inputs")
    write_json(state_file, run.state)
