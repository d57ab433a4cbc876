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
- v4: who gave each tile label: ``tile_sources`` (JSON list, one per tile: ``marked`` the person
  toggled that tile, ``frame_clean`` the person called the whole frame clean (N), ``accepted``
  the person accepted the verdicts shown (Space), or null). A tile label exists only when a
  person set it: ``tile_labels`` may hold null per tile (unknown), and a tile whose label is
  null has a null source. Tile labels the old ``C`` copied from the student's verdicts become
  unknown (see :func:`_v4_tile_sources` for how they are told apart).

Only the standard library and numpy-free arithmetic: the Jetson agent never opens a flag store,
but the app's background threads do, and they must not need more than this.
"""
from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from typing import Sequence
from inspector.errors import InspectorError

SCHEMA_VERSION = 4
REASONS = ("manual", "crack", "uncertain")
TILE_LABELS = ("crack", "no_crack")           # the model's labels; a reviewed tile carries one
REVIEW_LABELS = ("crack", "no_crack", "unsure")  # what an inspector can say of a whole frame
# how a person gave a tile its label; a tile without one has no label (unknown)
TILE_SOURCES = ("marked", "frame_clean", "accepted")
# a person's label the teachers confidently contradict: a clean tile they call crack at p >= CRACK,
# a crack tile they call clean at p <= CLEAN (FlagRecord.contradicted; query.CONTRADICTED in SQL)
CONTRADICTION_CRACK_P, CONTRADICTION_CLEAN_P = 0.9, 0.1

COLUMNS = ("id", "uid", "created", "reason", "source", "model_name", "model_version", "model_sha256",
           "width", "height", "crack_prob_max", "tiles", "frame_file", "heatmap_file",
           "location", "note", "label",
           "tile_labels", "reviewer", "reviewed_at", "teacher_probs", "teacher_model",
           "uncertainty", "disagreement", "deleted_at", "tile_sources")
INSERT_COLUMNS = COLUMNS[1:17] + ("uncertainty",)
SELECT = f"SELECT {', '.join(COLUMNS)} FROM flags"


class StoreError(InspectorError, RuntimeError):
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
    tile_labels: tuple[str | None, ...] | None = None  # per tile (TILE_LABELS or None = unknown), set by
                                                       # a person; None: no tile known
    reviewer: str | None = None
    reviewed_at: str | None = None  # ISO-8601 UTC of the last review change
    teacher_probs: tuple[float, ...] | None = None  # the teacher ensemble's crack p per tile
    teacher_model: str | None = None                # "name version sha256" of that ensemble
    uncertainty: float = 0.0        # max binary entropy (bits) of the student's tile probabilities
    disagreement: float | None = None  # max |p_teacher - p_student| over tiles; None until scored
    deleted_at: str | None = None   # deleted, undoable until purged
    tile_sources: tuple[str | None, ...] | None = None  # per tile (TILE_SOURCES), None where unknown

    @property
    def reviewed(self) -> bool:
        return self.label is not None

    @property
    def needs_tiles(self) -> bool:
        """A crack frame without any tile a person called crack: the view asks for the crack tiles."""
        return self.label == "crack" and "crack" not in (self.tile_labels or ())

    @property
    def contradicted(self) -> bool:
        """A label of this frame the teachers confidently say the opposite of, on some tile (a clean
        frame's tile at p >= 0.9, a tile marked crack at p <= 0.1, one marked clean at p >= 0.9)."""
        t = self.teacher_probs
        if t is None:
            return False
        if self.label == "no_crack":
            return any(p >= CONTRADICTION_CRACK_P for p in t)
        if self.label == "crack" and self.tile_labels is not None:
            return any((lab == "crack" and p <= CONTRADICTION_CLEAN_P)
                       or (lab == "no_crack" and p >= CONTRADICTION_CRACK_P) for lab, p in zip(self.tile_labels, t))
        return False

    def tile_source(self, i: int) -> str | None:
        return self.tile_sources[i] if self.tile_sources is not None else None

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
        """Per tile the label a person set, else the student's verdict (what the review view shows;
        never a training label: see ``tile_labels``)."""
        model = self.model_tile_labels(threshold)
        if self.tile_labels is None:
            return model
        return tuple(m if t is None else t for t, m in zip(self.tile_labels, model))


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
        r["teacher_model"], r["uncertainty"] or 0.0, r["disagreement"], r["deleted_at"],
        tuple(json.loads(r["tile_sources"])) if r["tile_sources"] else None)


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


_DEFAULT_THRESHOLD = 0.5   # the review view's threshold when the app starts (the slider moves it)


def _v4_tile_sources(db: sqlite3.Connection) -> None:
    """Who gave each tile label (``tile_sources``), and unknown tiles (null) where nobody did.

    A v3 row cannot say which tile labels a person set: v3's ``C`` (``set_label("crack")``)
    copied the student's verdicts into ``tile_labels`` for every tile not yet labelled, exactly
    like a person's labels. The review log can: every review change since v3 is an entry with
    its action and the tile labels before and after. The entries in effect (DONE, in order) are
    replayed per flag from the tiles the v2 -> v3 migration left:

    - v3 start: tiles all ``no_crack`` (a v2 ``no_crack`` frame) -> ``frame_clean``;
    - ``label`` / ``batch label`` to ``no_crack`` (N) -> every tile ``frame_clean``;
    - ``label`` / ``batch label`` to ``crack`` (C) -> a tile keeps its source if its label was
      already there before the entry and a person set it, else it came from the student:
      unknown. As v4's C does, a frame not crack before keeps only its ``marked`` tiles (C
      contradicts N's "all clean" and Space's "the verdicts are right");
    - ``accept`` / ``batch accept`` (Space) -> every tile ``accepted``;
    - ``tile`` (a click or T) -> the tiles that differ from the entry's before are ``marked``,
      the others keep their source. A toggle on a frame without tile labels stored all its tiles
      (the toggled one flipped, the others the student's verdicts at the view's threshold, which
      the log does not hold): the toggled tile is the one that differs from the student's
      verdict at 0.5 (the threshold every start of the app begins with) when exactly one does,
      else the one tile that differs for some other threshold when only one tile fits; when no
      single tile fits, no tile is taken as marked (all unknown: the frame is asked again);
    - ``review`` (``FlagStore.set_review`` called directly: scripts, the self-test) -> every
      tile given ``marked`` (the caller named each tile's label, as the v4 API takes it).

    When the replay does not end at the row's tile labels (a history that does not explain the
    row), the row's tiles become unknown, except all-``no_crack`` tiles of a ``no_crack`` frame
    (``frame_clean``). Frame labels, locations, notes and every flag are kept as they are.
    The entries themselves are rewritten to carry ``tile_labels`` and ``tile_sources`` as
    replayed, so undo and redo of changes made before the migration restore consistent tiles
    (UNDONE entries are replayed after the DONE ones, as redo would apply them).
    """
    db.execute("ALTER TABLE flags ADD COLUMN tile_sources TEXT")
    entries: dict[str, list] = {}
    for seq, uid, action, before, after, state in db.execute(
            "SELECT seq, flag_uid, action, before, after, state FROM review_log WHERE state IN (0, 1) "
            "ORDER BY state, seq"):
        before, after = json.loads(before), json.loads(after)
        if "tile_labels" in after or "tile_labels" in before:
            entries.setdefault(uid, []).append((seq, action, before, after, state))
    rows = db.execute("SELECT id, uid, tiles, label, tile_labels FROM flags").fetchall()
    for flag_id, uid, tiles, label, tile_labels in rows:
        probs = [float(t["crack_prob"]) for t in json.loads(tiles)]
        row_labels = json.loads(tile_labels) if tile_labels else None
        log_entries = entries.get(uid, [])
        raw = log_entries[0][2].get("tile_labels") if log_entries else row_labels
        sources = _start_sources(raw, len(probs))
        current = None
        for seq, action, before, after, state in log_entries:
            if state == 1 and current is None:   # the first UNDONE entry: the row's state is reached
                current = (raw, sources)
            new_raw, new_sources = _replay(action, before, after, sources, probs)
            before = {**before, **_known(raw, sources)}
            after = {**after, **_known(new_raw, new_sources)}
            db.execute("UPDATE review_log SET before = ?, after = ? WHERE seq = ?",
                       (json.dumps(before, separators=(",", ":")), json.dumps(after, separators=(",", ":")), seq))
            raw, sources = new_raw, new_sources
        raw, sources = current if current is not None else (raw, sources)
        if raw != row_labels:   # the history does not explain the row: nothing is known but a clean frame
            raw = row_labels
            sources = (["frame_clean"] * len(probs) if label == "no_crack" and raw and set(raw) == {"no_crack"}
                       else [None] * len(probs))
        known = _known(raw, sources)
        db.execute("UPDATE flags SET tile_labels = ?, tile_sources = ? WHERE id = ?",
                   tuple(None if v is None else json.dumps(v) for v in (known["tile_labels"], known["tile_sources"]))
                   + (flag_id,))


def _start_sources(raw, n: int) -> list:
    """Sources of the tiles v3 started with: only a v2 ``no_crack`` frame had tiles (all clean)."""
    if raw is not None and set(raw) == {"no_crack"}:
        return ["frame_clean"] * n
    return [None] * n


def _replay(action: str, before: dict, after: dict, sources: list, probs: list) -> tuple:
    """The tile labels and their sources after one v3 review-log entry (see _v4_tile_sources)."""
    n = len(probs)
    new, old = after.get("tile_labels"), before.get("tile_labels")
    if new is None:
        return None, [None] * n
    kind = action.removeprefix("batch ").strip()
    if kind == "accept":
        return new, ["accepted"] * n
    if kind == "label":
        if after.get("label") == "no_crack":
            return new, ["frame_clean"] * n
        kept = (None, "marked", "frame_clean", "accepted") if before.get("label") == "crack" else (None, "marked")
        return new, [sources[i] if old is not None and old[i] == new[i] and sources[i] in kept else None
                     for i in range(n)]
    if kind == "tile":
        if old is not None:
            return new, ["marked" if old[i] != new[i] else sources[i] for i in range(n)]
        marked = [None] * n
        tile = _toggled_tile(new, probs)
        if tile is not None:
            marked[tile] = "marked"
        return new, marked
    return new, ["marked"] * n


def _toggled_tile(labels: list, probs: list) -> int | None:
    """The tile a v3 toggle flipped on a frame without tile labels (see _v4_tile_sources)."""
    def differing(threshold: float) -> list[int]:
        return [i for i, (label, p) in enumerate(zip(labels, probs))
                if label != ("crack" if p >= threshold else "no_crack")]

    at_default = differing(_DEFAULT_THRESHOLD)
    if len(at_default) == 1:
        return at_default[0]
    fits = {tuple(d) for d in map(differing, sorted(set(probs)) + [1.1]) if len(d) == 1}
    return fits.pop()[0] if len(fits) == 1 else None


def _known(raw, sources) -> dict:
    """``tile_labels`` and ``tile_sources`` as stored: labels only where a source is; None for both
    when no tile is known."""
    if raw is None:
        return {"tile_labels": None, "tile_sources": None}
    labels = [label if source else None for label, source in zip(raw, sources)]
    if all(label is None for label in labels):
        return {"tile_labels": None, "tile_sources": None}
    return {"tile_labels": labels, "tile_sources": [s if label is not None else None for s, label in zip(sources, labels)]}


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


MIGRATIONS = (_v1_flags_table, _v2_review_columns, _v3_review_state, _v4_tile_sources)  # [v]: version v -> v + 1
assert len(MIGRATIONS) == SCHEMA_VERSION
