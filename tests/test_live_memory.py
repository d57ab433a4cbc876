"""inspector.live.memory: the store's flags remembered by the flagger, so a session that starts
again on a wall flagged before does not flag it again. Real wall photographs (Özgenel) in a
real flag store."""
from __future__ import annotations

import numpy as np
import pytest

from inspector.live.flagging import Flagger, FlagPolicy, FlagStats
from inspector.live.memory import StoreMemory
from support import store  # noqa: F401  (fixtures)
from test_flagging import CONFIDENT, jitter, now_kept, real


@pytest.fixture(scope="module")
def views() -> list[np.ndarray]:
    return [real("crack", i * 97) for i in range(8)]


def stored(store, frame: np.ndarray):
    """Store ``frame`` as a manual flag (one tile over the whole frame)."""
    from inspector.store.database import ModelRef

    h, w = frame.shape[:2]
    return store.add(frame, np.zeros((h, w), np.float32), [{"box": [0, 0, w, h], "crack_prob": 0.95}],
                     reason="manual", source="camera 0", model=ModelRef("crack-student", "1.1.1", "ab" * 32),
                     crack_prob_max=0.95)


def wait_loaded(memory: StoreMemory) -> None:
    assert memory.wait(30)


def test_the_stores_flags_are_not_flagged_again(views, store):
    """A session that starts on a wall flagged before: the views of the stored flags are
    remembered (newest first, the ``limit`` newest), so they are not flagged again; others are."""
    for v in views[:3]:
        stored(store, v)
    f = Flagger(FlagPolicy(window_s=0, budget_s=0))
    memory = StoreMemory(f, store)
    memory.start()
    wait_loaded(memory)
    assert memory.loaded == 3 and memory.skipped == 0 and f.stats.remembered == 3
    rng = np.random.default_rng(4)
    assert now_kept(f, jitter(views[0], rng), CONFIDENT, 0.0) is None
    assert now_kept(f, views[3], CONFIDENT, 1.0) == "crack"
    assert f.stats == FlagStats(kept=1, same_view=1, remembered=3)
    f = Flagger(FlagPolicy(window_s=0, budget_s=0))
    memory = StoreMemory(f, store, limit=2)
    memory.start()
    wait_loaded(memory)
    assert memory.loaded == 2
    assert now_kept(f, views[0], CONFIDENT, 0.0) == "crack"     # the oldest: beyond the limit
    assert now_kept(f, views[2], CONFIDENT, 1.0) is None


def test_unreadable_frames_are_skipped_and_this_sessions_flags_not_read_again(views, store):
    gone = stored(store, views[0])
    stored(store, views[1])
    (store.root / gone.frame_file).unlink()
    f = Flagger()
    memory = StoreMemory(f, store)
    memory.start()
    stored(store, views[2])                      # flagged after the start: remembered as it is made
    wait_loaded(memory)
    assert (memory.loaded, memory.skipped) == (1, 1) and f.stats.remembered == 1


def test_an_empty_store_and_bad_limits(store):
    memory = StoreMemory(Flagger(), store)
    memory.start()
    wait_loaded(memory)
    assert memory.loaded == 0
    with pytest.raises(RuntimeError, match="once"):
        memory.start()
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="limit"):
            StoreMemory(Flagger(), store, limit=bad)


def test_a_store_that_cannot_be_read_means_no_memory_not_a_failure(store, caplog):
    store.close()
    memory = StoreMemory(Flagger(), store)
    memory.start()
    assert memory.wait(10) and memory.loaded == 0
    assert "no stored flag is remembered" in caplog.text
