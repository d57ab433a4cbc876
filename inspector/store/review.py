"""The review half of :class:`~inspector.store.database.FlagStore`: review writes with their history,
undo / redo, deletion, the teachers' opinion, and the queries of the review view.

A mixin, so that ``store.py`` keeps the flag files and their crash safety and this module the
review; both share the store's connection, lock and :meth:`_transaction`. Every write here is
one transaction that changes the row and appends to ``review_log`` (:mod:`inspector.store.history`).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Sequence
from typing import Any

from inspector.store import history as store_history
from inspector.store.checks import check_choice, check_count, check_id, check_prob, check_text
from inspector.store.history import CLOSED, DONE, UNDONE, HistoryEntry
from inspector.store.query import CONTRADICTED, DISAGREEMENT_COUNTED, NEEDS_TILES, FlagFilter, ReviewCounts, order_by
from inspector.store.schema import (
    REVIEW_LABELS,
    SELECT,
    TILE_LABELS,
    TILE_SOURCES,
    FlagRecord,
    ModelRef,
    StoreError,
    disagreement_of,
    record,
)

log = logging.getLogger(__name__)


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()  # "argument not given", where None means "clear"
DISTINCT_COLUMNS = ("source", "location", "model_version", "reviewer")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class ReviewMethods:
    """Mixed into FlagStore; needs ``_lock``, ``_open_db()``, ``_transaction()``, ``get()``."""

    # ------------------------------------------------------------------ review writes

    def set_review(self, flag_id: int, *, label=UNSET, tile_labels=UNSET, tile_sources=UNSET,
                   reviewer: str | None = None, location=UNSET, note=UNSET, action: str = "review",
                   batch: int | None = None) -> FlagRecord:
        """Change the given review fields of one flag, as one undoable step.

        ``label``: the frame's label (crack / no_crack / unsure) or None (back to unreviewed);
        ``tile_labels``: per tile crack / no_crack, or None for a tile nobody labelled (unknown),
        or None for the whole list; ``tile_sources``: how a person gave each label (``marked``,
        ``frame_clean``, ``accepted``; None exactly where the label is None). Without
        ``tile_sources`` every given tile label counts as ``marked`` (the caller named it).
        A list with no known tile is stored as None. Any change of label or tiles stamps
        ``reviewer`` and the time. Returns the new record; nothing changed, no entry.
        """
        flag_id = check_id(flag_id)
        changes: dict[str, Any] = {}
        if label is not UNSET:
            if label is not None:
                check_choice("label", label, REVIEW_LABELS)
            changes["label"] = label
        if location is not UNSET:
            changes["location"] = check_text("location", location)
        if note is not UNSET:
            changes["note"] = check_text("note", note)
        reviewer = check_text("reviewer", reviewer)
        with self._transaction("save the review change"):
            current = self._row(flag_id)
            if tile_labels is not UNSET:
                changes["tile_labels"], changes["tile_sources"] = _check_tiles(
                    tile_labels, tile_sources, len(current.tiles))
            elif tile_sources is not UNSET:
                raise ValueError("tile_sources needs tile_labels")
            if "label" in changes or "tile_labels" in changes:
                changes["reviewer"] = reviewer
                changes["reviewed_at"] = now_iso()
            self._apply(current, changes, action=action, reviewer=reviewer, batch=batch)
        return self.get(flag_id)

    def update(self, flag_id: int, *, location=UNSET, note=UNSET, label=UNSET) -> FlagRecord:
        """Change location, note or label (None clears one), as one undoable step (v2 API)."""
        return self.set_review(flag_id, location=location, note=note, label=label, action="fields")

    def set_reviews(self, changes: Sequence[tuple[int, dict]], *, reviewer: str | None = None,
                    action: str = "batch") -> list[FlagRecord]:
        """Several flags' review changes (``[(flag_id, {"label": …, "tile_labels": …}), …]``) as
        one transaction and one undo step."""
        if not changes:
            return []
        with self._transaction("save the batch change"):
            batch = self._open_db().execute("SELECT coalesce(max(seq), 0) + 1 FROM review_log").fetchone()[0]
            for flag_id, fields in changes:
                unknown = set(fields) - {"label", "tile_labels", "tile_sources", "location", "note"}
                if unknown:
                    raise ValueError(f"set_reviews: unknown fields {sorted(unknown)}")
                self.set_review(flag_id, reviewer=reviewer, action=action, batch=batch, **fields)
        return [self.get(flag_id) for flag_id, _ in changes]

    def delete(self, flag_id: int, *, reviewer: str | None = None) -> FlagRecord:
        """Hide a flag from every list, undoably; :meth:`purge_deleted` removes it for good."""
        flag_id = check_id(flag_id)
        with self._transaction("delete the flag"):
            current = self._row(flag_id)
            if current.deleted_at is None:
                self._apply(current, {"deleted_at": now_iso()}, action="delete", reviewer=check_text("reviewer", reviewer))
        return self.get(flag_id)

    def purge_deleted(self) -> list[str]:
        """Remove deleted flags' rows, then their image files; returns their uids. The history
        keeps the entries (closed) and one ``purge`` entry per flag."""
        with self._transaction("remove deleted flags"):
            db = self._open_db()
            rows = db.execute("SELECT id, uid, frame_file, heatmap_file FROM flags WHERE deleted_at IS NOT NULL").fetchall()
            at = now_iso()
            for flag_id, uid, *_ in rows:
                store_history.close_flag(db, uid)
                db.execute(f"INSERT INTO review_log (at, reviewer, flag_uid, action, before, after, state) "
                           f"VALUES (?, NULL, ?, 'purge', '{{}}', '{{}}', {CLOSED})", (at, uid))
                db.execute("DELETE FROM flags WHERE id = ?", (flag_id,))
        for _, uid, *files in rows:  # after the commit: a crash here leaves orphans the next open removes
            self._remove_files(files)
        return [uid for _, uid, *_ in rows]

    def undo(self) -> list[FlagRecord]:
        """Take back the newest review step (all flags of a batch); returns the flags changed."""
        return self._walk(store_history.last_done, "before", UNDONE, "undo")

    def redo(self) -> list[FlagRecord]:
        """Apply again the step undone last; returns the flags changed."""
        return self._walk(store_history.first_undone, "after", DONE, "redo")

    def can_undo(self) -> bool:
        with self._lock:
            return store_history.can_undo(self._open_db())

    def can_redo(self) -> bool:
        with self._lock:
            return store_history.can_redo(self._open_db())

    def history(self, flag_id: int | None = None, limit: int = 200) -> list[HistoryEntry]:
        """Review history entries, newest first (of one flag if given, deleted ones included)."""
        uid = None if flag_id is None else self.get(check_id(flag_id)).uid
        with self._lock:
            return store_history.entries(self._open_db(), uid, check_count("limit", limit))

    # ------------------------------------------------------------------ the teachers' opinion

    def unscored(self, limit: int = 16) -> list[FlagRecord]:
        """Flags the teacher ensemble has not scored yet, newest first (deleted ones excluded)."""
        with self._lock:
            rows = self._open_db().execute(
                f"{SELECT} WHERE teacher_probs IS NULL AND deleted_at IS NULL ORDER BY id DESC LIMIT ?",
                (check_count("limit", limit),)).fetchall()
        return [record(r) for r in rows]

    def set_teacher_probs(self, flag_id: int, probs: Sequence[float], teacher: ModelRef) -> FlagRecord:
        """Store the ensemble's crack probability per tile and the frame's disagreement."""
        flag_id = check_id(flag_id)
        if not isinstance(teacher, ModelRef):
            raise ValueError(f"teacher must be a ModelRef, got {teacher!r}")
        probs = [check_prob(f"probs[{i}]", p) for i, p in enumerate(probs)]
        with self._transaction("store the teachers' opinion"):
            current = self._row(flag_id)
            if len(probs) != len(current.tiles):
                raise ValueError(f"flag {flag_id} has {len(current.tiles)} tiles, got {len(probs)} teacher probabilities")
            self._open_db().execute(
                "UPDATE flags SET teacher_probs = ?, teacher_model = ?, disagreement = ? WHERE id = ?",
                (json.dumps(probs), f"{teacher.name} {teacher.version} {teacher.sha256}",
                 disagreement_of(probs, current.student_probs), flag_id))
        return self.get(flag_id)

    # ------------------------------------------------------------------ queries (no image is read)

    def query(self, flt: FlagFilter = FlagFilter(), *, sort: str = "time", descending: bool = True,
              limit: int | None = None, offset: int = 0) -> list[FlagRecord]:
        where, params = flt.where()
        limit = -1 if limit is None else check_count("limit", limit)
        with self._lock:
            rows = self._open_db().execute(f"{SELECT}{where}{order_by(sort, descending)} LIMIT ? OFFSET ?",
                                           (*params, limit, check_count("offset", offset))).fetchall()
        return [record(r) for r in rows]

    def query_ids(self, flt: FlagFilter = FlagFilter(), *, sort: str = "time", descending: bool = True) -> list[int]:
        """The ids of every flag ``flt`` matches, in order: what a virtual list needs up front."""
        where, params = flt.where()
        with self._lock:
            rows = self._open_db().execute(f"SELECT id FROM flags{where}{order_by(sort, descending)}", params).fetchall()
        return [r[0] for r in rows]

    def get_many(self, ids: Sequence[int]) -> list[FlagRecord]:
        """Records for ``ids`` in that order; ids no longer in the store are left out."""
        ids = [check_id(i) for i in ids]
        found: dict[int, FlagRecord] = {}
        with self._lock:
            db = self._open_db()
            for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
                chunk = ids[start:start + 500]
                for r in db.execute(f"{SELECT} WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                    found[r[0]] = record(r)
        return [found[i] for i in ids if i in found]

    def counts(self, flt: FlagFilter = FlagFilter()):
        """:class:`~inspector.store.query.ReviewCounts` of the flags ``flt`` matches."""

        where, params = flt.where()
        sql = ("SELECT count(*), total(label IS NULL), total(label = 'crack'), total(label = 'no_crack'), "
               f"total(label = 'unsure'), total(disagreement >= ?), total({NEEDS_TILES}), total({CONTRADICTED}) "
               f"FROM flags{where}")
        with self._lock:
            row = self._open_db().execute(sql, (DISAGREEMENT_COUNTED, *params)).fetchone()
        return ReviewCounts(*(int(v) for v in row))

    def distinct(self, column: str) -> list[str]:
        """The values of ``column`` (source, location, model_version, reviewer) in use, sorted."""
        check_choice("column", column, DISTINCT_COLUMNS)
        with self._lock:
            rows = self._open_db().execute(
                f"SELECT DISTINCT {column} FROM flags WHERE {column} IS NOT NULL AND deleted_at IS NULL "
                f"ORDER BY {column}").fetchall()
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ internals

    def _row(self, flag_id: int) -> FlagRecord:
        row = self._open_db().execute(f"{SELECT} WHERE id = ?", (flag_id,)).fetchone()
        if row is None:
            raise StoreError(f"no flag with id {flag_id}")
        return record(row)

    def _apply(self, current: FlagRecord, changes: dict, *, action: str, reviewer: str | None,
               batch: int | None = None) -> None:
        before = {k: _stored(getattr(current, k)) for k in changes}
        after = {k: _stored(v) for k, v in changes.items()}
        if before == after:
            return
        self._write_fields(current.id, after)
        store_history.record(self._open_db(), uid=current.uid, action=action, before=before, after=after,
                             at=now_iso(), reviewer=reviewer, batch=batch)

    def _write_fields(self, flag_id: int, values: dict) -> None:
        unknown = set(values) - set(_REVIEW_COLUMNS)
        if unknown:
            raise StoreError(f"review history names unknown fields {sorted(unknown)}")
        stored = {k: json.dumps(v) if k in _JSON_COLUMNS and v is not None else v for k, v in values.items()}
        assignments = ", ".join(f"{column} = ?" for column in stored)  # names checked above
        self._open_db().execute(f"UPDATE flags SET {assignments} WHERE id = ?", (*stored.values(), flag_id))

    def _walk(self, take, side: str, new_state: int, what: str) -> list[FlagRecord]:
        with self._transaction(what):
            db = self._open_db()
            steps = take(db)
            changed = []
            for entry in steps if side == "after" else reversed(steps):
                row = db.execute("SELECT id FROM flags WHERE uid = ?", (entry.flag_uid,)).fetchone()
                if row is None:  # cannot happen: a purge closes the flag's entries
                    raise StoreError(f"{what}: flag {entry.flag_uid} is no longer in the store")
                self._write_fields(row[0], getattr(entry, side))
                changed.append(row[0])
            store_history.set_state(db, steps, new_state)
        return [self.get(i) for i in dict.fromkeys(changed)]


_REVIEW_COLUMNS = ("label", "tile_labels", "tile_sources", "reviewer", "reviewed_at", "location", "note", "deleted_at")
_JSON_COLUMNS = ("tile_labels", "tile_sources")


def _stored(value):
    """A field value as the history stores it (tuples as lists, for JSON round trips)."""
    return list(value) if isinstance(value, tuple) else value


def _check_tiles(tile_labels, tile_sources, n: int) -> tuple[list | None, list | None]:
    """``(tile_labels, tile_sources)`` as stored (see :meth:`ReviewMethods.set_review`)."""
    if tile_labels is None:
        if tile_sources not in (None, UNSET):
            raise ValueError("tile_sources must be None when tile_labels is None")
        return None, None
    labels = _check_list("tile_labels", tile_labels, n, TILE_LABELS)
    if tile_sources is UNSET or tile_sources is None:
        sources = [None if t is None else "marked" for t in labels]
    else:
        sources = _check_list("tile_sources", tile_sources, n, TILE_SOURCES)
    for i, (label, source) in enumerate(zip(labels, sources)):
        if (label is None) != (source is None):
            raise ValueError(f"tile {i}: a label needs its source and a source its label, got {label!r}, {source!r}")
        if source == "frame_clean" and label != "no_crack":
            raise ValueError(f"tile {i}: frame_clean labels a tile no_crack, got {label!r}")
    if all(label is None for label in labels):
        return None, None
    return labels, sources


def _check_list(name: str, values, n: int, choices) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a list of {list(choices)} (or None per tile) or None, got {values!r}")
    if len(values) != n:
        raise ValueError(f"{name} must have one label per tile ({n}), got {len(values)}")
    for i, t in enumerate(values):
        if t is not None:
            check_choice(f"{name}[{i}]", t, choices)
    return list(values)
