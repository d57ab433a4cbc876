"""A model update seen from the app: what goes in, the ``distill update`` command, its events,
its verdict, and going live on a device. Plain Python (no Qt, no torch): the update dialog
(:mod:`inspector.qt.update.view`) and the tests drive it.

The update itself runs in its own process (``distill update``, torch stays out of the app's
window); it reports JSON-lines events (:mod:`inspector.update.protocol`), which
:class:`UpdateState` folds into what the dialog shows: stage states, progress, the loss and
validation-MCC curves per epoch, the gate verdict, the result. :func:`update_command` is the one
place the command line is built, so a bundle can swap in its own ``distill`` executable
(:func:`distill_program`).

Going live on a device: :func:`deploy_to_device` signs and uploads the INT8 candidate, activates
it (the agent answers only after the model passed its first live inferences, or rolls back by
itself and says why) and then polls the device's status until it reports that very model
(name, version, sha256) in service with frames flowing (:func:`wait_until_live`).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from inspector.update import protocol as U
from inspector.errors import InspectorError

DISTILL_ENV = "CRACK_DISTILL"          # a `distill` executable to use instead of `python -m distill.cli`
LIVE_TIMEOUT_S = 60.0                  # after activation: how long to wait for the device to report it live
LIVE_POLL_S = 0.5

# The time estimate (seconds): a simple model of distill update's stages, from a measured run on
# the 2-core laptop (update.json "timings_s"); an estimate, and the dialog says so.
EST_FIXED_S = 90.0                     # read, calibrate, export (ONNX + INT8 + checks), gate (golden set), write
EST_TEACHER_OUTPUT_S_PER_TILE = 0.06   # the three teachers' outputs per tile (site and replay)
EST_TEACHER_S_PER_TILE_EPOCH = 0.06    # adapting the three teachers, per tile and epoch
EST_STUDENT_S_PER_TILE_EPOCH = 0.015   # one student step per tile and epoch
EST_EPOCHS, EST_TEACHER_EPOCHS = 3, 4  # distill update's defaults (--fast: 1 and 2, 500 unlabelled tiles)
REPLAY_RATIO = 0.5                     # base patches replayed per site patch (the job's default)


class ModelUpdateError(InspectorError, RuntimeError):
    """An update could not be prepared, run or deployed; the message says what and why."""


# ---------------------------------------------------------------------------- what goes in

@dataclass(frozen=True)
class BaseModel:
    """The model an update starts from: its ``name`` and ``version``, the package ``path`` on
    this laptop (None: the device runs a model this laptop does not have), ``where`` it runs
    ("this laptop" or the device's name) and ``note`` (why another base was chosen)."""

    name: str
    version: str
    sha256: str
    path: Path | None
    where: str
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


@dataclass(frozen=True)
class UpdatePlan:
    """What an update will use: ``review`` (:class:`~inspector.store.database.ReviewCounts`), ``patches``
    (:func:`~inspector.store.export.count_export` with unreviewed frames), the ``base`` model,
    ``device`` (the paired device's name, or None) and ``estimate_s``."""

    review: Any
    patches: dict[str, int]
    base: BaseModel
    device: str | None
    estimate_s: float
    split: "SiteSplit | None" = None     # the site-validation part the job will hold out (same rule)

    @property
    def labelled_tiles(self) -> int:
        return self.patches["crack"] + self.patches["no_crack"]

    @property
    def missing(self) -> tuple[str, ...]:
        """What the reviewed data lack for an update that could be promoted (empty: nothing)."""
        return self.split.missing if self.split is not None else ()

    @property
    def unlabelled_tiles(self) -> int:
        return self.patches["unlabelled"]


def make_plan(store, laptop_manifest, laptop_package: str | os.PathLike | None, *, pairing=None,
              history=None, fast: bool = False, seed: int = 0) -> UpdatePlan:
    """Count what the store gives and choose the base model: the paired device's active model when
    a device is connected and this laptop has its package, else the laptop's own model (the
    ``note`` says why). Reads the store and the device: call it off the GUI thread."""
    from inspector.store.export import count_export

    review = store.counts()
    patches = count_export(store, include_unreviewed=True)
    m = laptop_manifest
    laptop = BaseModel(m.name, m.version, m.model_sha256, Path(laptop_package) if laptop_package else None,
                       "this laptop")
    base, device = laptop, None
    if pairing is not None:
        device = pairing.agent_name
        base = _device_base(pairing, laptop, history)
    est = estimate_seconds(patches["crack"] + patches["no_crack"], patches["unlabelled"], fast=fast)
    split = site_split(store_units(store), seed=seed)
    return UpdatePlan(review, patches, base, device, est, split)


def _device_base(pairing, laptop: BaseModel, history) -> BaseModel:
    from inspector.link.client import DeviceClient, DeviceError

    try:
        status = DeviceClient.from_pairing(pairing).status()
    except DeviceError as exc:
        return _replace_note(laptop, f"{pairing.agent_name} did not answer ({exc}): starting from this laptop's model")
    model = status.model or {}
    if not model:
        return _replace_note(laptop, f"{status.agent_name} runs no model: starting from this laptop's model")
    name, version, sha = str(model.get("name")), str(model.get("version")), str(model.get("sha256"))
    if (name, version, sha) == (laptop.name, laptop.version, laptop.sha256):
        return BaseModel(name, version, sha, laptop.path, status.agent_name)
    known = history.find(name, version) if history is not None else None
    for path in (known.int8, known.fp32) if known is not None else ():
        if path and Path(path).is_file() and read_manifest(path).get("model_sha256") == sha:
            return BaseModel(name, version, sha, Path(path), status.agent_name)
    return _replace_note(laptop, f"{status.agent_name} runs {name} {version}, which this laptop does not have: "
                                 f"starting from this laptop's model")


def _replace_note(base: BaseModel, note: str) -> BaseModel:
    return BaseModel(base.name, base.version, base.sha256, base.path, base.where, note)


def estimate_seconds(labelled_tiles: int, unlabelled_tiles: int, *, fast: bool = False) -> float:
    """A rough duration of ``distill update`` on this machine: fixed stages, then the teachers'
    adaptation and outputs and the student's epochs over the reviewed, unlabelled and replayed tiles."""
    epochs, teacher_epochs = (1, 2) if fast else (EST_EPOCHS, EST_TEACHER_EPOCHS)
    unlabelled = min(unlabelled_tiles, 500) if fast else unlabelled_tiles
    replay = REPLAY_RATIO * labelled_tiles
    site = labelled_tiles + replay
    return (EST_FIXED_S + EST_TEACHER_S_PER_TILE_EPOCH * site * teacher_epochs
            + EST_TEACHER_OUTPUT_S_PER_TILE * (site + unlabelled) + EST_STUDENT_S_PER_TILE_EPOCH * (site + unlabelled)
            * epochs)


def replay_tiles(labelled_tiles: int) -> int:
    """About how many base patches the job replays (its default ratio; it chooses them)."""
    return round(REPLAY_RATIO * labelled_tiles)


# ---------------------------------------------------------------------------- the site-validation split
# One definition for the app's plan and for ``distill update`` (distill/update/sitedata.py calls
# it), so the plan dialog says before Start exactly what the job will find.

SITE_VAL_FRACTION = 0.3                # of each stratum's sources (distill update's --val-fraction default)
SITE_MIN_PER_CLASS = 5                 # crack and clean patches the site-validation part must hold


@dataclass(frozen=True)
class SiteSplit:
    """The labelled sources (frames) cut into *adapt* and *site-validation*, with the counts and,
    in ``missing``, what keeps an update from being promotable (empty: nothing)."""

    adapt: tuple[str, ...]
    val: tuple[str, ...]
    val_crack: int
    val_clean: int
    adapt_crack: int
    adapt_clean: int
    missing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.missing

    def to_dict(self) -> dict:
        return {"adapt_sources": len(self.adapt), "val_sources": len(self.val), "val_crack": self.val_crack,
                "val_clean": self.val_clean, "adapt_crack": self.adapt_crack, "adapt_clean": self.adapt_clean,
                "missing": list(self.missing)}


def _source_rank(seed: int, source: str) -> tuple[float, str]:
    import hashlib

    digest = hashlib.sha256(f"site-val:{seed}:{source}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64, source


def site_split(units: dict[str, tuple[int, int]], *, val_fraction: float = SITE_VAL_FRACTION, seed: int = 0,
               min_per_class: int = SITE_MIN_PER_CLASS) -> SiteSplit:
    """Cut labelled sources into adapt / site-validation, stratified by class.

    ``units``: source → (crack patches, clean patches). The rule (deterministic, independent of
    the order of ``units``):

    1. strata: *crack sources* (at least one crack patch) and *clean sources* (clean patches only);
       within a stratum the sources are ranked by sha256("site-val:<seed>:<source>");
    2. a stratum of n ≥ 2 sources gives its first k = min(n − 1, max(1, round(val_fraction · n)))
       to site validation; a lone source stays in adapt (training needs it too);
    3. top-up: while site validation holds fewer than ``min_per_class`` crack patches and the crack
       stratum keeps ≥ 2 sources in adapt, its next source moves over; then the same for clean
       patches, from the clean stratum first, then the crack stratum (crack frames have clean
       tiles); each stratum always keeps at least one source in adapt.

    So site validation is never empty for a class that has ≥ 2 sources. ``missing`` says what to
    label when it holds fewer than ``min_per_class`` patches of a class, or adapt none of a class.
    """
    crack = sorted((s for s, (c, _) in units.items() if c > 0), key=lambda s: _source_rank(seed, s))
    clean = sorted((s for s, (c, n) in units.items() if c == 0 and n > 0), key=lambda s: _source_rank(seed, s))

    def initial(stratum: list[str]) -> int:
        n = len(stratum)
        return 0 if n < 2 else min(n - 1, max(1, round(val_fraction * n)))

    taken = {"crack": initial(crack), "clean": initial(clean)}
    strata = {"crack": crack, "clean": clean}

    def val_count(index: int) -> int:
        return sum(units[s][index] for name in strata for s in strata[name][:taken[name]])

    for index, order in ((0, ("crack",)), (1, ("clean", "crack"))):
        for name in order:
            while val_count(index) < min_per_class and len(strata[name]) - taken[name] >= 2:
                taken[name] += 1
    val = tuple(s for name in ("crack", "clean") for s in strata[name][:taken[name]])
    adapt = tuple(s for name in ("crack", "clean") for s in strata[name][taken[name]:])
    vc, vn = val_count(0), val_count(1)
    ac, an = sum(units[s][0] for s in adapt), sum(units[s][1] for s in adapt)
    missing = []
    if vc < min_per_class or ac == 0:
        missing.append(_missing_crack(units, crack, min_per_class))
    if vn < min_per_class or an == 0:
        with_clean = [s for s in units if units[s][1] > 0]
        n = _frames_needed(units, with_clean, 1, min_per_class)
        missing.append(f"label at least {n} more {'frame' if n == 1 else 'frames'} with clean tiles: the site-validation part would hold {vn} clean tiles (at least "
                       f"{min_per_class} needed) and the training part {an}")
    return SiteSplit(adapt, val, vc, vn, ac, an, tuple(missing))


def _frames_needed(units, stratum: list[str], index: int, need: int) -> int:
    """More frames like the median one of ``stratum`` needed for ``need`` patches of class
    ``index`` in site validation plus one frame left for training (at least 1)."""
    per = sorted(units[s][index] for s in stratum if units[s][index] > 0)
    typical = per[len(per) // 2] if per else 1
    return max(1, -(-need // typical) + 1 - len(per))


def _missing_crack(units, crack: list[str], need: int) -> str:
    n = _frames_needed(units, crack, 0, need)
    return (f"label at least {n} more {'frame' if n == 1 else 'frames'} with a crack tile: {len(crack)} "
            f"{'frame' if len(crack) == 1 else 'frames'} with crack tiles "
            f"({sum(units[s][0] for s in crack)} crack tiles) cannot give the site-validation part "
            f"{need} crack tiles and keep one frame for training")


def store_units(store) -> dict[str, tuple[int, int]]:
    """source ("flag:<uid>", as ``distill`` names a flag export's sources) → (crack, clean) tiles
    that an export of ``store`` labels."""
    try:
        from inspector.store.export import _patch_labels
    except ImportError:               # pragma: no cover - the export's own rule, if it is renamed
        _patch_labels = _tile_labels_of
    from inspector.store.query import FlagFilter

    units = {}
    for rec in store.query(FlagFilter(), sort="time", descending=False):
        # the export's rule: a label per tile, or (label, label_source) per tile; None: left out
        labels = [x[0] if isinstance(x, tuple) else x for x in (_patch_labels(rec, False) or ())]
        c, n = sum(x == "crack" for x in labels), sum(x == "no_crack" for x in labels)
        if c or n:
            units[f"flag:{rec.uid}"] = (c, n)
    return units


def _tile_labels_of(rec, include_unreviewed: bool):
    if rec.label in ("crack", "no_crack"):
        if rec.tile_labels is not None:
            return rec.tile_labels
        return ("no_crack",) * len(rec.tiles) if rec.label == "no_crack" else None
    return None


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def read_manifest(path: str | os.PathLike) -> dict:
    """A package's manifest.json without loading the model (cheap: for lists and lineage)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("manifest.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelUpdateError(f"{path}: not a readable model package ({exc})") from None


def training_base(package: str | os.PathLike) -> Path:
    """The package to pass as ``--base``: an INT8 package's FP32 parent when it lies beside it
    (``NAME-PARENT.crackpkg``; training starts from float weights), else the package itself."""
    package = Path(package)
    m = read_manifest(package)
    if (m.get("quantization") or {}).get("type") == "int8-qdq" and m.get("parent_version"):
        parent = package.with_name(f"{m['name']}-{m['parent_version']}.crackpkg")
        if parent.is_file():
            return parent
    return package


def distill_program() -> list[str]:
    """How to start ``distill``: ``$CRACK_DISTILL`` (a bundle's own executable), a ``distill``
    beside a frozen app's executable, else this interpreter with ``-m distill.cli`` (a checkout)."""
    env = os.environ.get(DISTILL_ENV)
    if env:
        return [env]
    if getattr(sys, "frozen", False):
        beside = Path(sys.executable).with_name("distill" + (".exe" if os.name == "nt" else ""))
        if beside.is_file():
            return [str(beside)]
        found = shutil.which("distill")
        if found:
            return [found]
    return [sys.executable, "-m", "distill.cli"]


def update_command(base: str | os.PathLike, labelled: str | os.PathLike, out: str | os.PathLike, *,
                   unlabelled: str | os.PathLike | None = None, seed: int | None = None, fast: bool = False,
                   override_reason: str | None = None, pushed_by: str | None = None,
                   extra: list[str] | None = None, program: list[str] | None = None) -> list[str]:
    """The ``distill update`` command line (argv), the one place it is built."""
    cmd = [*(program or distill_program()), "update", "--base", str(base), "--labelled", str(labelled),
           "--out", str(out)]
    if unlabelled is not None:
        cmd += ["--unlabelled", str(unlabelled)]
    if seed is not None:
        cmd += ["--seed", str(int(seed))]
    if fast:
        cmd.append("--fast")
    if override_reason:
        cmd += ["--override-gate", "--confirm", override_reason]
    if pushed_by:
        cmd += ["--pushed-by", pushed_by]
    return cmd + list(extra or ())


# ---------------------------------------------------------------------------- the events

@dataclass
class UpdateState:
    """What the events of one run said so far (:meth:`apply` each event in order).

    ``stages``: name → "pending" | "running" | "done" | "skipped" | "failed" | "cancelled";
    ``curves``: model ("student", "teacher:<arch>") → [(epoch, loss, val_mcc or None)];
    ``outcome``: "running", then "passed", "failed" (the gate said no), "error" or "cancelled".
    """

    stages: dict[str, str] = field(default_factory=lambda: {s: "pending" for s in U.STAGES})
    stage_detail: dict[str, str] = field(default_factory=dict)
    base: dict | None = None
    out: str | None = None
    current: str | None = None
    progress: tuple[int, int] | None = None          # (done, total) of the current stage
    eta_s: float | None = None
    epochs: dict[str, int] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float, float | None]]] = field(default_factory=dict)
    logs: list[tuple[str, str]] = field(default_factory=list)
    gate: dict | None = None
    result: dict | None = None
    error: str | None = None
    cancelled_at: str | None = None
    started: float = field(default_factory=time.monotonic)

    def apply(self, event: dict) -> None:
        kind = event["event"]
        getattr(self, f"_on_{kind}")(event)

    # each event kind ------------------------------------------------------------------
    def _on_start(self, e: dict) -> None:
        self.base, self.out = e["base"], e["out"]
        self.stages = {str(s): "pending" for s in e["stages"]}

    def _on_stage(self, e: dict) -> None:
        name, status = e["stage"], e["status"]
        self.stages[name] = {"start": "running", "done": "done", "skipped": "skipped"}[status]
        if e.get("detail"):
            self.stage_detail[name] = str(e["detail"])
        if status == "start":
            self.current, self.progress, self.eta_s = name, None, None

    def _on_progress(self, e: dict) -> None:
        self.current = e["stage"]
        if self.stages.get(self.current) == "pending":
            self.stages[self.current] = "running"
        self.progress = (int(e["done"]), max(1, int(e["total"])))
        eta = e.get("eta_s")
        self.eta_s = float(eta) if isinstance(eta, (int, float)) and math.isfinite(eta) else None

    def _on_epoch(self, e: dict) -> None:
        val = e.get("val_mcc")
        point = (int(e["epoch"]), float(e["loss"]), float(val) if isinstance(val, (int, float)) else None)
        self.curves.setdefault(str(e["model"]), []).append(point)
        self.epochs[str(e["model"])] = int(e["epochs"])

    def _on_log(self, e: dict) -> None:
        self.logs.append((e["level"], str(e["message"])))

    def _on_gate(self, e: dict) -> None:
        self.gate = e

    def _on_result(self, e: dict) -> None:
        self.result = e

    def _on_error(self, e: dict) -> None:
        self.error = str(e["message"])
        stage = e.get("stage") or self.current
        if stage in self.stages:
            self.stages[stage] = "failed"

    def _on_cancelled(self, e: dict) -> None:
        self.cancelled_at = e["stage"]
        for name, state in self.stages.items():
            if state == "running":
                self.stages[name] = "cancelled"

    # derived -------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None or self.cancelled_at is not None

    @property
    def outcome(self) -> str:
        if self.cancelled_at is not None:
            return "cancelled"
        if self.error is not None:
            return "error"
        if self.result is not None:
            return "passed" if self.gate_passed else "failed"
        return "running"

    @property
    def gate_passed(self) -> bool:
        return bool(self.gate and self.gate.get("passed"))

    @property
    def promoted(self) -> bool:
        return bool(self.result and self.result.get("promoted"))

    def failed_rules(self) -> list[dict]:
        return [r for r in (self.gate or {}).get("rules", []) if isinstance(r, dict) and not r.get("passed")]

    def fraction(self) -> float:
        """Share of the whole job done: finished stages plus the current stage's progress."""
        names = list(self.stages)
        if not names:
            return 0.0
        finished = sum(s in ("done", "skipped") for s in self.stages.values())
        part = 0.0
        if self.current in self.stages and self.stages[self.current] == "running" and self.progress:
            done, total = self.progress
            part = min(1.0, done / total)
        return min(1.0, (finished + part) / len(names))

    def time_left(self, now: float | None = None) -> tuple[float | None, str]:
        """(seconds, how it was reckoned): the job's own ETA for the current stage when it gives
        one, else the elapsed time scaled by the share still to do."""
        if self.eta_s is not None:
            return self.eta_s, f"left in {self.current}"
        frac = self.fraction()
        if frac <= 0.02:
            return None, "left"
        elapsed = (time.monotonic() if now is None else now) - self.started
        return elapsed * (1 - frac) / frac, "left (from the time so far)"


def parse_output_line(line: str) -> tuple[dict | None, str | None]:
    """(event, None) for an event line, (None, text) for any other line worth logging
    (a library's print, or an event that breaks the schema: said so), (None, None) for blank."""
    try:
        event = U.parse_line(line)
    except U.UpdateProtocolError as exc:
        return None, f"not a valid update event ({exc}): {line.strip()[:300]}"
    if event is not None:
        return event, None
    text = line.strip()
    return None, (text or None)


# ---------------------------------------------------------------------------- the verdict

# Metric rows of the before/after table, in order, with what the app calls them.
# MCC is what the gate judges, F1 the number inspectors know; sets measured on the candidate only
# (INT8 vs FP32) show their own numbers.
TABLE_METRICS = (("mcc", "MCC"), ("f1", "F1"), ("agreement", "agreement"))


def read_update_json(out_dir: str | os.PathLike) -> dict | None:
    """``OUT/update.json`` (the job's record: gate verdict, metrics, lineage), or None."""
    path = Path(out_dir) / "update.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ModelUpdateError(f"{path}: cannot read the update record ({exc})") from None


def gate_of(record: dict | None) -> dict | None:
    """The gate verdict ({passed, rules, metrics}) inside an update.json, wherever it sits."""
    if not isinstance(record, dict):
        return None
    gate = record.get("gate")
    if isinstance(gate, dict) and "rules" in gate:
        return gate
    if "rules" in record and "passed" in record:
        return record
    return None


def comparison_rows(gate: dict | None) -> list[tuple[str, str, float | None, float | None]]:
    """Rows (set, metric, base, candidate) of the before/after table from a gate's ``metrics``:
    every set (golden set, site validation, INT8 agreement, ...), the metrics of
    :data:`TABLE_METRICS` that either side reports, numbers or None."""
    rows = []
    metrics = (gate or {}).get("metrics") or {}
    for set_name, sides in metrics.items():
        if not isinstance(sides, dict):
            continue
        base = sides.get("base") if isinstance(sides.get("base"), dict) else {}
        cand = sides.get("candidate") if isinstance(sides.get("candidate"), dict) else {}
        if not base and not cand and any(isinstance(v, (int, float)) for v in sides.values()):
            cand = sides                     # a set measured on the candidate only (e.g. INT8 agreement)
        keys = [k for k, _ in TABLE_METRICS if k in base or k in cand]
        if not base:
            keys += [k for k in cand if k not in keys and k != "n" and isinstance(cand[k], (int, float))][:2]
        for k in keys:
            rows.append((str(set_name), dict(TABLE_METRICS).get(k, k.replace("_", " ")), _num(base.get(k)),
                         _num(cand.get(k))))
    return rows


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def rule_text(rule: dict) -> str:
    """``name: detail`` (the job's own words, with its numbers), else ``name value (limit L)``."""
    name = str(rule.get("name", "rule"))
    if rule.get("detail"):
        return f"{name}: {rule['detail']}"
    value, limit = rule.get("value"), rule.get("limit")
    return f"{name} {_fmt(value)} (limit {_fmt(limit)})" if value is not None or limit is not None else name


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------- going live on a device

class NotLiveError(ModelUpdateError):
    """The model is active on the device but no frame of its camera has been computed by it:
    activated, not live (the message says the camera's state)."""


def wait_until_live(client, name: str, version: str, sha256: str, *, timeout: float = LIVE_TIMEOUT_S,
                    poll: float = LIVE_POLL_S, progress: Callable[..., None] | None = None):
    """Poll ``client.status()`` until the device reports model ``name`` ``version`` (``sha256``)
    in service **and** frames of its camera computed by that model and passed by the agent's
    live check (``model_frames``/``model_checked``: counted from the swap, so the old model's
    frames never count); the :class:`~inspector.link.protocol.Status`.

    ModelUpdateError if another model is in service after an auto-rollback, or after ``timeout``;
    :class:`NotLiveError` when the model is in service but the camera delivers no frames (a camera
    neither live nor connecting), which is "activated", never "live"."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        status = client.status()
        model = status.model or {}
        ours = model.get("name") == name and model.get("version") == version and model.get("sha256") == sha256
        camera = status.camera if isinstance(status.camera, dict) else {}
        state = camera.get("state")
        if ours and status.model_checked and status.model_frames > 0:
            return status
        if ours and state not in ("live", "connecting"):
            raise NotLiveError(f"{name} {version} is active on {status.agent_name}, but its camera is {state} "
                               f"({camera.get('message') or 'no message'}): no frame computed by it yet, so it "
                               f"is not live")
        rolled = [e for e in status.events if e.get("kind") == "auto-rollback" and f"{name}-{version}" in
                  str(e.get("message", ""))]
        if rolled and not ours:
            raise ModelUpdateError(f"{status.agent_name} rolled {name} {version} back: {rolled[-1].get('message')}")
        if progress is not None and (model.get("version"), status.model_frames) != last:
            last = (model.get("version"), status.model_frames)
            progress("waiting", f"{status.agent_name}: {model.get('name', '?')} {model.get('version', '?')} "
                                f"in service, {status.model_frames} frames computed by it, {status.fps:.1f} fps")
        if time.monotonic() > deadline:
            seen = f"{status.model_frames} frames computed by it" if ours else \
                f"in service: {model.get('name', 'none')} {model.get('version', '')}"
            raise ModelUpdateError(f"{status.agent_name} did not report {name} {version} live on checked frames "
                              f"within {timeout:.0f} s ({seen}; camera {state})")
        time.sleep(poll)


def deploy_to_device(pairing, signing_key, package: str | os.PathLike, *, timeout: float = LIVE_TIMEOUT_S,
                     progress: Callable[..., None] | None = None):
    """Sign, upload (skipped if the device already stores this very version), activate ``package``
    on the paired device, then wait until it reports it live. Returns (ModelInfo, Status)."""
    from inspector.link.client import DeviceClient, DeviceError

    client = DeviceClient.from_pairing(pairing)

    def uploaded(sent: int, total: int) -> None:
        if progress is not None:
            progress("upload", sent, total)

    info, _ = client.install(package, signing_key, uploaded, activate=False)

    def activating(act) -> None:
        if progress is not None:
            progress("activating", f"{pairing.agent_name}: {act.message} ({act.state}, {act.elapsed_s:.0f} s)")

    try:  # polls the device's status: a first TensorRT build takes minutes on a Jetson Nano
        client.activate(info.id, progress=activating)
    except DeviceError as exc:
        raise ModelUpdateError(f"{pairing.agent_name} did not take {info.name} {info.version}: {exc}") from exc
    if progress is not None:
        progress("activated", f"{info.id} activated on {pairing.agent_name}; waiting for it to run live")
    status = wait_until_live(client, info.name, info.version, info.sha256, timeout=timeout,
                             progress=None if progress is None else lambda *a: progress(*a))
    return info, status
