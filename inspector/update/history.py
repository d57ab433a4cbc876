"""The laptop's model history: every model version the app knows, and which one its own live view
ran when. Plain Python (no Qt).

One small JSON file, ``model-history.json`` in the per-user data folder
(``platformdirs.user_data_dir("crack-inspector")``), replaced atomically
(:func:`inspector.fsio.write_atomic`): a crash leaves the old history or the new one. It holds

* ``models``: versions made by updates (``distill update`` output folders: the INT8 and FP32
  packages, the checkpoint, ``update.json``), with parent, date, gate verdict and the metrics
  of the before/after table; an expert override of a failed gate keeps its reason and who;
* ``laptop``: ``stack`` (the packages the laptop's live view went live on, newest last; a
  rollback pops it) and ``events`` (live / rollback / override / device pushes, with time).

A name + version names one model, for ever: :meth:`ModelHistory.add` refuses a record of
another model (another ``sha256``) under a name + version the history already holds, and
:meth:`ModelHistory.next_version` gives an update a version never used for that name (here,
in the updates folder, among the shipped packages, on the device when it is known), so a
rollback followed by a new update does not reuse the version of the model rolled back from.

A candidate the gate refused (its manifest's ``extra.lineage.promoted`` is false) goes to a
device only through :func:`override_package`: the expert's reason, name and time are written
into the package's own lineage (the model bytes stay; the manifest changes, and the push signs
it), and into this history.

The shipped packages in ``models/`` are not written to the file: :meth:`ModelHistory.versions`
lists them alongside, read from their manifests.
"""
from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from inspector.fsio import fsync_dir, write_atomic
from inspector.errors import InspectorError

APP_DIR = "crack-inspector"
HISTORY_FILE = "model-history.json"
FORMAT = 1
MAX_EVENTS = 500


class HistoryError(InspectorError, RuntimeError):
    """The history file cannot be read or written; the message says which and why."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_DIR))


@dataclass(frozen=True)
class ModelVersion:
    """One version on the laptop: ``int8`` is what runs live (None: FP32 only)."""

    name: str
    version: str
    parent: str | None
    created: str
    int8: str | None
    fp32: str | None = None
    checkpoint: str | None = None
    update_json: str | None = None
    origin: str = "update"                 # "shipped" | "update"
    gate_passed: bool | None = None
    override: dict | None = None           # {"reason", "by", "at", "time"} when pushed despite the gate
    metrics: dict = field(default_factory=dict)   # {set: {"base": {...}, "candidate": {...}}} or manifest metrics
    sha256: str | None = None              # model_sha256 of the package that runs (INT8, else FP32): the identity

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"

    @classmethod
    def from_dict(cls, d: dict) -> "ModelVersion":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


class ModelHistory:
    """``ModelHistory(root=None)``: the history in ``root / model-history.json`` (default: the
    per-user data folder). Thread-safe; every change is written at once."""

    def __init__(self, root: str | os.PathLike | None = None, *, models_dir: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else data_dir()
        self.path = self.root / HISTORY_FILE
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ reading

    def load(self) -> dict:
        with self._lock:
            return self._read()

    def updates(self) -> list[ModelVersion]:
        return [ModelVersion.from_dict(m) for m in self.load()["models"]]

    def versions(self) -> list[ModelVersion]:
        """The shipped student packages, then every version updates made, oldest first."""
        return self.shipped() + self.updates()

    def shipped(self) -> list[ModelVersion]:
        from inspector.update.plan import ModelUpdateError, read_manifest
        from inspector.paths import models_dir

        folder = self.models_dir or models_dir()
        found: dict[str, dict[str, Any]] = {}
        for pkg in sorted(folder.glob("*.crackpkg")):
            try:
                m = read_manifest(pkg)
            except ModelUpdateError:
                continue
            if m.get("name") != "crack-student":
                continue                     # teachers are not a model the live view runs
            int8 = (m.get("quantization") or {}).get("type") == "int8-qdq"
            version = m["parent_version"] if int8 and m.get("parent_version") else m["version"]
            entry = found.setdefault(version, {"name": m["name"], "version": version, "created": m.get("created", ""),
                                               "parent": None, "metrics": m.get("metrics") or {}, "origin": "shipped"})
            entry["int8" if int8 else "fp32"] = str(pkg)
            if not int8:
                entry["parent"] = m.get("parent_version")
        return [ModelVersion.from_dict({"int8": None, **e}) for e in found.values()]

    def find(self, name: str, version: str) -> ModelVersion | None:
        """The version ``version`` (or its INT8 twin ``version-int8``) of model ``name``."""
        plain = plain_version(version)
        return next((v for v in self.versions() if v.name == name and v.version == plain), None)

    def laptop_stack(self) -> list[dict]:
        return list(self.load()["laptop"]["stack"])

    def laptop_active(self) -> dict | None:
        stack = self.laptop_stack()
        return stack[-1] if stack else None

    def events(self) -> list[dict]:
        return list(self.load()["laptop"]["events"])

    # ------------------------------------------------------------------ changes

    def taken_versions(self, name: str, *, device=None, folders=None) -> set[str]:
        """Every version (plain, without ``-int8``) model ``name`` ever had that this laptop can
        see: the history's records, the shipped packages, what the laptop's view ran, the packages
        under ``folders`` (default: the updates folder beside the history) and, when given, the
        device's models (a :class:`~inspector.link.protocol.ModelList` or ModelInfo objects/dicts)."""
        doc = self.load()
        taken = {m["version"] for m in doc["models"] if m.get("name") == name}
        taken |= {e["version"] for e in doc["laptop"]["stack"] if e.get("name") == name}
        taken |= {v.version for v in self.shipped() if v.name == name}
        for folder in ([self.root / "updates"] if folders is None else folders):
            for pkg in sorted(Path(folder).rglob("*.crackpkg")):
                try:
                    m = _manifest(pkg)
                except HistoryError:
                    continue
                if m.get("name") == name and isinstance(m.get("version"), str):
                    taken.add(m["version"])
        if device is not None:
            infos = device.infos() if hasattr(device, "infos") else device
            for info in infos:
                d = info if isinstance(info, dict) else info.to_dict()
                if d.get("name") == name:
                    taken.add(d["version"])
        return {plain_version(v) for v in taken if v}

    def next_version(self, name: str, base_version: str, *, device=None, folders=None) -> str:
        """The version for the next update of ``name`` from ``base_version``: the base's minor + 1,
        counted on past every version already used (:meth:`taken_versions`)."""
        return next_free_version(base_version, self.taken_versions(name, device=device, folders=folders))

    def add(self, version: ModelVersion) -> None:
        """Record a version an update made. The same model again (same sha256) updates its record
        (an override already recorded is kept); another model under a name + version the history
        (or a shipped package) already holds is refused with HistoryError: a version names one
        model, and the history never loses a record."""
        if version.sha256 is None:
            version = _with_sha(version)
        for shipped in self.shipped():
            if (shipped.name, shipped.version) == (version.name, version.version):
                theirs = _identity(asdict(shipped))
                if theirs is None or theirs != version.sha256:
                    raise HistoryError(f"{version.name} {version.version} is a shipped model; another model cannot "
                                       f"take its version: give the new one a new version")

        def change(doc):
            for i, m in enumerate(doc["models"]):
                if (m["name"], m["version"]) != (version.name, version.version):
                    continue
                if not _same_model(m, version):
                    raise HistoryError(
                        f"{version.name} {version.version} is already in the model history as another model "
                        f"(sha256 {(_identity(m) or 'unknown')[:12]}…, made {m.get('created') or '?'}; this one "
                        f"{(version.sha256 or 'unknown')[:12]}…): a version names one model, so this one needs a "
                        f"new version (ModelHistory.next_version)")
                new = asdict(version)
                if new.get("override") is None and m.get("override") is not None:
                    new["override"] = m["override"]
                doc["models"][i] = new
                return
            doc["models"].append(asdict(version))
        self._change(change)

    def record_override(self, name: str, version: str, reason: str, by: str | None, *,
                        at: str | None = None) -> None:
        """A failed gate overridden by an expert: the reason and who, on the version and as an event."""
        at = at or now_iso()
        override = {"reason": reason, "by": by, "at": at, "time": at}

        def change(doc):
            for m in doc["models"]:
                if (m["name"], m["version"]) == (name, version):
                    m["override"] = override
            _event(doc, "override", f"{name} {version}: gate overridden by {by or 'unknown'}: {reason}")
        self._change(change)

    def record_laptop_live(self, name: str, version: str, package: str | os.PathLike, *,
                           previous: tuple[str, str, str] | None = None) -> None:
        """The laptop's live view runs ``package`` now (pushed on the stack). ``previous``: (name,
        version, package) that ran before, put under it when the stack is empty (the first update
        after the shipped model), so a rollback has somewhere to go."""
        def change(doc):
            stack = doc["laptop"]["stack"]
            if not stack and previous is not None and str(previous[2]) != str(package):
                stack.append({"name": previous[0], "version": previous[1], "package": str(previous[2]),
                              "time": now_iso()})
            if not stack or stack[-1]["package"] != str(package):
                stack.append({"name": name, "version": version, "package": str(package), "time": now_iso()})
            _event(doc, "live", f"{name} {version} live on this laptop", version=version)
        self._change(change)

    def laptop_rollback(self) -> dict:
        """Pop the laptop's current version; returns the entry to go back to ({name, version,
        package}); HistoryError if no earlier version ran here."""
        result: dict = {}

        def change(doc):
            stack = doc["laptop"]["stack"]
            if len(stack) < 2:
                raise HistoryError("no earlier version ran on this laptop: nothing to roll back to")
            gone = stack.pop()
            result.update(stack[-1])
            _event(doc, "rollback", f"this laptop rolled back from {gone['name']} {gone['version']} to "
                                    f"{result['name']} {result['version']}", version=result["version"])
        self._change(change)
        return result

    def record_event(self, kind: str, message: str, **extra: Any) -> None:
        self._change(lambda doc: _event(doc, kind, message, **extra))

    # ------------------------------------------------------------------ file

    def _change(self, change) -> None:
        with self._lock:
            doc = self._read()
            change(doc)
            self._write(doc)

    def _read(self) -> dict:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return _empty()
        except OSError as exc:
            raise HistoryError(f"cannot read the model history {self.path}: {exc}") from None
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT or not isinstance(doc.get("models"), list):
                raise ValueError(f"format {doc.get('format')!r}")
            doc.setdefault("laptop", {}).setdefault("stack", [])
            doc["laptop"].setdefault("events", [])
            return doc
        except (ValueError, AttributeError) as exc:
            raise HistoryError(f"the model history {self.path} is damaged ({exc}); move it aside to start a "
                               f"new one") from None

    def _write(self, doc: dict) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            data = json.dumps(doc, indent=1, ensure_ascii=False).encode() + b"\n"
            write_atomic(self.path, lambda f: f.write(data))
            fsync_dir(self.root, best_effort=True)
        except OSError as exc:
            raise HistoryError(f"cannot write the model history {self.path}: {exc}") from None


def _empty() -> dict:
    return {"format": FORMAT, "models": [], "laptop": {"stack": [], "events": []}}


def _event(doc: dict, kind: str, message: str, **extra: Any) -> None:
    events = doc["laptop"]["events"]
    events.append({"time": now_iso(), "kind": kind, "message": message, **extra})
    del events[:-MAX_EVENTS]


# ---------------------------------------------------------------------------- versions

_NUMERIC = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def plain_version(version: str) -> str:
    """The version without its ``-int8`` suffix: an INT8 package and its FP32 parent are one version."""
    return version[:-5] if version.endswith("-int8") else version


def next_free_version(version: str, taken=()) -> str:
    """The base's minor version + 1 (1.1.0 → 1.2.0), counted on past every minor version any of
    ``taken`` already uses (1.2.0 and 1.2.1 taken → 1.3.0): never a version used before, and
    still above the base. ValueError for a version that is not numeric (give one explicitly)."""
    m = _NUMERIC.match(version)
    if m is None:
        raise ValueError(f"cannot count up version {version!r}; give --version X.Y.Z")
    major, minor = int(m.group(1)), int(m.group(2))
    used = set()
    for v in taken:
        t = _NUMERIC.match(plain_version(str(v)))
        if t is not None and int(t.group(1)) == major:
            used.add(int(t.group(2)))
    minor += 1
    while minor in used:
        minor += 1
    return f"{major}.{minor}.0" if m.group(3) is not None else f"{major}.{minor}"


def _manifest(path: str | os.PathLike) -> dict:
    """A package's manifest.json without loading the model."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            d = json.loads(zf.read("manifest.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise HistoryError(f"{path}: not a readable model package ({exc})") from None
    if not isinstance(d, dict):
        raise HistoryError(f"{path}: the manifest is not an object")
    return d


def _identity(record: dict) -> str | None:
    """The model a record names: its sha256, else that of its package (INT8, else FP32) if readable."""
    if record.get("sha256"):
        return record["sha256"]
    for key in ("int8", "fp32"):
        if record.get(key):
            try:
                return _manifest(record[key]).get("model_sha256")
            except HistoryError:
                return None
    return None


def _with_sha(version: ModelVersion) -> ModelVersion:
    from dataclasses import replace

    return replace(version, sha256=_identity(asdict(version)))


def _same_model(record: dict, version: ModelVersion) -> bool:
    mine, theirs = version.sha256, _identity(record)
    if mine is not None and theirs is not None:
        return mine == theirs
    # a side whose model cannot be read: the same only if it is the very same files
    return (record.get("int8"), record.get("fp32")) == (version.int8, version.fp32)


# ---------------------------------------------------------------------------- the expert override

class OverrideError(InspectorError, ValueError):
    """An override that cannot be made (no reason, no name, a package that cannot be rewritten)."""


MIN_OVERRIDE_REASON = 10


def lineage_of(manifest: dict) -> dict | None:
    """The ``extra.lineage`` of a manifest (dict), or None (a shipped package, an older one)."""
    lineage = (manifest.get("extra") or {}).get("lineage") if isinstance(manifest, dict) else None
    return lineage if isinstance(lineage, dict) else None


def gate_refused(package: str | os.PathLike) -> list[str] | None:
    """None if ``package`` may be pushed as it is (promoted, or no lineage: a shipped package);
    else the gate rules it failed (maybe empty): its lineage says ``promoted: false``."""
    lineage = lineage_of(_manifest(package))
    if lineage is None or lineage.get("promoted") is not False:
        return None
    gate = lineage.get("gate") if isinstance(lineage.get("gate"), dict) else {}
    return [str(r) for r in gate.get("failed") or []]


def override_package(package: str | os.PathLike, *, reason: str, by: str | None,
                     history: "ModelHistory | None" = None, also: tuple = ()) -> Path:
    """The expert override of a refused gate, recorded where the model goes: ``{"by", "reason",
    "failed", "at"}`` is written into the lineage of the package's manifest (``promoted`` becomes
    true), the package rewritten in place, atomically (model bytes, sha256 and reference
    unchanged; the old signature dropped: a push signs it again), the same for the packages in
    ``also`` (the FP32 sibling), then recorded in ``history``. Returns the package's path.
    A package already overridden is left as it is (and nothing is recorded again). OverrideError if the reason is shorter than
    :data:`MIN_OVERRIDE_REASON` characters, nobody is named, or a package cannot be rewritten."""
    from inspector.edge.fields import PackageError
    from inspector.edge.package import load_package, write_package

    reason = (reason or "").strip()
    by = (by or "").strip()
    if len(reason) < MIN_OVERRIDE_REASON:
        raise OverrideError(f"an override needs a reason of at least {MIN_OVERRIDE_REASON} characters")
    if not by:
        raise OverrideError("an override needs the name of who decides it")
    at = now_iso()
    first, changed = None, False
    for path in (package, *[a for a in also if a]):
        try:
            p = load_package(path, verify_reference=False)
        except PackageError as exc:
            raise OverrideError(f"cannot override {path}: {exc}") from None
        manifest = p.manifest.to_dict()
        lineage = dict(lineage_of(manifest) or {})
        if first is None:
            first = manifest
        if lineage.get("override") and lineage.get("promoted"):
            continue                                   # overridden before: the record stands
        gate = lineage.get("gate") if isinstance(lineage.get("gate"), dict) else {}
        lineage["override"] = {"by": by, "reason": reason, "failed": list(gate.get("failed") or []), "at": at}
        lineage["promoted"] = True
        manifest["extra"] = {**(manifest.get("extra") or {}), "lineage": lineage}
        manifest["signature"] = None
        try:
            write_package(path, manifest, p.onnx_bytes, p.reference, verify=False)
        except (OSError, PackageError) as exc:
            raise OverrideError(f"cannot write the override into {path}: {exc}") from None
        changed = True
    if history is not None and changed:
        name = first["name"]
        version = plain_version(first["version"])
        history.record_override(name, version, reason, by, at=at)
    return Path(package)
