"""The review history of a flag store: every change, undo and redo, in the ``review_log`` table.

An entry holds the flag's uid, the action (``label``, ``tile``, ``accept``, ``fields``,
``delete``, ``batch`` …, a word for the history view), who made it and when, and the values of
the changed columns before and after (JSON). Its ``state`` says where it stands:

- 0 ``DONE``: in effect; the newest DONE entry is what Undo takes back;
- 1 ``UNDONE``: taken back; the oldest UNDONE entry is what Redo applies again;
- 2 ``CLOSED``: out of the undo chain for good: a new change after an undo discards the redo
  branch (as every editor does), and a purged flag's entries can no longer be applied. Closed
  entries stay as the record of what happened.

The functions here run inside the caller's transaction (the store's ``_transaction``), so the
row and its history are written together or not at all. One undo chain per store: entries made
by a batch share a ``batch`` id and are undone and redone together.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

DONE, UNDONE, CLOSED = 0, 1, 2


@dataclass(frozen=True)
class HistoryEntry:
    seq: int
    at: str
    reviewer: str | None
    flag_uid: str
    action: str
    before: dict
    after: dict
    state: int
    batch: int | None = None

    @property
    def undone(self) -> bool:
        return self.state == UNDONE


def record(db: sqlite3.Connection, *, uid: str, action: str, before: dict, after: dict, at: str,
           reviewer: str | None, batch: int | None = None) -> int:
    """Append a DONE entry and close the redo branch; returns its seq."""
    db.execute(f"UPDATE review_log SET state = {CLOSED} WHERE state = {UNDONE}")
    cur = db.execute("INSERT INTO review_log (at, reviewer, flag_uid, action, before, after, state, batch) "
                     f"VALUES (?, ?, ?, ?, ?, ?, {DONE}, ?)",
                     (at, reviewer, uid, action, _dump(before), _dump(after), batch))
    return cur.lastrowid


def close_flag(db: sqlite3.Connection, uid: str) -> None:
    """A purged flag: its entries stay as history but leave the undo chain."""
    db.execute(f"UPDATE review_log SET state = {CLOSED} WHERE flag_uid = ? AND state != {CLOSED}", (uid,))


def last_done(db: sqlite3.Connection) -> list[HistoryEntry]:
    """The entries Undo takes back: the newest DONE entry and the rest of its batch."""
    row = db.execute(f"{_SELECT} WHERE state = {DONE} ORDER BY seq DESC LIMIT 1").fetchone()
    return _with_batch(db, row, DONE)


def first_undone(db: sqlite3.Connection) -> list[HistoryEntry]:
    """The entries Redo applies again: the oldest UNDONE entry and the rest of its batch."""
    row = db.execute(f"{_SELECT} WHERE state = {UNDONE} ORDER BY seq ASC LIMIT 1").fetchone()
    return _with_batch(db, row, UNDONE)


def set_state(db: sqlite3.Connection, entries: list[HistoryEntry], state: int) -> None:
    db.executemany("UPDATE review_log SET state = ? WHERE seq = ?", [(state, e.seq) for e in entries])


def entries(db: sqlite3.Connection, uid: str | None = None, limit: int = 200) -> list[HistoryEntry]:
    """The newest ``limit`` entries (of one flag if ``uid``), newest first."""
    if uid is None:
        rows = db.execute(f"{_SELECT} ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
    else:
        rows = db.execute(f"{_SELECT} WHERE flag_uid = ? ORDER BY seq DESC LIMIT ?", (uid, limit)).fetchall()
    return [_entry(r) for r in rows]


def can_undo(db: sqlite3.Connection) -> bool:
    return db.execute(f"SELECT 1 FROM review_log WHERE state = {DONE} LIMIT 1").fetchone() is not None


def can_redo(db: sqlite3.Connection) -> bool:
    return db.execute(f"SELECT 1 FROM review_log WHERE state = {UNDONE} LIMIT 1").fetchone() is not None


_SELECT = "SELECT seq, at, reviewer, flag_uid, action, before, after, state, batch FROM review_log"


def _with_batch(db: sqlite3.Connection, row, state: int) -> list[HistoryEntry]:
    if row is None:
        return []
    first = _entry(row)
    if first.batch is None:
        return [first]
    rows = db.execute(f"{_SELECT} WHERE batch = ? AND state = ? ORDER BY seq", (first.batch, state)).fetchall()
    return [_entry(r) for r in rows]


def _entry(row) -> HistoryEntry:
    seq, at, reviewer, uid, action, before, after, state, batch = row
    return HistoryEntry(seq, at, reviewer, uid, action, json.loads(before), json.loads(after), state, batch)


def _dump(values: dict) -> str:
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False)
