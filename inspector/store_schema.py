"""The flag store's database: its tables, migrations, and the records read from it.

``PRAGMA user_version`` is the schema version. ``MIGRATIONS[v]`` takes a database from version
v to v+1; the store runs each inside one transaction together with the version bump, so a crash
mid-migration leaves the old version.

- v1: the ``flags`` table.
- v2: the review columns ``location``, ``note`` and ``label``.
- v3: the review state: ``tile_labels`` (JSON list, one label per tile, set once a frame is
  reviewed), ``reviewer``, ``reviewed_at``; the teacher ensemble's opinion ``teacher_probs``
  (JSON list per tile) and ``teacher_model``; the ranking keys ``uncertainty`` and
  ``disagreement`` (computed when a flag is stored or scored, so sorting never parses JSON);
  ``deleted_at`` (a deletion that can still be undone); indexes for every sort key; and the
  ``review_log`` table, the history of every review change, undo and redo included.

Only the standard library and numpy-free arithmetic: the Jetson agent never opens a flag store,
but the app's background threads do, and they must not need more than this.
"""
from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from typing import Sequence

SCHEMA_VERSION = 3
REASONS = ("manual", "crack", "uncertain")
TILE_LABELS = ("crack", "no_crack")           # the model's labels; a reviewed tile carries one
REVIEW_LABELS = ("crack", "no_crack", "unsure")  # what an inspector can say of a whole frame

COLUMNS = ("id", "uid", "created", "reason", "source", "model_name", "model_version", "model_sha256",
           "width", "height", "crack_prob_max", "tiles", "frame_file", "heatmap_file",
           "location", "note", "label",
           "tile_labels", "reviewer", "reviewed_at", "teacher_probs", "teacher_model",
           "uncertainty", "disagreement", "deleted_at")
INSERT_COLUMNS = COLUMNS[1:17] + ("uncertainty",)
SELECT = f"SELECT {', '.join(COLUMNS)} FROM flags"


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
    tiles: tuple[dict, ...]         # {"box": [x0, y0, x1, y1], "crack_prob": p} (the student's)
    frame_file: str                 # relative to the store root
    heatmap_file: str
    location: str | None = None
    note: str | None = None
    label: str | None = None        # reviewed label of the frame (REVIEW_LABELS), None = not reviewed
    tile_labels: tuple[str, ...] | None = None   # per tile (TILE_LABELS), set by a review
    reviewer: str | None = None
    reviewed_at: str | None = None  # ISO-8601 UTC of the last review change
    teacher_probs: tuple[float, ...] | None = None  # the teacher ensemble's crack p per tile
    teacher_model: str | None = None                # "name version sha256" of that ensemble
    uncertainty: float = 0.0        # max binary entropy (bits) of the student's tile probabilities
    disagreement: float | None = None  # max |p_teacher - p_student| over tiles; None until scored
    deleted_at: str | None = None   # deleted, undoable until purged

    @property
    def reviewed(self) -> bool:
        return self.label is not None

    @property
    def student_probs(self) -> tuple[float, ...]:
        return tuple(float(t["crack_prob"]) for t in self.tiles)

    def tile_disagreement(self) -> tuple[float, ...] | None:
        """|p_teacher − p_student| per tile, None until the teachers scored this flag."""
        if self.teacher_probs is None:
            return None
        return tuple(abs(t - s) for t, s in zip(self.teacher_probs, self.student_probs))

    def model_tile_labels(self, threshold: float = 0.5) -> tuple[str, ...]:
        """The student's verdict per tile: crack at p >= ``threshold``."""
        return tuple("crack" if p >= threshold else "no_crack" for p in self.student_probs)

    def effective_tile_labels(self, threshold: float = 0.5) -> tuple[str, ...]:
        """The reviewed tile labels, else the student's verdicts (what the review view shows)."""
        return self.tile_labels if self.tile_labels is not None else self.model_tile_labels(threshold)


def binary_entropy(p: float) -> float:
    """H(p) in bits: 0 for a sure verdict, 1 at p = 0.5."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1.0 - p) * math.log2(1.0 - p))


def uncertainty_of(probs: Sequence[float]) -> float:
    """A frame's uncertainty: the entropy of its most uncertain tile (one unsure tile is what
    makes a frame worth a look; a mean would drown it in the clean tiles around it)."""
    return max((binary_entropy(p) for p in probs), default=0.0)


def disagreement_of(teacher: Sequence[float], student: Sequence[float]) -> float:
    """A frame's disagreement: the largest |p_teacher − p_student| over its tiles."""
    return max((abs(t - s) for t, s in zip(teacher, student)), default=0.0)


def record(row: Sequence) -> FlagRecord:
    r = dict(zip(COLUMNS, row))
    return FlagRecord(
        r["id"], r["uid"], r["created"], r["reason"], r["source"],
        ModelRef(r["model_name"], r["model_version"], r["model_sha256"]),
        r["width"], r["height"], r["crack_prob_max"], tuple(json.loads(r["tiles"])),
        r["frame_file"], r["heatmap_file"], r["location"], r["note"], r["label"],
        tuple(json.loads(r["tile_labels"])) if r["tile_labels"] else None,
        r["reviewer"], r["reviewed_at"],
        tuple(json.loads(r["teacher_probs"])) if r["teacher_probs"] else None,
        r["teacher_model"], r["uncertainty"] or 0.0, r["disagreement"], r["deleted_at"])


# --------------------------------------------------------------------------- migrations


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


def _v3_review_state(db: sqlite3.Connection) -> None:
    for column, kind in (("tile_labels", "TEXT"), ("reviewer", "TEXT"), ("reviewed_at", "TEXT"),
                         ("teacher_probs", "TEXT"), ("teacher_model", "TEXT"),
                         ("uncertainty", "REAL NOT NULL DEFAULT 0"), ("disagreement", "REAL"),
                         ("deleted_at", "TEXT")):
        db.execute(f"ALTER TABLE flags ADD COLUMN {column} {kind}")
    # every flag already stored gets its ranking key; a v2 label stays the frame's label, and its
    # tiles follow it as the v2 export did (no_crack: every tile; crack: left to the next review)
    for flag_id, tiles, label in db.execute("SELECT id, tiles, label FROM flags").fetchall():
        probs = [float(t["crack_prob"]) for t in json.loads(tiles)]
        tile_labels = json.dumps(["no_crack"] * len(probs)) if label == "no_crack" else None
        db.execute("UPDATE flags SET uncertainty = ?, tile_labels = ? WHERE id = ?",
                   (uncertainty_of(probs), tile_labels, flag_id))
    create_sort_indexes(db)
    db.execute("""CREATE TABLE review_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, reviewer TEXT,
        flag_uid TEXT NOT NULL, action TEXT NOT NULL,
        before TEXT NOT NULL, after TEXT NOT NULL,
        state INTEGER NOT NULL DEFAULT 0, batch INTEGER)""")  # state: store_history.DONE/UNDONE/CLOSED
    db.execute("CREATE INDEX review_log_by_state ON review_log (state, seq)")
    db.execute("CREATE INDEX review_log_by_flag ON review_log (flag_uid, seq)")


# The review view's queries read only these columns of ``flags``: each sort has an index in its
# own order that also holds them ("covering"), so listing 10,000 flags scans one narrow index in
# order instead of the wide rows (tiles JSON) plus a sort. Measured on a 10,000-flag store:
# 17 ms -> 4.5 ms for the ids of the whole list (benchmarks/review_bench.py).
_COVERED = ("deleted_at, label, reason, source, location, model_version, created, crack_prob_max, uncertainty, "
            "disagreement, note")
SORT_INDEXES = {
    "need": "disagreement IS NULL, disagreement DESC, uncertainty DESC, id DESC",
    "time": "created DESC, id DESC",
    "probability": "crack_prob_max DESC, id DESC",
    "uncertainty": "uncertainty DESC, id DESC",
}


def create_sort_indexes(db: sqlite3.Connection) -> None:
    for name, keys in SORT_INDEXES.items():
        db.execute(f"CREATE INDEX IF NOT EXISTS flags_sort_{name} ON flags ({keys}, {_COVERED})")


MIGRATIONS = (_v1_flags_table, _v2_review_columns, _v3_review_state)  # [v]: version v -> v + 1
assert len(MIGRATIONS) == SCHEMA_VERSION
