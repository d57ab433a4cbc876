"""The model repository's state on disk: its folders, ``state.json`` and what opening repairs.

Layout under the repository's ``root``::

    packages/<sha256 of the file>.crackpkg   immutable, content-addressed
    engines/<sha256 of the file>/            what the runtime builds from that version (its
                                             TensorRT engine cache, :mod:`inspector.edge.engine_cache`)
    incoming/<random>.part                   an upload or import being received
    state.json                               {"active", "previous", "models", "failed"}
    .lock                                    one repository per folder (flock)

``state.json`` maps a model id ``"<name>-<version>"`` to its :class:`~inspector.link.protocol.ModelInfo`
plus ``"file"``; a name from a request is only ever looked up there, never joined into a path.
Every change is one atomic replace of ``state.json`` (:func:`write_state`: temporary file,
fsync, rename, fsync of the folder) made after the package file is in place, so a crash leaves
the old or the new state, both pointing at verified files.

Opening repairs what a crash or a bad disk left (:func:`open_state`): temporary uploads and
package files no state refers to are removed; a ``state.json`` that does not parse is kept as
``state.json.corrupt`` and rebuilt from the package files that pass
:func:`~inspector.edge.package.load_package` -- with *no* active model, because which one was
active is exactly what was lost (the agent's command-line package, imported at start, then
becomes active); an active model whose file is missing or damaged (its SHA-256 no longer
matches its name) is replaced by the newest previous one that is intact.
"""
from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from inspector.edge.fields import PackageError
from inspector.edge.manifest import Manifest
from inspector.edge.package import load_package
from inspector.errors import InspectorError
from inspector.fsio import fsync_dir, write_atomic
from inspector.link import signing
from inspector.link.protocol import ApiError, ModelInfo

STATE_FILE = "state.json"
PACKAGES_DIR = "packages"
INCOMING_DIR = "incoming"
ENGINES_DIR = "engines"
CHUNK = 1 << 20
FILE_RE = re.compile(r"^[0-9a-f]{64}\.crackpkg$")


class RepositoryError(InspectorError):
    """A refused request: HTTP ``status``, stable ``code``, human ``message`` (says what and why)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message

    def to_api(self) -> ApiError:
        return ApiError(self.status, self.code, self.message)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def empty_state() -> dict[str, Any]:
    return {"active": None, "previous": [], "models": {}, "failed": {}}


def check_state(d: Any) -> dict[str, Any]:
    """``d`` if it is a well-formed state, else ValueError (the caller rebuilds)."""
    if not isinstance(d, dict) or not {"active", "previous", "models"} <= set(d):
        raise ValueError("not a state object")
    models = d["models"]
    if not isinstance(models, dict):
        raise ValueError("models is not an object")
    for model_id, entry in models.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not FILE_RE.match(entry["file"]):
            raise ValueError(f"model {model_id!r}: bad file entry")
        info = ModelInfo.from_dict({k: v for k, v in entry.items() if k != "file"})
        if info.id != model_id:
            raise ValueError(f"model {model_id!r}: id field is {info.id!r}")
    if d["active"] is not None and d["active"] not in models:
        raise ValueError(f"active {d['active']!r} is not a stored model")
    prev = d["previous"]
    if not isinstance(prev, list) or not all(isinstance(p, str) and p in models for p in prev):
        raise ValueError("previous is not a list of stored models")
    failed = d.get("failed", {})
    if not isinstance(failed, dict) or not all(isinstance(v, dict) for v in failed.values()):
        raise ValueError("failed is not an object of objects")
    return {"active": d["active"], "previous": list(prev), "models": models, "failed": failed}


@dataclass(frozen=True)
class Layout:
    """The paths of a repository rooted at ``root`` (see the module doc)."""
    root: Path

    @property
    def packages(self) -> Path:
        return self.root / PACKAGES_DIR

    @property
    def incoming(self) -> Path:
        return self.root / INCOMING_DIR

    @property
    def engines(self) -> Path:
        return self.root / ENGINES_DIR

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE


def write_state(layout: Layout, new: dict[str, Any]) -> None:
    """Replace state.json atomically (RepositoryError if the disk refuses)."""
    data = json.dumps(new, indent=1, sort_keys=True).encode("utf-8")
    try:   # the temporary name, .state.json.<random>.tmp, is what recovery removes
        write_atomic(layout.state, lambda f: f.write(data))
        fsync_dir(layout.root)
    except OSError as exc:
        raise storage_error("writing the model state", exc) from None


def open_state(layout: Layout, trusted_keys: Callable[[], Mapping[str, bytes]], recover: Callable[[str], None],
               event: Callable[[str, str], None]) -> tuple[dict[str, Any], bool]:
    """(state, changed): the repository's state after the repairs of the module doc, each told
    to ``recover(what)`` (an auto-rollback also to ``event(kind, message)``); ``changed``: it
    differs from state.json, which the caller then writes."""
    return _Opening(layout, trusted_keys, recover, event).run()


class _Opening:
    """One opening's repairs (the methods of :func:`open_state`)."""

    def __init__(self, layout: Layout, trusted_keys: Callable[[], Mapping[str, bytes]],
                 recover: Callable[[str], None], event: Callable[[str, str], None]):
        self.root, self._state_path = layout.root, layout.state
        self._packages, self._incoming, self._engines = layout.packages, layout.incoming, layout.engines
        self._trusted_keys, self._recover, self._event = trusted_keys, recover, event

    def run(self) -> tuple[dict[str, Any], bool]:
        for f in sorted(self._incoming.iterdir()):
            remove(f)
            self._recover(f"removed an unfinished upload {INCOMING_DIR}/{f.name}")
        for f in sorted(self.root.glob(f".{STATE_FILE}.*.tmp")):
            remove(f)
            self._recover(f"removed an unfinished state write {f.name}")
        state = self._read_state()
        changed, lost = not self._state_path.exists(), None  # rebuilt (or new): write it
        for model_id in [i for i, e in state["models"].items() if not (self._packages / e["file"]).is_file()]:
            self._recover(f"{model_id}: its package file is missing; forgotten")
            del state["models"][model_id]
            state["previous"] = [p for p in state["previous"] if p != model_id]
            if state["active"] == model_id:
                state["active"], lost = None, model_id
            changed = True
        changed |= self._recover_active(state, lost)
        referenced = {e["file"] for e in state["models"].values()}
        for f in sorted(self._packages.iterdir()):
            if f.name not in referenced:
                remove(f)
                self._recover(f"removed {PACKAGES_DIR}/{f.name}: no stored model refers to it")
        if self._engines.is_dir():
            for d in sorted(self._engines.iterdir()):
                if f"{d.name}.crackpkg" not in referenced:
                    remove(d)
                    self._recover(f"removed {ENGINES_DIR}/{d.name}: no stored model refers to it")
        return state, changed

    def _read_state(self) -> dict[str, Any]:
        try:
            raw = self._state_path.read_bytes()
        except FileNotFoundError:
            if any(self._packages.iterdir()):
                return self._rebuild("state.json is missing")
            return empty_state()
        try:
            return check_state(json.loads(raw.decode("utf-8")))
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            kept = self.root / f"{STATE_FILE}.corrupt"
            os.replace(self._state_path, kept)
            return self._rebuild(f"state.json is corrupt ({exc}; kept as {kept.name})")

    def _rebuild(self, why: str) -> dict[str, Any]:
        """A state from the package files that verify; none active (which one was is unknown)."""
        state = empty_state()
        files = sorted((f for f in self._packages.iterdir() if FILE_RE.match(f.name)), key=lambda f: f.stat().st_mtime)
        for f in files:
            try:
                if sha256_file(f) != f.name.split(".")[0]:
                    raise PackageError("the file's hash does not match its name")
                p = load_package(f)
            except (PackageError, OSError):
                continue  # left unreferenced: removed below
            m = p.manifest
            try:
                signed_by = signing.verify_manifest_signature(m, self._trusted_keys())
            except signing.SigningError:
                signed_by = None
            model_id = f"{m.name}-{m.version}"
            stored = _dt.datetime.fromtimestamp(f.stat().st_mtime, _dt.timezone.utc).replace(microsecond=0)
            info = ModelInfo(id=model_id, name=m.name, version=m.version, sha256=m.model_sha256, size=f.stat().st_size,
                             labels=list(m.labels), input_size=m.input.size, quantization=m.quantization.type,
                             signed_by=signed_by, stored=stored.isoformat().replace("+00:00", "Z"),
                             **gate_fields(m))
            state["models"][model_id] = {**info.to_dict(), "file": f.name}  # newest file wins an id
        self._recover(f"{why}: rebuilt from {len(state['models'])} verified package(s); no model is active "
                      f"until one is activated")
        return state

    def _recover_active(self, state: dict[str, Any], lost: str | None) -> bool:
        """Check the active model's file; if it is damaged or was ``lost`` (its file is gone), go
        back to the newest previous one that is intact and has not failed. True if changed."""
        active = state["active"]
        if active is not None:
            why = self._verify_stored(state["models"][active])
            if why is None:
                return lost is not None
            state["failed"][active] = {"time": utc_now(), "reason": f"failed verification on start: {why}"}
            self._recover(f"active model {active} fails verification ({why})")
            lost = active
        elif lost is None:
            return False
        for i, candidate in enumerate(state["previous"]):
            if candidate in state["failed"]:
                continue
            why = self._verify_stored(state["models"][candidate])
            if why is None:
                state["active"], state["previous"] = candidate, state["previous"][i + 1:]
                self._recover(f"went back to {candidate} (active {lost} unusable)")
                self._event("auto-rollback", f"{lost} was unusable on start; went back to {candidate}")
                return True
            state["failed"][candidate] = {"time": utc_now(), "reason": f"failed verification on start: {why}"}
            self._recover(f"previous model {candidate} fails verification ({why})")
        state["active"], state["previous"] = None, []
        self._recover(f"no previous model verifies: none active (was {lost})")
        return True

    def _verify_stored(self, entry: dict) -> str | None:
        """None if the file is byte-identical to the one that passed every check when it was
        stored (its name is its SHA-256), else why not. Whether this onnxruntime still runs it
        is the runtime's test (it loads the model and calls :meth:`mark_failed` if it cannot)."""
        path = self._packages / entry["file"]
        try:
            if sha256_file(path) != entry["file"].split(".")[0]:
                return "its file was damaged on the device (hash differs from when it was stored)"
        except OSError as exc:
            return f"cannot read its file ({exc.strerror or exc})"
        return None


def gate_fields(manifest: Manifest) -> dict[str, Any]:
    """``promoted`` and ``override`` of the signed manifest's ``extra.lineage`` (a package made by
    ``distill update``; the signature covers them), for the model list; none for other packages."""
    lineage = (manifest.extra or {}).get("lineage")
    if not isinstance(lineage, dict):
        return {}
    promoted = lineage.get("promoted")
    override = lineage.get("override")
    return {"promoted": promoted if isinstance(promoted, bool) else None,
            "override": dict(override) if isinstance(override, dict) else None}


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def storage_error(doing: str, exc: OSError) -> RepositoryError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RepositoryError(507, "no_space", f"{doing} failed: the device is out of space")
    return RepositoryError(500, "storage_error", f"{doing} failed ({exc.strerror or exc})")

