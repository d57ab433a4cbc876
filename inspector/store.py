"""The flag store: flagged frames, their heat-maps and the inspector's review, on disk.

Layout under ``root`` (default: platformdirs ``user_data_dir("crack-inspector") / "flags"``)::

    flags.sqlite3                     one row per flag (SQLite, WAL journal, synchronous=FULL)
    images/2026-11/<uid>.frame.png    the frame, lossless RGB PNG (month of ``created``)
    images/2026-11/<uid>.heat.png     the heat-map, 8-bit grey PNG (value · 255, rounded)
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
``PRAGMA user_version`` is the schema version. ``_MIGRATIONS[v]`` takes a database from version
v to v+1 inside one transaction together with the version bump, so a crash mid-migration leaves
the old version. v1: the flag table; v2 adds the review columns ``location``, ``note`` and
``label``. A database of a newer version is refused untouched: before any write, and before
the clean-up, which must not judge files by a schema it does not know.

Threads
-------
One SQLite connection (``check_same_thread=False``) behind one lock: every method may be called
from any thread (the app's writer thread adds while the GUI thread lists). ``add`` encodes and
writes its image files outside the lock; only the INSERT holds it.

Bad arguments raise ValueError naming the argument; what goes wrong in the store itself (closed,
locked, newer schema, unknown id, missing file) raises :class:`StoreError`.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import math
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .fsio import fsync_dir, write_atomic

log = logging.getLogger(__name__)

APP_NAME = "crack-inspector"
DB_NAME = "flags.sqlite3"
LOCK_NAME = ".lock"
IMAGES_DIR = "images"
REASONS = ("manual", "crack", "uncertain")
LABELS = ("crack", "no_crack")  # the model's labels; a reviewed frame carries one of them
SCHEMA_VERSION = 2
# A heat-map a float-rounding hair above 1 (a caller's own normalisation) is clipped, not refused.
_HEAT_TOLERANCE = 1e-6

_IMAGE_RE = re.compile(r"^images/\d{4}-\d{2}/[0-9a-f]{32}\.(frame|heat)\.png$")
_IMAGE_NAME_RE = re.compile(r"^[0-9a-f]{32}\.(frame|heat)\.png$")
_TEMP_NAME_RE = re.compile(r"^\.[0-9a-f]{32}\.(frame|heat)\.png\.tmp$")
_COLUMNS = ("id", "uid", "created", "reason", "source", "model_name", "model_version", "model_sha256",
            "width", "height", "crack_prob_max", "tiles", "frame_file", "heatmap_file",
            "location", "note", "label")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM flags"
_METADATA_FIELDS = ("file", "flag_uid", "box", "crack_prob", "label", "label_source", "source", "model_name",
                    "model_version", "model_sha256", "created", "location", "note")


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()  # "argument not given" for update(), where None means "clear"


class StoreError(RuntimeError):
    """The flag store cannot do what was asked; the message says why."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class FlagRecord:
    id: int
    uid: str
    created: str                    # ISO-8601 UTC
    reason: str                     # "manual" | "crack" | "uncertain"
    source: str
    model: ModelRef
    width: int
    height: int
    crack_prob_max: float
    tiles: tuple[dict, ...]         # {"box": [x0, y0, x1, y1], "crack_prob": p}
    frame_file: str                 # relative to the store root
    heatmap_file: str
    location: str | None
    note: str | None
    label: str | None               # reviewed label of the frame, None = not reviewed


@dataclass(frozen=True)
class RecoveryReport:
    """What opening the store found and did (paths relative to the store root)."""

    migrated: tuple[int, int] | None = None      # (from, to) schema version; None if current or new
    temp_files_removed: tuple[str, ...] = ()
    orphan_images_removed: tuple[str, ...] = ()  # image files no row claimed
    missing_images: tuple[str, ...] = ()         # uids of rows whose image files are gone (rows kept)

    @property
    def clean(self) -> bool:
        return not (self.temp_files_removed or self.orphan_images_removed or self.missing_images)

    def summary(self) -> str:
        parts = [f"migrated schema v{self.migrated[0]} -> v{self.migrated[1]}"] if self.migrated else []
        parts += [f"{len(v)} {k.replace('_', ' ')}" for k, v in (
            ("temp_files_removed", self.temp_files_removed),
            ("orphan_images_removed", self.orphan_images_removed),
            ("flags_with_missing_images", self.missing_images)) if v]
        return "; ".join(parts) or "nothing to recover"


@dataclass(frozen=True)
class ExportReport:
    out_dir: Path
    flags: int                    # flags whose patches were exported
    crack: int                    # patches per label
    no_crack: int
    reviewed: int                 # patches labelled by a review (the rest by the model)
    skipped: tuple[str, ...]      # uids left out because their frame could not be read

    @property
    def patches(self) -> int:
        return self.crack + self.no_crack


# --------------------------------------------------------------------------- schema


def _v1_flags_table(db: sqlite3.Connection) -> None:
    db.execute("""CREATE TABLE flags (
        id INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT NOT NULL UNIQUE, created TEXT NOT NULL,
        reason TEXT NOT NULL, source TEXT NOT NULL,
        model_name TEXT NOT NULL, model_version TEXT NOT NULL, model_sha256 TEXT NOT NULL,
        width INTEGER NOT NULL, height INTEGER NOT NULL, crack_prob_max REAL NOT NULL,
        tiles TEXT NOT NULL, frame_file TEXT NOT NULL, heatmap_file TEXT NOT NULL)""")
    db.execute("CREATE INDEX flags_by_reason ON flags (reason, id)")


def _v2_review_columns(db: sqlite3.Connection) -> None:
    for column in ("location", "note", "label"):
        db.execute(f"ALTER TABLE flags ADD COLUMN {column} TEXT")


_MIGRATIONS = (_v1_flags_table, _v2_review_columns)  # _MIGRATIONS[v]: version v -> v + 1
assert len(_MIGRATIONS) == SCHEMA_VERSION


# --------------------------------------------------------------------------- the store


class FlagStore:
    """Flags in ``root`` (see the module docstring); a context manager that closes itself."""

    def __init__(self, root: Path | str | None = None) -> None:
        if root is None:
            import platformdirs

            root = Path(platformdirs.user_data_dir(APP_NAME)) / "flags"
        self.root = Path(os.path.abspath(root))
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        try:
            (self.root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create the flag store folder {self.root}: {err}") from err
        self._lock_file = _lock_folder(self.root / LOCK_NAME)
        try:
            self._db = sqlite3.connect(self.root / DB_NAME, isolation_level=None, check_same_thread=False)
            migrated = self._migrate(self._db)
            self.recovered = self._recover(migrated)
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
        frame = _check_frame(frame_rgb)
        height, width = frame.shape[:2]
        heat = _heat_to_uint8(heatmap, (height, width))
        tiles = _check_tiles(tiles, width, height)
        _check_choice("reason", reason, REASONS)
        source = _check_text("source", source, required=True)
        if not isinstance(model, ModelRef) or not all(isinstance(v, str) and v for v in asdict(model).values()):
            raise ValueError(f"model must be a ModelRef of non-empty strings, got {model!r}")
        crack_prob_max = _check_prob("crack_prob_max", crack_prob_max)
        location, note = _check_text("location", location), _check_text("note", note)
        when = _utc(created)
        self._open_db()
        uid = uuid.uuid4().hex
        shard = f"{IMAGES_DIR}/{when.year:04d}-{when.month:02d}"
        files = {f"{shard}/{uid}.frame.png": _encode_png(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)),
                 f"{shard}/{uid}.heat.png": _encode_png(heat)}
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
                  location, note)
        try:
            with self._lock:
                cursor = self._open_db().execute(
                    f"INSERT INTO flags ({', '.join(_COLUMNS[1:-1])}) VALUES ({', '.join('?' * len(values))})",
                    values)
        except (sqlite3.Error, StoreError) as err:
            # The files stay: after an I/O error the commit may still reach the database (the WAL
            # frames were written), so only the next open can tell whether a row claims them.
            raise StoreError(f"could not store the flag in {self.root / DB_NAME}: {err}") from err
        return FlagRecord(cursor.lastrowid, *values[:4], model, width, height, crack_prob_max,
                          tuple(tiles), frame_file, heatmap_file, location, note, None)

    def update(self, flag_id: int, *, location=UNSET, note=UNSET, label=UNSET) -> FlagRecord:
        """Change the review fields that are given (None clears one); returns the new record."""
        flag_id = _check_id(flag_id)
        changes = {}
        if location is not UNSET:
            changes["location"] = _check_text("location", location)
        if note is not UNSET:
            changes["note"] = _check_text("note", note)
        if label is not UNSET:
            if label is not None:
                _check_choice("label", label, LABELS)
            changes["label"] = label
        with self._lock:
            if changes:
                assignments = ", ".join(f"{column} = ?" for column in changes)  # fixed names, not input
                cursor = self._open_db().execute(
                    f"UPDATE flags SET {assignments} WHERE id = ?", (*changes.values(), flag_id))
                if cursor.rowcount == 0:
                    raise StoreError(f"no flag with id {flag_id}")
            return self.get(flag_id)

    # ------------------------------------------------------------------ reading

    def get(self, flag_id: int) -> FlagRecord:
        flag_id = _check_id(flag_id)
        with self._lock:
            row = self._open_db().execute(f"{_SELECT} WHERE id = ?", (flag_id,)).fetchone()
        if row is None:
            raise StoreError(f"no flag with id {flag_id}")
        return _record(row)

    def list(self, *, limit: int | None = None, offset: int = 0, reason: str | None = None) -> list[FlagRecord]:
        """Flags, newest first; only those flagged for ``reason`` if given."""
        limit = -1 if limit is None else _check_count("limit", limit)  # SQLite: -1 = no limit
        offset = _check_count("offset", offset)
        where, params = "", []
        if reason is not None:
            _check_choice("reason", reason, REASONS)
            where, params = " WHERE reason = ?", [reason]
        with self._lock:
            rows = self._open_db().execute(f"{_SELECT}{where} ORDER BY id DESC LIMIT ? OFFSET ?",
                                           (*params, limit, offset)).fetchall()
        return [_record(row) for row in rows]

    def count(self) -> int:
        with self._lock:
            return self._open_db().execute("SELECT COUNT(*) FROM flags").fetchone()[0]

    def load_frame(self, rec: FlagRecord) -> np.ndarray:
        """The flagged frame, RGB uint8 H×W×3."""
        img = self._read_image(rec, "frame_file", 3)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def load_heatmap(self, rec: FlagRecord) -> np.ndarray:
        """The heat-map, float32 H×W in [0, 1] (stored in steps of 1/255)."""
        return self._read_image(rec, "heatmap_file", 2).astype(np.float32) / np.float32(255)

    # ------------------------------------------------------------------ export

    def export_dataset(self, out_dir: str | os.PathLike, *, threshold: float = 0.5) -> ExportReport:
        """Write every flag as labelled tile patches in the "folders" layout of the distillation
        engine (``out/crack/*.png``, ``out/no_crack/*.png``) plus ``metadata.csv`` and
        ``metadata.json`` (one row per patch).

        A tile's label is ``no_crack`` for every tile of a frame reviewed as "no_crack"
        (label_source "review"); otherwise the model's verdict, crack if its crack_prob >=
        ``threshold`` (label_source "model"): a frame reviewed as "crack" does not say which of
        its tiles show the crack. Patches are named ``<flag uid>_<tile index>.png``.
        """
        threshold = _check_prob("threshold", threshold)
        if threshold == 0:
            raise ValueError("threshold must be in (0, 1]: at 0 every tile would be a crack")
        out = Path(out_dir)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise StoreError(f"{out} is not an empty folder; export into a new or empty one")
        with self._lock:
            records = [_record(row) for row in self._open_db().execute(f"{_SELECT} ORDER BY id").fetchall()]
        for label in LABELS:
            (out / label).mkdir(parents=True, exist_ok=True)
        rows, skipped, flags = [], [], 0
        for rec in records:
            try:
                frame = self.load_frame(rec)
            except StoreError as err:
                log.warning("export: flag %s skipped: %s", rec.uid, err)
                skipped.append(rec.uid)
                continue
            flags += 1
            for i, tile in enumerate(rec.tiles):
                x0, y0, x1, y1 = tile["box"]
                by_review = rec.label == "no_crack"
                label = "no_crack" if by_review or tile["crack_prob"] < threshold else "crack"
                name = f"{label}/{rec.uid}_{i:03d}.png"
                patch = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2BGR)
                (out / name).write_bytes(_encode_png(patch))
                rows.append({"file": name, "flag_uid": rec.uid, "box": [x0, y0, x1, y1],
                             "crack_prob": tile["crack_prob"], "label": label,
                             "label_source": "review" if by_review else "model", "source": rec.source,
                             "model_name": rec.model.name, "model_version": rec.model.version,
                             "model_sha256": rec.model.sha256, "created": rec.created,
                             "location": rec.location, "note": rec.note})
        _write_metadata(out, rows, threshold)
        count = {label: sum(r["label"] == label for r in rows) for label in LABELS}
        return ExportReport(out, flags, count["crack"], count["no_crack"],
                            sum(r["label_source"] == "review" for r in rows), tuple(skipped))

    # ------------------------------------------------------------------ internals

    def _open_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"the flag store {self.root} is closed")
        return self._db

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
                _MIGRATIONS[step](db)
                db.execute(f"PRAGMA user_version = {step + 1:d}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if version:
            log.info("flag store %s: migrated schema v%d -> v%d", self.root, version, SCHEMA_VERSION)
        return (version, SCHEMA_VERSION)

    def _recover(self, migrated: tuple[int, int] | None) -> RecoveryReport:
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
                              tuple(temps), tuple(orphans), tuple(missing))

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
        # imdecode, not imread: imread cannot open non-ASCII paths on Windows (user folders).
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


# A spreadsheet runs a cell that starts with one of these as a formula ("CSV injection"): a
# note typed in the field, e.g. "=HYPERLINK(...)", must open as the text it is.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_text(value: str | None) -> str:
    """A free-text field for metadata.csv: an apostrophe before a formula start (spreadsheets
    show the text without it); metadata.json keeps the text exactly as typed."""
    text = value or ""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _write_metadata(out: Path, rows: list[dict], threshold: float) -> None:
    with open(out / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_METADATA_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "box": " ".join(map(str, row["box"])), "source": _csv_text(row["source"]),
                             "location": _csv_text(row["location"]), "note": _csv_text(row["note"])})
    doc = {"format": "crack-inspector-flags-export/1", "threshold": threshold, "labels": list(LABELS),
           "patches": rows}
    (out / "metadata.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False), encoding="utf-8")


def _record(row: tuple) -> FlagRecord:
    r = dict(zip(_COLUMNS, row))
    return FlagRecord(r["id"], r["uid"], r["created"], r["reason"], r["source"],
                      ModelRef(r["model_name"], r["model_version"], r["model_sha256"]),
                      r["width"], r["height"], r["crack_prob_max"], tuple(json.loads(r["tiles"])),
                      r["frame_file"], r["heatmap_file"], r["location"], r["note"], r["label"])


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _check_prob(name: str, v) -> float:
    if not _is_number(v) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
    return float(v)


def _check_id(flag_id) -> int:
    if not isinstance(flag_id, (int, np.integer)) or isinstance(flag_id, bool):
        raise ValueError(f"a flag id is an integer, got {flag_id!r}")
    return int(flag_id)


def _check_count(name: str, v) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    return int(v)


def _check_choice(name: str, v, choices: tuple[str, ...]) -> None:
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {v!r}")


def _check_text(name: str, v, *, required: bool = False) -> str | None:
    """A string; empty or blank means "none" (and is refused where ``required``)."""
    if v is not None and not isinstance(v, str):
        raise ValueError(f"{name} must be text or None, got {type(v).__name__}")
    if v is None or not v.strip():
        if required:
            raise ValueError(f"{name} must be a non-empty string, got {v!r}")
        return None
    return v


def _check_frame(frame) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame_rgb must be a numpy array (H×W×3 uint8 RGB), got {type(frame).__name__}")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
        raise ValueError(f"frame_rgb must be H×W×3 uint8 RGB, got shape {frame.shape} dtype {frame.dtype}")
    return np.ascontiguousarray(frame)


def _heat_to_uint8(heatmap, shape: tuple[int, int]) -> np.ndarray:
    if not isinstance(heatmap, np.ndarray) or not np.issubdtype(heatmap.dtype, np.floating):
        raise ValueError(f"heatmap must be a float numpy array H×W in [0, 1], got "
                         f"{getattr(heatmap, 'dtype', type(heatmap).__name__)}")
    if heatmap.shape != shape:
        raise ValueError(f"heatmap shape {heatmap.shape} does not match the frame's {shape}")
    if not np.isfinite(heatmap).all():
        raise ValueError("heatmap contains NaN or infinity")
    low, high = float(heatmap.min()), float(heatmap.max())
    if low < 0.0 or high > 1.0 + _HEAT_TOLERANCE:
        raise ValueError(f"heatmap values must be in [0, 1], got [{low:g}, {high:g}]")
    return np.rint(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_tiles(tiles, width: int, height: int) -> list[dict]:
    """Tiles as plain dicts; a tile is a mapping or an object (the engine's TileResult) with
    ``box`` (x0, y0, x1, y1 inside the frame, x1/y1 exclusive) and ``crack_prob``."""
    if isinstance(tiles, (str, bytes)) or not isinstance(tiles, Sequence):
        raise ValueError(f"tiles must be a sequence of tiles, got {type(tiles).__name__}")
    out = []
    for i, tile in enumerate(tiles):
        get = tile.get if isinstance(tile, Mapping) else lambda key, t=tile: getattr(t, key, None)
        box, prob = get("box"), get("crack_prob")
        if (not isinstance(box, (Sequence, np.ndarray)) or len(box) != 4
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in box)):
            raise ValueError(f"tiles[{i}]: box must be 4 integers [x0, y0, x1, y1], got {box!r}")
        x0, y0, x1, y1 = (int(v) for v in box)
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(f"tiles[{i}]: box {[x0, y0, x1, y1]} is not inside the {width}×{height} frame")
        out.append({"box": [x0, y0, x1, y1], "crack_prob": _check_prob(f"tiles[{i}].crack_prob", prob)})
    return out


def _utc(created) -> _dt.datetime:
    if created is None:
        return _dt.datetime.now(_dt.timezone.utc)
    if isinstance(created, str):
        try:
            created = _dt.datetime.fromisoformat(created)
        except ValueError:
            raise ValueError(f"created must be an ISO-8601 time with a UTC offset, got {created!r}") from None
    if not isinstance(created, _dt.datetime) or created.tzinfo is None:
        raise ValueError(f"created must be a timezone-aware datetime or ISO-8601 string, got {created!r}")
    return created.astimezone(_dt.timezone.utc)
