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

The shipped packages in ``models/`` are not written to the file: :meth:`ModelHistory.versions`
lists them alongside, read from their manifests.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .fsio import fsync_dir, write_atomic

APP_DIR = "crack-inspector"
HISTORY_FILE = "model-history.json"
FORMAT = 1
MAX_EVENTS = 500


class HistoryError(RuntimeError):
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
    override: dict | None = None           # {"reason", "by", "time"} when pushed despite the gate
    metrics: dict = field(default_factory=dict)   # {set: {"base": {...}, "candidate": {...}}} or manifest metrics

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
        from .model_update import UpdateError, read_manifest
        from .paths import models_dir

        folder = self.models_dir or models_dir()
        found: dict[str, dict[str, Any]] = {}
        for pkg in sorted(folder.glob("*.crackpkg")):
            try:
                m = read_manifest(pkg)
            except UpdateError:
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
        plain = version[:-5] if version.endswith("-int8") else version
        return next((v for v in self.versions() if v.name == name and v.version == plain), None)

    def laptop_stack(self) -> list[dict]:
        return list(self.load()["laptop"]["stack"])

    def laptop_active(self) -> dict | None:
        stack = self.laptop_stack()
        return stack[-1] if stack else None

    def events(self) -> list[dict]:
        return list(self.load()["laptop"]["events"])

    # ------------------------------------------------------------------ changes

    def add(self, version: ModelVersion) -> None:
        """Record a version an update made (replaces an entry of the same name and version)."""
        def change(doc):
            doc["models"] = [m for m in doc["models"] if (m["name"], m["version"]) != (version.name, version.version)]
            doc["models"].append(asdict(version))
        self._change(change)

    def record_override(self, name: str, version: str, reason: str, by: str | None) -> None:
        """A failed gate overridden by an expert: the reason and who, on the version and as an event."""
        override = {"reason": reason, "by": by, "time": now_iso()}

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
