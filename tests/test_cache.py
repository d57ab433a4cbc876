"""distill.training.cache.TeacherCache: the on-disk SQLite cache of teacher outputs."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading

import numpy as np
import pytest

from distill.training.cache import TeacherCache

FP = "0123456789abcdef"


def outputs(seed: int, features: bool = True) -> dict[str, np.ndarray]:
    """Teacher outputs for one image: 2 logits, a 4x3x3 feature map, an 8-d embedding."""
    rng = np.random.default_rng(seed)
    out = {"logits": rng.normal(size=2).astype(np.float32) * 7}
    if features:
        out["features"] = rng.normal(size=(4, 3, 3)).astype(np.float32) * 3
        out["embedding"] = rng.normal(size=8).astype(np.float32)
    return out


def key(i: int) -> str:
    """Keys look like PatchDataset's: sha256:augmentation:size."""
    return f"{i:064x}:flip=1,rot=0:96"


@pytest.fixture
def cache(tmp_path):
    c = TeacherCache(tmp_path / "sub" / "cache.sqlite", FP)
    yield c
    c.close()


def test_round_trip_keeps_logits_exactly_and_maps_in_float16(cache):
    items = {key(i): outputs(i) for i in range(5)}
    items[key(0)]["logits"] = np.array([1 / 3, -1e-7], dtype=np.float32)  # not float16-exact
    cache.put_many(items)
    got = cache.get_many(list(items))
    assert set(got) == set(items)
    for k, expected in items.items():
        assert got[k]["logits"].dtype == np.float32
        np.testing.assert_array_equal(got[k]["logits"], expected["logits"])
        for field in ("features", "embedding"):
            assert got[k][field].dtype == np.float16
            assert got[k][field].shape == expected[field].shape
            np.testing.assert_allclose(got[k][field].astype(np.float32), expected[field], rtol=1e-3, atol=1e-3)
    assert (cache.hits, cache.misses) == (5, 0)
    assert len(cache) == 5


def test_misses_are_counted(cache):
    cache.put_many({key(1): outputs(1), key(2): outputs(2)})
    got = cache.get_many([key(1), key(3), key(2), key(4)])
    assert set(got) == {key(1), key(2)}
    assert (cache.hits, cache.misses) == (2, 2)
    cache.get_many([key(1), key(1), key(5)])  # a repeated key counts as often as it is asked
    assert (cache.hits, cache.misses) == (4, 3)
    assert cache.get_many([]) == {}


def test_other_fingerprint_sees_nothing(tmp_path):
    path = tmp_path / "cache.sqlite"
    a = TeacherCache(path, "ab_d")
    a.put_many({key(i): outputs(i) for i in range(3)})
    b = TeacherCache(path, "abcd")  # "_" would match "c" in a LIKE pattern
    assert b.get_many([key(i) for i in range(3)]) == {}
    assert (b.hits, b.misses) == (0, 3)
    assert (len(a), len(b)) == (3, 0)
    b.put_many({key(0): outputs(100)})
    assert (len(a), len(b)) == (3, 1)
    np.testing.assert_array_equal(a.get_many([key(0)])[key(0)]["logits"], outputs(0)["logits"])
    np.testing.assert_array_equal(b.get_many([key(0)])[key(0)]["logits"], outputs(100)["logits"])
    a.close()
    b.close()


def test_cache_persists_across_reopening(tmp_path):
    path = tmp_path / "cache.sqlite"
    first = TeacherCache(path, FP)
    first.put_many({key(7): outputs(7)})
    first.close()
    again = TeacherCache(path, FP)
    got = again.get_many([key(7)])
    np.testing.assert_array_equal(got[key(7)]["logits"], outputs(7)["logits"])
    np.testing.assert_allclose(got[key(7)]["embedding"], outputs(7)["embedding"], rtol=1e-3, atol=1e-3)
    again.close()


def test_logits_only_cache(tmp_path):
    path = tmp_path / "cache.sqlite"
    small = TeacherCache(path, FP, store_features=False)
    small.put_many({key(1): outputs(1)})  # features are given but not stored
    got = small.get_many([key(1)])
    assert set(got[key(1)]) == {"logits"}
    np.testing.assert_array_equal(got[key(1)]["logits"], outputs(1)["logits"])
    # A run that needs feature maps must not take this logits-only entry for a hit.
    full = TeacherCache(path, FP, store_features=True)
    assert full.get_many([key(1)]) == {} and full.misses == 1
    full.put_many({key(1): outputs(1)})
    assert set(full.get_many([key(1)])[key(1)]) == {"logits", "features", "embedding"}
    small.close()
    full.close()


def test_more_keys_than_sqlite_parameters_in_one_get(cache):
    cache.put_many({key(i): outputs(i, features=False) | {"features": np.zeros((1, 1, 1))}
                    for i in range(1200)})
    wanted = [key(i) for i in range(0, 1300)]
    got = cache.get_many(wanted)
    assert len(got) == 1200
    assert (cache.hits, cache.misses) == (1200, 100)
    np.testing.assert_array_equal(got[key(1111)]["logits"], outputs(1111)["logits"])


def test_failed_put_on_a_locked_database_does_not_wedge_the_cache(cache):
    """A write that timed out must not leave the connection inside a transaction."""
    cache._db.execute("PRAGMA busy_timeout=50")  # instead of waiting a minute
    blocker = sqlite3.connect(cache.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        cache.put_many({key(1): outputs(1)})
    blocker.execute("ROLLBACK")
    blocker.close()
    cache.put_many({key(2): outputs(2)})
    assert set(cache.get_many([key(1), key(2)])) == {key(2)}


def test_opening_waits_for_a_process_that_is_creating_the_cache(tmp_path):
    """Switching a new file to WAL fails at once ("database is locked"), without SQLite's
    usual wait, while another connection writes to it, as when DDP ranks start together."""
    path = tmp_path / "new.sqlite"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE IF NOT EXISTS outputs (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, other.execute, args=("ROLLBACK",))
    release.start()
    try:
        cache = TeacherCache(path, FP)
    finally:
        release.join()
        other.close()
    cache.put_many({key(1): outputs(1)})
    assert set(cache.get_many([key(1)])) == {key(1)}
    assert cache._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cache.close()


def _writer(path: str, start: int, count: int, barrier) -> None:
    barrier.wait()  # open and write at the same moment as the other process
    cache = TeacherCache(path, FP)
    for batch in range(start, start + count, 10):
        cache.put_many({key(i): outputs(i) for i in range(batch, min(batch + 10, start + count))})
    cache.close()


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ctx = mp.get_context("fork")  # the children only use sqlite and numpy
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, start, 300, barrier)) for start in (0, 300)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    cache = TeacherCache(path, FP)
    got = cache.get_many([key(i) for i in range(600)])
    assert len(got) == 600 and len(cache) == 600
    for i in (0, 299, 300, 599):
        np.testing.assert_array_equal(got[key(i)]["logits"], outputs(i)["logits"])
    cache.close()
