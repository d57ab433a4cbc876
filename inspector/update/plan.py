"""A model update seen from the app, before it starts: what goes in. Plain Python (no Qt, no torch).

:func:`make_plan` counts what the flag store gives, chooses the base model (the paired device's
when this laptop has its package) and estimates the duration; :func:`site_split` is the one rule
that cuts the reviewed frames into adapt and site validation, shared with ``distill update``, so
the plan says before Start what the job will find. :class:`ModelUpdateError` is the root of the
update's errors (:mod:`inspector.update.job`, :mod:`inspector.update.deploy`).
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inspector.errors import InspectorError

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
    """What an update will use: ``review`` (:class:`~inspector.store.query.ReviewCounts`), ``patches``
    (:func:`~inspector.store.export.count_export` with unreviewed frames), the ``base`` model,
    ``device`` (the paired device's name, or None) and ``estimate_s``."""

    review: Any
    patches: dict[str, int]
    base: BaseModel
    device: str | None
    estimate_s: float
    split: "SiteSplit | None" = None     # the site-validation part the job will hold out (same rule)
    estimate_basis: str = "an estimate from the counts"   # what it rests on (machine_factor)
    job: "JobCounts | None" = None       # the tiles the job will use, by its rules
    base_held_out: "tuple[float, int] | None" = None   # (MCC, tiles) of the base on the held-out part

    @property
    def base_already_high(self) -> bool:
        """The base already scores so well on the held-out reviewed tiles that the gate can hardly
        see a gain there (a field trial's update was refused after an hour: 0.950 → 0.950)."""
        return self.base_held_out is not None and self.base_held_out[0] >= BASE_HIGH_MCC

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
    factor, basis = machine_factor(history)
    est = estimate_seconds(patches["crack"] + patches["no_crack"], patches["unlabelled"], fast=fast, factor=factor)
    units, unlabelled, verdicts = store_sources(store)
    split = site_split(units, seed=seed)
    return UpdatePlan(review, patches, base, device, est, split, basis, job_counts(split, unlabelled, fast=fast),
                      base_on_held_out(split, verdicts, base))


def _device_base(pairing, laptop: BaseModel, history) -> BaseModel:
    from inspector.link.client import DeviceClient
    from inspector.link.connection import DeviceError

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


def estimate_seconds(labelled_tiles: int, unlabelled_tiles: int, *, fast: bool = False,
                     factor: float = 1.0) -> float:
    """A rough duration of ``distill update``: fixed stages, then the teachers' adaptation and
    outputs and the student's epochs over the reviewed, unlabelled and replayed tiles, on the
    reference laptop, times ``factor`` (this machine's: :func:`machine_factor`)."""
    epochs, teacher_epochs = (1, 2) if fast else (EST_EPOCHS, EST_TEACHER_EPOCHS)
    unlabelled = min(unlabelled_tiles, 500) if fast else unlabelled_tiles
    return factor * _model_seconds(labelled_tiles, unlabelled, epochs, teacher_epochs)


FACTOR_RANGE = (0.25, 4.0)   # a last run outside this (a suspended laptop, a stopped job) says nothing


def machine_factor(history) -> tuple[float, str]:
    """How much longer than the reference laptop this machine takes: the newest finished update
    in ``history`` whose ``update.json`` is at hand, its measured stage times over what the model
    says for its own tiles and epochs (1.0 without one). Returns (factor, what it rests on)."""
    for version in reversed(history.updates() if history is not None else []):
        try:
            record = json.loads(Path(version.update_json).read_text())
            site, student = record["data"]["site"], record["recipe"]["student"]
            took = sum(float(v) for v in record["timings_s"].values())
            model = _model_seconds(int(site["labelled"]["patches"]), int(site["unlabelled"]["patches"]),
                                   int(student["epochs"]), int(record["recipe"]["teachers"]["epochs"]))
        except (OSError, TypeError, KeyError, ValueError):
            continue
        if record.get("resumed") or not model > 0:
            continue          # a resumed run skipped stages: its time is not the machine's
        factor = took / model
        if FACTOR_RANGE[0] <= factor <= FACTOR_RANGE[1]:
            return factor, (f"an estimate from the counts, scaled ×{factor:.2f} by this laptop's last update "
                            f"({version.key}, {took / 60:.0f} min)")
    return 1.0, "an estimate from the counts for a reference 2-core laptop; this laptop's first update calibrates it"


def _model_seconds(labelled_tiles: int, unlabelled: int, epochs: int, teacher_epochs: int) -> float:
    replay = REPLAY_RATIO * labelled_tiles
    site = labelled_tiles + replay
    return (EST_FIXED_S + EST_TEACHER_S_PER_TILE_EPOCH * site * teacher_epochs
            + EST_TEACHER_OUTPUT_S_PER_TILE * (site + unlabelled) + EST_STUDENT_S_PER_TILE_EPOCH * (site + unlabelled)
            * epochs)


MAX_UNLABELLED, MAX_UNLABELLED_FAST = 3000, 500   # distill update's caps (--max-unlabelled, --fast)
BASE_HIGH_MCC = 0.9   # the base's MCC on the held-out reviewed tiles above which the plan warns
VERDICT_THRESHOLD = 0.5


def base_on_held_out(split: "SiteSplit", verdicts: dict, base: BaseModel) -> tuple[float, int] | None:
    """(MCC, tiles) of ``base`` on the reviewed tiles the job will hold out, from the verdicts the
    flags were stored with, for the flags ``base`` itself made (None when it made none of them):
    roughly what the gate's "before" column will say on the site."""
    pairs = [p for src in split.val if src in verdicts and verdicts[src][0] == f"{base.name} {base.version}"
             for p in verdicts[src][1]]
    if not pairs:
        return None
    tp = sum(lab == "crack" and p >= VERDICT_THRESHOLD for lab, p in pairs)
    tn = sum(lab == "no_crack" and p < VERDICT_THRESHOLD for lab, p in pairs)
    fp = sum(lab == "no_crack" and p >= VERDICT_THRESHOLD for lab, p in pairs)
    fn = len(pairs) - tp - tn - fp
    d = float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return ((tp * tn - fp * fn) / math.sqrt(d) if d > 0 else 0.0), len(pairs)


@dataclass(frozen=True)
class JobCounts:
    """The tiles ``distill update`` will train on, by its own rules (distill/update/pipeline.py
    ``stage_split``): ``adapt`` (reviewed tiles not held out), ``unlabelled`` (without the held-out
    frames' tiles, capped), base patches replayed for the teachers (``replay_teachers``: the ratio
    per adapt tile) and for the student (``replay_student``: per adapt + unlabelled tile). The
    job caps the unlabelled tiles by whole frames, so it may use a few fewer."""

    adapt: int
    unlabelled: int
    replay_teachers: int
    replay_student: int


def job_counts(split: "SiteSplit", unlabelled_by_source: dict[str, int], *, fast: bool = False) -> JobCounts:
    adapt = split.adapt_crack + split.adapt_clean
    held_out = set(split.val)
    unlabelled = sum(n for src, n in unlabelled_by_source.items() if src not in held_out)
    unlabelled = min(unlabelled, MAX_UNLABELLED_FAST if fast else MAX_UNLABELLED)
    return JobCounts(adapt, unlabelled, round(REPLAY_RATIO * adapt), round(REPLAY_RATIO * (adapt + unlabelled)))


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


def store_sources(store) -> tuple[dict[str, tuple[int, int]], dict[str, int], dict[str, tuple[str, list]]]:
    """Per source ("flag:<uid>", as ``distill`` names a flag export's sources) of an export with
    the unreviewed frames (what Update model exports), by the export's own tile rule: (crack,
    clean) labelled tiles; unlabelled tiles; and the verdicts (the flag's model as "name
    version", [(person's label, the model's crack probability)] per labelled tile)."""
    from inspector.store.export import UNLABELLED, _patch_labels
    from inspector.store.query import FlagFilter

    units, unlabelled, verdicts = {}, {}, {}
    for rec in store.query(FlagFilter(), sort="time", descending=False):
        labels = [label for label, _ in _patch_labels(rec, True)]     # None: left out
        c, n, u = (sum(x == kind for x in labels) for kind in ("crack", "no_crack", UNLABELLED))
        source = f"flag:{rec.uid}"
        if c or n:
            units[source] = (c, n)
            verdicts[source] = (f"{rec.model.name} {rec.model.version}", [
                (x, float(t["crack_prob"])) for x, t in zip(labels, rec.tiles) if x in ("crack", "no_crack")])
        if u:
            unlabelled[source] = u
    return units, unlabelled, verdicts


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
