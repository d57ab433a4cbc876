"""On-disk cache of teacher outputs, keyed by image content and augmentation.

Running three teachers costs more than training a small student; in the field the laptop
fine-tunes on the same base images again and again. A batch item's key is
``sha256(content):augmentation:size`` (see ``PatchDataset``), prefixed by the ensemble's
weight fingerprint, so a changed teacher never serves stale targets.

Storage is one SQLite file in WAL mode (safe with several DataLoader/DDP processes writing),
values are numpy arrays: float32 logits, and optionally (float16) the hint feature map and embedding.
"""
from __future__ import annotations

import io
import random
import sqlite3
import time
from pathlib import Path

import numpy as np

_FIELDS = ("logits", "features", "embedding")
_TIMEOUT = 60.0  # seconds to wait for another process's lock


def _retry_while_locked(statement, timeout: float = _TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return statement()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01 + 0.04 * random.random())


class TeacherCache:
    def __init__(self, path, fingerprint: str, store_features: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self.store_features = store_features
        self.hits = 0
        self.misses = 0
        self._db = sqlite3.connect(self.path, timeout=_TIMEOUT, isolation_level=None)
        # Switching to WAL does not wait for a lock like other statements do: when several
        # processes (DDP ranks) open a new cache at once, all but one get "database is locked".
        _retry_while_locked(lambda: self._db.execute("PRAGMA journal_mode=WAL"))
        self._db.execute("PRAGMA synchronous=NORMAL")
        _retry_while_locked(lambda: self._db.execute(
            "CREATE TABLE IF NOT EXISTS outputs (key TEXT PRIMARY KEY, value BLOB NOT NULL)"))

    @property
    def _prefix(self) -> str:
        return f"{self.fingerprint}:"

    def _full(self, key: str) -> str:
        return self._prefix + key

    def get_many(self, keys: list[str]) -> dict[str, dict[str, np.ndarray]]:
        found: dict[str, dict[str, np.ndarray]] = {}
        full = [self._full(k) for k in keys]
        for start in range(0, len(full), 500):  # SQLite's bound-parameter limit
            chunk = full[start:start + 500]
            rows = self._db.execute(
                f"SELECT key, value FROM outputs WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            for key, blob in rows:
                found[key[len(self._prefix):]] = dict(np.load(io.BytesIO(blob)))
        if self.store_features:
            found = {k: v for k, v in found.items() if "features" in v}
        hits = sum(k in found for k in keys)  # per requested key, repeated keys included
        self.hits += hits
        self.misses += len(keys) - hits
        return found

    def put_many(self, items: dict[str, dict[str, np.ndarray]]) -> None:
        rows = []
        for key, arrays in items.items():
            buf = io.BytesIO()
            # Logits stay float32 (they are small and KD divides them by T); maps are float16.
            keep = {f: np.asarray(arrays[f], dtype=np.float32 if f == "logits" else np.float16)
                    for f in _FIELDS if f in arrays and (f == "logits" or self.store_features)}
            np.savez(buf, **keep)
            rows.append((self._full(key), buf.getvalue()))
        if not rows:
            return
        # IMMEDIATE takes the write lock up front (waiting up to the timeout for other writers),
        # and a failed write must not leave the connection inside an open transaction.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT OR REPLACE INTO outputs VALUES (?, ?)", rows)
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def __len__(self) -> int:
        # Not LIKE: it ignores case and treats "_" and "%" in the fingerprint as wildcards.
        prefix = self._prefix
        return self._db.execute("SELECT COUNT(*) FROM outputs WHERE substr(key, 1, ?) = ?",
                                (len(prefix), prefix)).fetchone()[0]

    def close(self) -> None:
        self._db.close()
