"""The model store on the device: verified packages, the active version, rollback.

Layout under ``root``::

    packages/<sha256 of the file>.crackpkg   immutable, content-addressed
    engines/<sha256 of the file>/            what the runtime builds from that version (its
                                             TensorRT engine cache, :mod:`inspector.edge.engine_cache`)
    incoming/<random>.part                   an upload or import being received
    state.json                               {"active", "previous", "models", "failed"}
    .lock                                    one repository per folder (flock)

``state.json`` maps a model id ``"<name>-<version>"`` to its :class:`~inspector.link.protocol.ModelInfo`
plus ``"file"``; a name from a request is only ever looked up there, never joined into a path.
Every change (store, activate, rollback) is one atomic replace of ``state.json`` (temporary
file, fsync, rename, fsync of the folder) made after the package file is in place, so a crash
leaves the old or the new state, both pointing at verified files.

An upload is refused before anything is stored unless it is a complete package
(:func:`inspector.edge.package.load_package`: manifest, model hash, ONNX contract, reference run),
signed by a trusted key, with the labels of the active model (a silent change of label order
is the classic field bug), not a different file under an existing id, and not a candidate its
gate refused (``extra.lineage.promoted`` false) unless the lineage carries the expert override.
The model list shows, per version, ``promoted`` and ``override`` from the signed lineage.

Opening repairs what a crash or a bad disk left: temporary uploads and package files no state
refers to are removed; a ``state.json`` that does not parse is kept as ``state.json.corrupt``
and rebuilt from the package files that pass :func:`~inspector.edge.package.load_package` -- with *no*
active model, because which one was active is exactly what was lost (the agent's command-line
package, imported at start, then becomes active); an active model whose file is missing or
damaged (its SHA-256 no longer matches its name) is replaced by the newest previous one that
is intact. :attr:`ModelRepository.recovered` says what was done.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

from inspector.edge import package as pkg
from inspector.link import signing
from inspector.fsio import fsync_dir, write_atomic
from inspector.link.protocol import MAX_PACKAGE_BYTES, ApiError, ModelInfo, ModelList
from inspector.errors import InspectorError

STATE_FILE = "state.json"
PACKAGES_DIR = "packages"
INCOMING_DIR = "incoming"
ENGINES_DIR = "engines"
KEEP_PREVIOUS = 5
MAX_EVENTS = 200
CHUNK = 1 << 20
# Free space kept on the device beyond an upload: a full eMMC breaks logging and state writes.
SPACE_RESERVE = 32 << 20
_FILE_RE = re.compile(r"^[0-9a-f]{64}\.crackpkg$")


class RepositoryError(InspectorError):
    """A refused request: HTTP ``status``, stable ``code``, human ``message`` (says what and why)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message

    def to_api(self) -> ApiError:
        return ApiError(self.status, self.code, self.message)


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _empty_state() -> dict[str, Any]:
    return {"active": None, "previous": [], "models": {}, "failed": {}}


def _check_state(d: Any) -> dict[str, Any]:
    """``d`` if it is a well-formed state, else ValueError (the caller rebuilds)."""
    if not isinstance(d, dict) or not {"active", "previous", "models"} <= set(d):
        raise ValueError("not a state object")
    models = d["models"]
    if not isinstance(models, dict):
        raise ValueError("models is not an object")
    for model_id, entry in models.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not _FILE_RE.match(entry["file"]):
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


class ModelRepository:
    """Model versions stored on the device (see the module doc). Thread-safe.

    ``trusted_keys`` returns the keys allowed to sign uploads (key id -> raw Ed25519 public
    key), asked at each upload so pairing a new app takes effect at once. ``max_bytes`` caps
    an upload before a byte of it is read.
    """

    def __init__(self, root: str | os.PathLike, *, trusted_keys: Callable[[], Mapping[str, bytes]] = dict,
                 max_bytes: int = MAX_PACKAGE_BYTES):
        self.root = Path(root)
        self._packages = self.root / PACKAGES_DIR
        self._incoming = self.root / INCOMING_DIR
        self._engines = self.root / ENGINES_DIR
        self._state_path = self.root / STATE_FILE
        self._trusted_keys = trusted_keys
        self.max_bytes = int(max_bytes)
        self._lock = threading.RLock()
        self._events: deque[dict] = deque(maxlen=MAX_EVENTS)
        self._listeners: list[Callable[[ModelInfo | None], None]] = []
        self.recovered: list[str] = []
        for d in (self.root, self._packages, self._incoming):
            d.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise RepositoryError(409, "in_use", f"{self.root} is already open in another model repository "
                                                 f"(is another agent running on this data folder?)") from None
        try:
            self._state = self._open()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the folder (the process exiting does the same)."""
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> "ModelRepository":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    def list(self) -> ModelList:
        with self._lock:
            s = self._state
            models = [self._info(s, i).to_dict() for i in sorted(s["models"], key=lambda i: s["models"][i]["stored"])]
            return ModelList(active=s["active"], previous=list(s["previous"]), models=models)

    def active(self) -> ModelInfo | None:
        with self._lock:
            a = self._state["active"]
            return None if a is None else self._info(self._state, a)

    def active_path(self) -> Path | None:
        with self._lock:
            a = self._state["active"]
            return None if a is None else self._packages / self._state["models"][a]["file"]

    def path_of(self, model_id: str) -> Path:
        with self._lock:
            return self._packages / self._entry(model_id)["file"]

    def engine_dir(self, package_path: str | os.PathLike) -> Path:
        """The folder for what is built from the stored package ``package_path`` (a path this
        repository gave: :meth:`active_path`, :meth:`path_of`): one per version, next to it,
        removed at the next opening once no stored version refers to the package."""
        return self._engines / Path(package_path).name.split(".")[0]

    def info(self, model_id: str) -> ModelInfo:
        with self._lock:
            self._entry(model_id)
            return self._info(self._state, model_id)

    @property
    def events(self) -> list[dict]:
        """Recent events, oldest first: ``{"time", "kind", "message"}`` (kept in memory only)."""
        with self._lock:
            return list(self._events)

    @property
    def failed(self) -> dict[str, dict]:
        """Models that failed on this device: id -> ``{"time", "reason"}`` (cleared by activating it again)."""
        with self._lock:
            return {k: dict(v) for k, v in self._state["failed"].items()}

    def subscribe(self, callback: Callable[[ModelInfo | None], None]) -> Callable[[], None]:
        """Call ``callback(active ModelInfo or None)`` after every change of the active model
        (outside the lock, in the thread that made the change). Returns the unsubscribe call."""
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)
        return unsubscribe

    # ------------------------------------------------------------------ storing

    def import_local(self, package_path: str | os.PathLike) -> ModelInfo:
        """Store the package given on the agent's command line; activate it if nothing is active.

        The operator vouches for it: it may be unsigned (``signed_by`` None) and its labels may
        differ from the active model's; everything else is verified as for an upload.
        """
        src = Path(package_path)
        try:
            size = src.stat().st_size
            with open(src, "rb") as fh:
                info = self._store(fh, size, source=str(src), local=True)
        except OSError as exc:
            why = f"{src}: cannot read the package ({exc.strerror or exc})"
            self._event("refused", why)
            raise RepositoryError(400, "unreadable", why) from None
        with self._lock:
            if self._state["active"] is None:
                self._activate_locked(info.id, "activated", f"activated {info.id} (given on the command line)")
                changed = True
            else:
                changed = False
        if changed:
            self._notify()
        return info

    def receive(self, stream: BinaryIO, length: int) -> ModelInfo:
        """Receive an uploaded package of ``length`` bytes from ``stream``; verify and store it.

        Does not activate it. Exactly ``length`` bytes are read; a seekable stream (a file,
        BytesIO) must also end there, a socket is left positioned after the body.
        """
        return self._store(stream, length, source="upload", local=False)

    def _store(self, stream: BinaryIO, length: int, *, source: str, local: bool) -> ModelInfo:
        try:
            tmp, file_sha = self._spool(stream, length)
        except RepositoryError as exc:
            self._event("refused", f"{source} refused: {exc.message}")
            raise
        try:
            return self._verify_and_commit(tmp, file_sha, length, source=source, local=local)
        except RepositoryError as exc:
            self._event("refused", f"{source} refused: {exc.message}")
            raise
        finally:
            tmp.unlink(missing_ok=True)

    def _spool(self, stream: BinaryIO, length: Any) -> tuple[Path, str]:
        """Copy exactly ``length`` bytes to a new file in incoming/; (path, sha256)."""
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise RepositoryError(411, "length_required", f"the package length must be a byte count, got {length!r}")
        if length > self.max_bytes:
            raise RepositoryError(413, "too_large", f"package of {length} bytes exceeds the device limit of "
                                                    f"{self.max_bytes} bytes")
        free = shutil.disk_usage(self._incoming).free
        if length + SPACE_RESERVE > free:
            raise RepositoryError(507, "no_space", f"package of {length} bytes does not fit: {free} bytes free "
                                                   f"on the device, {SPACE_RESERVE} kept in reserve")
        tmp = self._incoming / f"{secrets.token_hex(8)}.part"
        h, got = hashlib.sha256(), 0
        try:
            with open(tmp, "xb") as out:
                while got < length:
                    try:
                        chunk = stream.read(min(CHUNK, length - got))
                    except OSError as exc:  # a timeout or a reset connection
                        raise RepositoryError(400, "read_failed", f"reading the package failed after {got} of "
                                                                  f"{length} bytes ({exc})") from None
                    if not chunk:
                        raise RepositoryError(400, "length_mismatch", f"the body ended after {got} of the "
                                                                      f"{length} bytes announced")
                    out.write(chunk)
                    h.update(chunk)
                    got += len(chunk)
                if _seekable(stream) and stream.read(1):
                    raise RepositoryError(400, "length_mismatch", f"the body is longer than the {length} bytes "
                                                                  f"announced")
                out.flush()
                os.fsync(out.fileno())
        except RepositoryError:
            tmp.unlink(missing_ok=True)
            raise
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _storage_error("storing the upload", exc) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, h.hexdigest()

    def _same_content(self, stored_file: str, manifest: pkg.Manifest) -> bool:
        """The stored package has the same model and the same signed manifest fields."""
        try:
            stored = pkg.load_package(self._packages / stored_file, verify_reference=False).manifest
        except (pkg.PackageError, OSError):
            return False
        return pkg.signed_payload(stored) == pkg.signed_payload(manifest)  # covers model_sha256

    def _verify_and_commit(self, tmp: Path, file_sha: str, size: int, *, source: str, local: bool) -> ModelInfo:
        # Outside the lock (a reference run takes about a second): the manifest, hashes and the
        # graph first, then the signature, and only a package signed by a trusted key (or one
        # the operator gave) is run by onnxruntime.
        try:
            p = pkg.load_package(tmp, verify_reference=False)
        except pkg.PackageError as exc:
            raise _invalid(exc, tmp) from None
        signed_by = None if local else self._check_signature(p.manifest)
        try:
            pkg.load_package(tmp, verify_reference=True)
        except pkg.PackageError as exc:
            raise _invalid(exc, tmp) from None
        m = p.manifest
        info = ModelInfo(id=f"{m.name}-{m.version}", name=m.name, version=m.version, sha256=m.model_sha256,
                         size=size, labels=list(m.labels), input_size=m.input.size, quantization=m.quantization.type,
                         signed_by=signed_by, stored=_utc_now(), **_gate_fields(m))
        file_name = f"{file_sha}.crackpkg"
        with self._lock:
            existing = self._state["models"].get(info.id)
            if existing is not None:
                if existing["file"] == file_name or self._same_content(existing["file"], m):
                    # the same package again (re-signing rewrites the zip, so the bytes may differ
                    # while the model and every signed manifest field are the same): nothing to do
                    tmp.unlink(missing_ok=True)
                    return self._info(self._state, info.id)
                raise RepositoryError(409, "version_exists", f"{info.id} is already on the device with different "
                                                             f"contents; give the new package a new version")
            gate = _gate_fields(m)
            if not local and gate.get("promoted") is False and gate.get("override") is None:
                # the app pushes a refused candidate only with the expert override in its lineage
                raise RepositoryError(422, "not_promoted", f"{info.id} was refused by its gate (lineage: not "
                                                           f"promoted) and carries no expert override; push it "
                                                           f"with Push anyway (reason, who) or make a new one")
            active = self._state["active"]
            if not local and active is not None:
                want = self._state["models"][active]["labels"]
                if list(m.labels) != want:
                    raise RepositoryError(422, "labels_changed", f"labels {list(m.labels)} differ from the active "
                                                                 f"model {active}'s {want} (order matters: a changed "
                                                                 f"order silently swaps every verdict)")
            dst = self._packages / file_name
            try:
                os.replace(tmp, dst)
                fsync_dir(self._packages)
            except OSError as exc:
                raise _storage_error("storing the package", exc) from None
            new = self._copy_state()
            new["models"][info.id] = {**info.to_dict(), "file": file_name}
            try:
                self._write_state(new)
            except RepositoryError:
                dst.unlink(missing_ok=True)  # no state names it (another id never has the same bytes)
                raise
            self._event("stored", f"stored {info.id} ({size} bytes, "
                                  f"{'signed by ' + signed_by if signed_by else 'from ' + source})")
            return info

    def _check_signature(self, manifest: pkg.Manifest) -> str:
        try:
            return signing.verify_manifest_signature(manifest, self._trusted_keys())
        except signing.SigningError as exc:
            # unsigned / signed by a key this device does not trust (pair that app first) /
            # a wrong signature (changed after signing, or forged): three different fixes
            code = exc.reason if exc.reason in ("unsigned", "unknown_key") else "bad_signature"
            raise RepositoryError(403, code, str(exc)) from None

    # ------------------------------------------------------------------ switching

    def activate(self, model_id: str) -> ModelList:
        """Make a stored version active (the file's hash is checked first)."""
        with self._lock:
            entry = self._entry(model_id)
            if self._state["active"] == model_id:
                return self.list()
            self._check_file(model_id, entry)
            self._activate_locked(model_id, "activated", f"activated {model_id}")  # clears a failure record
        self._notify()
        return self.list()

    def rollback(self) -> ModelList:
        """Go back to ``previous[0]`` (it leaves the list: rolling back again goes further back)."""
        with self._lock:
            prev = self._state["previous"]
            if not prev:
                raise RepositoryError(409, "no_previous", "there is no previous version to roll back to")
            target, current = prev[0], self._state["active"]
            self._check_file(target, self._state["models"][target])
            self._switch(target, prev[1:], "rollback", f"rolled back from {current} to {target}")
        self._notify()
        return self.list()

    def mark_failed(self, model_id: str, reason: str) -> ModelList:
        """Record that ``model_id`` failed on this device; if it is active, go back to the newest
        previous version that has not failed and whose file is intact (auto-rollback)."""
        with self._lock:
            self._entry(model_id)
            new = self._copy_state()
            new["failed"][model_id] = {"time": _utc_now(), "reason": str(reason)[:500]}
            if new["active"] != model_id:
                self._write_state(new)
                self._event("failed", f"{model_id} failed ({reason}); it is not active, nothing to switch")
                return self.list()
            prev = new["previous"]
            for i, candidate in enumerate(prev):
                if candidate in new["failed"]:
                    continue
                try:
                    self._check_file(candidate, new["models"][candidate])
                except RepositoryError:
                    continue
                new["active"], new["previous"] = candidate, prev[i + 1:]
                self._write_state(new)
                self._event("auto-rollback", f"{model_id} failed ({reason}); went back to {candidate}")
                break
            else:
                self._write_state(new)
                self._event("failed", f"{model_id} failed ({reason}); no previous version to go back to, "
                                      f"it stays active")
                return self.list()
        self._notify()
        return self.list()

    def _activate_locked(self, model_id: str, kind: str, message: str) -> None:
        current = self._state["active"]
        prev = [p for p in self._state["previous"] if p not in (model_id, current)]
        if current is not None:
            prev.insert(0, current)
        self._switch(model_id, prev, kind, message)

    def _switch(self, model_id: str, previous: list[str], kind: str, message: str) -> None:
        new = self._copy_state()
        new["active"], new["previous"] = model_id, previous[:KEEP_PREVIOUS]
        if kind == "activated":
            new["failed"].pop(model_id, None)
        self._write_state(new)
        self._event(kind, message)

    def _check_file(self, model_id: str, entry: dict) -> None:
        path = self._packages / entry["file"]
        try:
            ok = _sha256_file(path) == entry["file"].split(".")[0]
        except OSError as exc:
            raise RepositoryError(500, "corrupt_package", f"{model_id}: its stored file cannot be read "
                                                          f"({exc.strerror or exc})") from None
        if not ok:
            raise RepositoryError(500, "corrupt_package", f"{model_id}: its stored file was damaged on the device "
                                                          f"(hash differs); upload it again under a new version")

    # ------------------------------------------------------------------ state

    def _entry(self, model_id: Any) -> dict:
        entry = self._state["models"].get(model_id) if isinstance(model_id, str) else None
        if entry is None:
            raise RepositoryError(404, "unknown_model", f"no model {model_id!r} on the device "
                                                        f"(stored: {sorted(self._state['models']) or 'none'})")
        return entry

    @staticmethod
    def _info(state: dict, model_id: str) -> ModelInfo:
        return ModelInfo.from_dict({k: v for k, v in state["models"][model_id].items() if k != "file"})

    def _copy_state(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._state))

    def _write_state(self, new: dict[str, Any]) -> None:
        """Replace state.json atomically, then the in-memory state (only if the write worked)."""
        data = json.dumps(new, indent=1, sort_keys=True).encode("utf-8")
        try:   # the temporary name, .state.json.<random>.tmp, is what recovery removes
            write_atomic(self._state_path, lambda f: f.write(data))
            fsync_dir(self.root)
        except OSError as exc:
            raise _storage_error("writing the model state", exc) from None
        self._state = new

    def _event(self, kind: str, message: str) -> None:
        with self._lock:
            self._events.append({"time": _utc_now(), "kind": kind, "message": message})

    def _notify(self) -> None:
        active = self.active()
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            callback(active)

    # ------------------------------------------------------------------ opening (recovery)

    def _open(self) -> dict[str, Any]:
        for f in sorted(self._incoming.iterdir()):
            _remove(f)
            self._recover(f"removed an unfinished upload {INCOMING_DIR}/{f.name}")
        for f in sorted(self.root.glob(f".{STATE_FILE}.*.tmp")):
            _remove(f)
            self._recover(f"removed an unfinished state write {f.name}")
        self._state = state = self._read_state()
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
                _remove(f)
                self._recover(f"removed {PACKAGES_DIR}/{f.name}: no stored model refers to it")
        if self._engines.is_dir():
            for d in sorted(self._engines.iterdir()):
                if f"{d.name}.crackpkg" not in referenced:
                    _remove(d)
                    self._recover(f"removed {ENGINES_DIR}/{d.name}: no stored model refers to it")
        if changed:
            self._write_state(state)
        return self._state

    def _read_state(self) -> dict[str, Any]:
        try:
            raw = self._state_path.read_bytes()
        except FileNotFoundError:
            if any(self._packages.iterdir()):
                return self._rebuild("state.json is missing")
            return _empty_state()
        try:
            return _check_state(json.loads(raw.decode("utf-8")))
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            kept = self.root / f"{STATE_FILE}.corrupt"
            os.replace(self._state_path, kept)
            return self._rebuild(f"state.json is corrupt ({exc}; kept as {kept.name})")

    def _rebuild(self, why: str) -> dict[str, Any]:
        """A state from the package files that verify; none active (which one was is unknown)."""
        state = _empty_state()
        files = sorted((f for f in self._packages.iterdir() if _FILE_RE.match(f.name)), key=lambda f: f.stat().st_mtime)
        for f in files:
            try:
                if _sha256_file(f) != f.name.split(".")[0]:
                    raise pkg.PackageError("the file's hash does not match its name")
                p = pkg.load_package(f)
            except (pkg.PackageError, OSError):
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
                             **_gate_fields(m))
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
            state["failed"][active] = {"time": _utc_now(), "reason": f"failed verification on start: {why}"}
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
            state["failed"][candidate] = {"time": _utc_now(), "reason": f"failed verification on start: {why}"}
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
            if _sha256_file(path) != entry["file"].split(".")[0]:
                return "its file was damaged on the device (hash differs from when it was stored)"
        except OSError as exc:
            return f"cannot read its file ({exc.strerror or exc})"
        return None

    def _recover(self, what: str) -> None:
        self.recovered.append(what)
        self._event("recovered", what)


def _gate_fields(manifest: pkg.Manifest) -> dict[str, Any]:
    """``promoted`` and ``override`` of the signed manifest's ``extra.lineage`` (a package made by
    ``distill update``; the signature covers them), for the model list; none for other packages."""
    lineage = (manifest.extra or {}).get("lineage")
    if not isinstance(lineage, dict):
        return {}
    promoted = lineage.get("promoted")
    override = lineage.get("override")
    return {"promoted": promoted if isinstance(promoted, bool) else None,
            "override": dict(override) if isinstance(override, dict) else None}


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _invalid(exc: pkg.PackageError, tmp: Path) -> RepositoryError:
    why = str(exc).replace(str(tmp), "package")  # no internal paths in answers
    return RepositoryError(422, "invalid_package", f"not a valid model package: {why}")


def _storage_error(doing: str, exc: OSError) -> RepositoryError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RepositoryError(507, "no_space", f"{doing} failed: the device is out of space")
    return RepositoryError(500, "storage_error", f"{doing} failed ({exc.strerror or exc})")

