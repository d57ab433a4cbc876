"""The flag store: flagged frames, their heat-maps and the inspector's review, on disk.

Layout under ``root`` (default: platformdirs ``user_data_dir("crack-inspector") / "flags"``)::

    flags.sqlite3                     one row per flag (SQLite, WAL journal, synchronous=FULL)
    images/2026-11/<uid>.frame.png    the frame, lossless RGB PNG (month of ``created``)
    images/2026-11/<uid>.heat.png     the heat-map, 8-bit PNG: pixel = value · 255, rounded, with
                                      the TURBO colour map as its palette, so a viewer shows it in
                                      colour (:mod:`inspector.store.heat_png`; stores written before
                                      that hold grey PNGs of the same values, read alike)
    .lock                             locked while a FlagStore has the folder open

File names are made from the flag's uid (uuid4 hex) and the month of its creation, never from
user text; a path read back from the database is checked against that pattern before use.

Crash safety
------------
Invariant: the two image files of every committed row exist, complete and durable. ``add``

1. encodes both PNGs in memory;
2. writes each to a temporary name (``.<name>.tmp``) in its final folder, flush + fsync;
3. renames it to its final name (atomic: a final name never holds a partial file);
4. fsyncs the folder, so the renames are durable;
5. only then INSERTs the row (one autocommit statement; WAL with ``synchronous=FULL`` makes
   the commit durable before it returns), and returns after that.

A crash at any moment therefore leaves a temporary file (in 2), image files without a row (in
3-5) or a complete committed row (after 5; SQLite's commit is atomic). Opening a store removes
temporary files and image files that no row claims and lists them in :class:`RecoveryReport`;
it never has to repair a row. A row whose image file is missing can only come from outside
(files deleted by hand, a database restored without its images). Such rows are **kept**: they
hold the inspector's review, location and note, which deleting cannot bring back. They are
listed in ``RecoveryReport.missing_images`` on every open, :meth:`FlagStore.load_frame` raises
:class:`StoreError` for them and :meth:`FlagStore.export_dataset` skips them.

The clean-up deletes files that no row claims, so two processes must never share a store: the
``.lock`` file is locked (flock / msvcrt) for the store's lifetime. The OS drops the lock when
the process dies, even by SIGKILL, so a crash never leaves a stale lock behind.

``tests/test_store.py`` kills a writing process with SIGKILL at random moments, many times over
one store, and checks the invariant: that proves the ordering against process crashes. The
fsyncs are what extends it to power loss, which a test cannot simulate.

Schema versions
---------------
``PRAGMA user_version`` is the schema version; the tables and migrations are in
:mod:`inspector.store.schema` (v1 flags, v2 review columns, v3 review state, teacher opinion,
ranking keys and the review log, v4 who gave each tile label). A database of a newer version is refused untouched: before
any write, and before the clean-up, which must not judge files by a schema it does not know.

Review changes
--------------
Every review change (frame label, tile labels, location, note, a deletion) is **one SQLite
transaction** that updates the row and appends its before/after values to ``review_log``, so a
crash loses at most the change in flight and the history always matches the rows
(``tests/test_review_store.py`` kills a relabelling process, like the flag test). Undo and redo
walk that log and are transactions too, so they survive a restart. A deletion only marks the row
(``deleted_at``): it can be undone until :meth:`FlagStore.purge_deleted` (the review view calls it
when it closes; opening the store purges what a crash left). The purge deletes the row and then
its files: a crash between the two leaves unclaimed images, which the next open removes. The log
keeps that the flag existed and was deleted. A full disk refuses the change with a
:class:`StoreError` and changes nothing (the transaction rolls back).

Threads
-------
One SQLite connection (``check_same_thread=False``) behind one lock: every method may be called
from any thread (the app's writer thread adds while the GUI thread lists). ``add`` encodes and
writes its image files outside the lock; only the INSERT holds it.

Bad arguments raise ValueError naming the argument; what goes wrong in the store itself (closed,
locked, newer schema, unknown id, missing file) raises :class:`StoreError`.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from inspector.fsio import fsync_dir, write_atomic
from inspector.store.heat_png import HeatPngError, decode_heat_png, encode_heat_png
from inspector.store.checks import (
    check_frame,
    check_frame_tiles,
    heat_to_uint8,
    check_choice,
    check_count,
    check_id,
    check_prob,
    check_text,
    utc,
)
from inspector.store.query import FlagFilter
from inspector.store.review import UNSET, ReviewMethods
from inspector.store.schema import (
    INSERT_COLUMNS,
    MIGRATIONS,
    REASONS,
    REVIEW_LABELS,
    SCHEMA_VERSION,
    SELECT,
    TILE_LABELS,
    FlagRecord,
    ModelRef,
    StoreError,
    record,
    uncertainty_of,
)

__all__ = ["FlagStore", "FlagFilter", "FlagRecord", "ModelRef", "StoreError", "RecoveryReport",
           "UNSET", "REASONS", "REVIEW_LABELS", "TILE_LABELS", "LABELS", "SCHEMA_VERSION"]

log = logging.getLogger(__name__)

APP_NAME = "crack-inspector"
DB_NAME = "flags.sqlite3"
LOCK_NAME = ".lock"
IMAGES_DIR = "images"
LABELS = TILE_LABELS  # the model's labels (kept for callers of the v2 API)

_IMAGE_RE = re.compile(r"^images/\d{4}-\d{2}/[0-9a-f]{32}\.(frame|heat)\.png$")
_IMAGE_NAME_RE = re.compile(r"^[0-9a-f]{32}\.(frame|heat)\.png$")
_TEMP_NAME_RE = re.compile(r"^\.[0-9a-f]{32}\.(frame|heat)\.png\.tmp$")
# the review fields a change may set, and what is written to the history for each
_REVIEW_FIELDS = ("label", "tile_labels", "reviewer", "reviewed_at", "location", "note", "deleted_at")


@dataclass(frozen=True)
class RecoveryReport:
    """What opening the store found and did (paths relative to the store root)."""

    migrated: tuple[int, int] | None = None      # (from, to) schema version; None if current or new
    temp_files_removed: tuple[str, ...] = ()
    orphan_images_removed: tuple[str, ...] = ()  # image files no row claimed
    missing_images: tuple[str, ...] = ()         # uids of rows whose image files are gone (rows kept)
    deleted_purged: tuple[str, ...] = ()         # uids of flags deleted before a crash, removed now

    @property
    def clean(self) -> bool:
        return not (self.temp_files_removed or self.orphan_images_removed or self.missing_images
                    or self.deleted_purged)

    def summary(self) -> str:
        parts = [f"migrated schema v{self.migrated[0]} -> v{self.migrated[1]}"] if self.migrated else []
        parts += [f"{len(v)} {k.replace('_', ' ')}" for k, v in (
            ("temp_files_removed", self.temp_files_removed),
            ("orphan_images_removed", self.orphan_images_removed),
            ("flags_with_missing_images", self.missing_images),
            ("deleted_flags_purged", self.deleted_purged)) if v]
        return "; ".join(parts) or "nothing to recover"


# --------------------------------------------------------------------------- the store


def default_root() -> Path:
    """The per-user store folder: platformdirs ``user_data_dir("crack-inspector") / "flags"``."""
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME)) / "flags"


def existing_store(root: Path | str | None) -> Path:
    """``root`` (default: :func:`default_root`) if it holds a flag store; StoreError otherwise.
    For readers (export, report): opening a :class:`FlagStore` would create an empty one."""
    root = Path(root) if root is not None else default_root()
    if not (root / DB_NAME).is_file():
        what = "the folder does not exist" if not root.exists() else f"it has no {DB_NAME}"
        raise StoreError(f"no flag store in {root} ({what}); check --store")
    return root


class FlagStore(ReviewMethods):
    """Flags in ``root`` (see the module docstring); a context manager that closes itself."""

    def __init__(self, root: Path | str | None = None) -> None:
        if root is None:
            root = default_root()
        self.root = Path(os.path.abspath(root))
        self._lock = threading.RLock()
        self._depth = 0   # nesting of _transaction on the thread that holds the lock
        self._db: sqlite3.Connection | None = None
        try:
            (self.root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create the flag store folder {self.root}: {err}") from err
        self._lock_file = _lock_folder(self.root / LOCK_NAME)
        try:
            self._db = sqlite3.connect(self.root / DB_NAME, isolation_level=None, check_same_thread=False)
            migrated = self._migrate(self._db)
            purged = self.purge_deleted()   # deletions a crash left undone: the user meant them
            self.recovered = self._recover(migrated, purged)
        except BaseException as err:
            self.close()
            if isinstance(err, sqlite3.DatabaseError):
                raise StoreError(f"{self.root / DB_NAME} is not a usable flag database: {err}") from err
            if isinstance(err, OSError):
                raise StoreError(f"cannot open the flag store {self.root}: {err}") from err
            raise
        if not self.recovered.clean:
            log.warning("flag store %s: %s", self.root, self.recovered.summary())

    def __enter__(self) -> FlagStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._db is None

    def close(self) -> None:
        """Close the database and release the folder (idempotent)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if getattr(self, "_lock_file", None) is not None:
                self._lock_file.close()  # closing the file drops the lock
                self._lock_file = None

    # ------------------------------------------------------------------ writing

    def add(self, frame_rgb, heatmap, tiles, *, reason, source, model: ModelRef, crack_prob_max,
            location=None, note=None, created=None) -> FlagRecord:
        """Store one flag; returns only once its row is committed and its files are durable."""
        frame = check_frame(frame_rgb)
        height, width = frame.shape[:2]
        heat = heat_to_uint8(heatmap, (height, width))
        tiles = check_frame_tiles(tiles, width, height)
        check_choice("reason", reason, REASONS)
        source = check_text("source", source, required=True)
        if not isinstance(model, ModelRef) or not all(isinstance(v, str) and v for v in asdict(model).values()):
            raise ValueError(f"model must be a ModelRef of non-empty strings, got {model!r}")
        crack_prob_max = check_prob("crack_prob_max", crack_prob_max)
        location, note = check_text("location", location), check_text("note", note)
        when = utc(created)
        self._open_db()
        uid = uuid.uuid4().hex
        shard = f"{IMAGES_DIR}/{when.year:04d}-{when.month:02d}"
        files = {f"{shard}/{uid}.frame.png": _encode_png(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)),
                 f"{shard}/{uid}.heat.png": encode_heat_png(heat)}
        try:
            folder = self.root / shard
            if not folder.is_dir():
                folder.mkdir(exist_ok=True)
                fsync_dir(folder.parent)
            for rel, data in files.items():
                _write_durable(self.root / rel, data)
            fsync_dir(folder)
        except OSError as err:
            _remove(self.root, files)
            raise StoreError(f"could not write the images of a flag to {self.root / shard}: {err}") from err
        frame_file, heatmap_file = files
        tiles_json = json.dumps(tiles, separators=(",", ":"))
        values = (uid, when.isoformat(timespec="milliseconds"), reason, source, model.name, model.version,
                  model.sha256, width, height, crack_prob_max, tiles_json, frame_file, heatmap_file,
                  location, note, None, uncertainty_of([t["crack_prob"] for t in tiles]))
        try:
            with self._lock:
                cursor = self._open_db().execute(
                    f"INSERT INTO flags ({', '.join(INSERT_COLUMNS)}) VALUES ({', '.join('?' * len(values))})",
                    values)
        except (sqlite3.Error, StoreError) as err:
            # The files stay: after an I/O error the commit may still reach the database (the WAL
            # frames were written), so only the next open can tell whether a row claims them.
            raise StoreError(f"could not store the flag in {self.root / DB_NAME}: {err}") from err
        return self.get(cursor.lastrowid)

    # ------------------------------------------------------------------ reading

    def get(self, flag_id: int) -> FlagRecord:
        flag_id = check_id(flag_id)
        with self._lock:
            row = self._open_db().execute(f"{SELECT} WHERE id = ?", (flag_id,)).fetchone()
        if row is None:
            raise StoreError(f"no flag with id {flag_id}")
        return record(row)

    def list(self, *, limit: int | None = None, offset: int = 0, reason: str | None = None) -> list[FlagRecord]:
        """Flags, newest first; only those flagged for ``reason`` if given (deleted ones never)."""
        limit = -1 if limit is None else check_count("limit", limit)  # SQLite: -1 = no limit
        offset = check_count("offset", offset)
        where, params = " WHERE deleted_at IS NULL", []
        if reason is not None:
            check_choice("reason", reason, REASONS)
            where, params = f"{where} AND reason = ?", [reason]
        with self._lock:
            rows = self._open_db().execute(f"{SELECT}{where} ORDER BY id DESC LIMIT ? OFFSET ?",
                                           (*params, limit, offset)).fetchall()
        return [record(row) for row in rows]

    def count(self) -> int:
        """Flags in the store (deleted ones not counted)."""
        with self._lock:
            return self._open_db().execute("SELECT COUNT(*) FROM flags WHERE deleted_at IS NULL").fetchone()[0]

    def load_frame(self, rec: FlagRecord) -> np.ndarray:
        """The flagged frame, RGB uint8 H×W×3."""
        img = self._read_image(rec, "frame_file", 3)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def load_heatmap(self, rec: FlagRecord) -> np.ndarray:
        """The heat-map, float32 H×W in [0, 1] (stored in steps of 1/255)."""
        return self._read_image(rec, "heatmap_file", 2).astype(np.float32) / np.float32(255)

    # ------------------------------------------------------------------ export

    def export_dataset(self, out_dir: str | os.PathLike, **options):
        """The flags as a dataset the distillation engine reads: see :func:`inspector.store.export.export_flags`."""
        from inspector.store.export import export_flags

        return export_flags(self, out_dir, **options)

    # ------------------------------------------------------------------ internals

    def _open_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"the flag store {self.root} is closed")
        return self._db

    @contextmanager
    def _transaction(self, what: str):
        """One write transaction under the lock (nested calls join the outer one). SQLite errors
        roll everything back and become a StoreError saying what could not be done and why."""
        with self._lock:
            db = self._open_db()
            if self._depth:
                self._depth += 1
                try:
                    yield db
                finally:
                    self._depth -= 1
                return
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise StoreError(f"cannot {what}: {err}") from err
            self._depth = 1
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as err:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(err, sqlite3.Error):
                    raise StoreError(_sqlite_reason(what, self.root, err)) from err
                raise
            finally:
                self._depth = 0

    def _remove_files(self, files) -> None:
        for rel in files:
            if _IMAGE_RE.match(rel):   # never follow a path the database was given
                try:
                    (self.root / rel).unlink(missing_ok=True)
                except OSError as err:
                    log.warning("flag store %s: could not remove %s (%s); the next open removes it", self.root, rel, err)

    def _migrate(self, db: sqlite3.Connection) -> tuple[int, int] | None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.root / DB_NAME} has flag schema v{version}, written by a newer crack-inspector; "
                f"this version knows up to v{SCHEMA_VERSION}. Update the app (the database was not touched).")
        if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise StoreError(f"{self.root / DB_NAME}: SQLite refused the WAL journal mode")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        if version == SCHEMA_VERSION:
            return None
        for step in range(version, SCHEMA_VERSION):
            db.execute("BEGIN IMMEDIATE")
            try:
                MIGRATIONS[step](db)
                db.execute(f"PRAGMA user_version = {step + 1:d}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if version:
            log.info("flag store %s: migrated schema v%d -> v%d", self.root, version, SCHEMA_VERSION)
        return (version, SCHEMA_VERSION)

    def _recover(self, migrated: tuple[int, int] | None, purged: list[str]) -> RecoveryReport:
        """Remove temporary files and unclaimed images; list rows whose images are missing."""
        claimed, missing = set(), []
        for uid, *files in self._db.execute("SELECT uid, frame_file, heatmap_file FROM flags ORDER BY id"):
            claimed.update(files)
            if not all(_IMAGE_RE.match(f) and (self.root / f).is_file() for f in files):
                missing.append(uid)
        temps, orphans = [], []
        for folder in sorted(p for p in (self.root / IMAGES_DIR).iterdir() if p.is_dir()):
            for path in sorted(folder.iterdir()):
                rel = f"{IMAGES_DIR}/{folder.name}/{path.name}"
                if not path.is_file():
                    log.warning("flag store %s: unexpected folder %s left alone", self.root, rel)
                elif _TEMP_NAME_RE.match(path.name):
                    path.unlink()
                    temps.append(rel)
                elif _IMAGE_NAME_RE.match(path.name) and rel not in claimed:
                    path.unlink()
                    orphans.append(rel)
                elif rel not in claimed:
                    log.warning("flag store %s: unexpected file %s left alone", self.root, rel)
        return RecoveryReport(migrated if migrated and migrated[0] else None,
                              tuple(temps), tuple(orphans), tuple(missing), tuple(purged))

    def _read_image(self, rec: FlagRecord, field: str, ndim: int) -> np.ndarray:
        if not isinstance(rec, FlagRecord):
            raise ValueError(f"expected a FlagRecord, got {type(rec).__name__}")
        rel = getattr(rec, field)
        if not _IMAGE_RE.match(rel):  # the database is a file too: never follow a path it was given
            raise StoreError(f"flag {rec.uid}: {rel!r} is not a flag-store image name")
        try:
            data = (self.root / rel).read_bytes()
        except OSError as err:
            raise StoreError(f"flag {rec.uid}: cannot read {rel}: {err}") from err
        if ndim == 2:  # the heat-map: a palette PNG (OpenCV would expand it to colours)
            try:
                img = decode_heat_png(data)
            except HeatPngError:
                img = None
        else:  # imdecode, not imread: imread cannot open non-ASCII paths on Windows (user folders).
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        expected = (rec.height, rec.width, 3)[:ndim]
        if img is None or img.dtype != np.uint8 or img.shape != expected:
            raise StoreError(f"flag {rec.uid}: {rel} is not a {'×'.join(map(str, expected))} 8-bit PNG")
        return img


# --------------------------------------------------------------------------- helpers


def _lock_folder(path: Path):
    """An open file holding an exclusive lock on ``path`` (closing it releases the lock)."""
    f = open(path, "a+b")
    try:
        if os.name == "nt":
            import msvcrt

            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        f.close()
        raise StoreError(f"the flag store {path.parent} is already open (another window or process); "
                         "close it first") from err
    return f


def _write_durable(path: Path, data: bytes) -> None:
    # A fixed temporary name, ".<name>.tmp": the one _TEMP_NAME_RE finds and removes after a crash
    # (the store's lock rules out a second writer of the same name).
    write_atomic(path, lambda f: f.write(data), tmp=path.with_name(f".{path.name}.tmp"))


def _remove(root: Path, files) -> None:
    for rel in files:
        try:
            (root / rel).unlink(missing_ok=True)
        except OSError:
            pass  # an unclaimed image; the next open removes it


def _encode_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise StoreError(f"OpenCV could not encode a {img.shape} {img.dtype} image as PNG")
    return buf.tobytes()


def _sqlite_reason(what: str, root: Path, err: sqlite3.Error) -> str:
    if "full" in str(err).lower():
        return (f"cannot {what}: the disk holding {root} is full ({err}); nothing was changed. "
                "Free some space and try again.")
    return f"cannot {what} in {root / DB_NAME}: {err}; nothing was changed"
