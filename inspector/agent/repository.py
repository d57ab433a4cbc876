"""The model store on the device: verified packages, the active version, rollback.

Where things are on disk, the format of ``state.json``, its atomic replacement and what opening
repairs are :mod:`inspector.agent.repository_state`'s. Every change here (store, activate,
rollback, mark failed) is one atomic replace of ``state.json`` made after the package file is
in place, so a crash leaves the old or the new state, both pointing at verified files.

An upload is refused before anything is stored unless it is a complete package
(:func:`inspector.edge.package.load_package`: manifest, model hash, ONNX contract, reference run),
signed by a trusted key, with the labels of the active model (a silent change of label order
is the classic field bug), not a different file under an existing id, and not a candidate its
gate refused (``extra.lineage.promoted`` false) unless the lineage carries the expert override.
The model list shows, per version, ``promoted`` and ``override`` from the signed lineage.
:attr:`ModelRepository.recovered` says what opening repaired.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import threading
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

from inspector.agent.repository_state import (CHUNK, Layout, RepositoryError, gate_fields, open_state,
                                              sha256_file, storage_error, utc_now, write_state)
from inspector.edge.fields import PackageError
from inspector.edge.manifest import Manifest
from inspector.edge.package import load_package, signed_payload
from inspector.fsio import fsync_dir
from inspector.link import signing
from inspector.link.protocol import MAX_PACKAGE_BYTES, ModelInfo, ModelList

KEEP_PREVIOUS = 5
MAX_EVENTS = 200
# Free space kept on the device beyond an upload: a full eMMC breaks logging and state writes.
SPACE_RESERVE = 32 << 20


class ModelRepository:
    """Model versions stored on the device (see the module doc). Thread-safe.

    ``trusted_keys`` returns the keys allowed to sign uploads (key id -> raw Ed25519 public
    key), asked at each upload so pairing a new app takes effect at once. ``max_bytes`` caps
    an upload before a byte of it is read.
    """

    def __init__(self, root: str | os.PathLike, *, trusted_keys: Callable[[], Mapping[str, bytes]] = dict,
                 max_bytes: int = MAX_PACKAGE_BYTES):
        self.root = Path(root)
        self._layout = Layout(self.root)
        self._packages, self._incoming = self._layout.packages, self._layout.incoming
        self._engines = self._layout.engines
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
            self._state, changed = open_state(self._layout, trusted_keys, self._recover, self._event)
            if changed:
                self._write_state(self._state)
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
            raise storage_error("storing the upload", exc) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, h.hexdigest()

    def _same_content(self, stored_file: str, manifest: Manifest) -> bool:
        """The stored package has the same model and the same signed manifest fields."""
        try:
            stored = load_package(self._packages / stored_file, verify_reference=False).manifest
        except (PackageError, OSError):
            return False
        return signed_payload(stored) == signed_payload(manifest)  # covers model_sha256

    def _verify_and_commit(self, tmp: Path, file_sha: str, size: int, *, source: str, local: bool) -> ModelInfo:
        # Outside the lock (a reference run takes about a second): the manifest, hashes and the
        # graph first, then the signature, and only a package signed by a trusted key (or one
        # the operator gave) is run by onnxruntime.
        try:
            p = load_package(tmp, verify_reference=False)
        except PackageError as exc:
            raise _invalid(exc, tmp) from None
        signed_by = None if local else self._check_signature(p.manifest)
        try:
            load_package(tmp, verify_reference=True)
        except PackageError as exc:
            raise _invalid(exc, tmp) from None
        m = p.manifest
        info = ModelInfo(id=f"{m.name}-{m.version}", name=m.name, version=m.version, sha256=m.model_sha256,
                         size=size, labels=list(m.labels), input_size=m.input.size, quantization=m.quantization.type,
                         signed_by=signed_by, stored=utc_now(), **gate_fields(m))
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
            gate = gate_fields(m)
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
                raise storage_error("storing the package", exc) from None
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

    def _check_signature(self, manifest: Manifest) -> str:
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
            new["failed"][model_id] = {"time": utc_now(), "reason": str(reason)[:500]}
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
            ok = sha256_file(path) == entry["file"].split(".")[0]
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
        write_state(self._layout, new)
        self._state = new

    def _event(self, kind: str, message: str) -> None:
        with self._lock:
            self._events.append({"time": utc_now(), "kind": kind, "message": message})

    def _notify(self) -> None:
        active = self.active()
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            callback(active)

    def _recover(self, what: str) -> None:
        self.recovered.append(what)
        self._event("recovered", what)


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _invalid(exc: PackageError, tmp: Path) -> RepositoryError:
    why = str(exc).replace(str(tmp), "package")  # no internal paths in answers
    return RepositoryError(422, "invalid_package", f"not a valid model package: {why}")

