"""inspector.review.teacher_scorer: the teachers' per-tile opinion of every flag, in the background.

A real FlagStore (temporary folder), real frames (UAV75 bridges, CrackForest pavement, the
sample video) flagged with the shipped student, scored with the shipped teacher package.
Waiting is by condition with a generous ceiling, never by measuring time.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from distill.data.imageio import load_rgb
from inspector.edge.engine import InferenceEngine
from inspector.live.loop import engine_model, tile_dicts
from inspector.paths import default_teachers, sample_video
from inspector.store.database import StoreError
from inspector.background import NICE
from inspector.review.teacher_scorer import TeacherScorer, tile_batch, tile_crack_probs
from support import engine, store  # noqa: F401 - fixtures

DATA = Path(os.environ["CRACK_DATA_DIR"])
CEILING_S = 60.0  # only against a hang; every wait ends as soon as its condition holds


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + CEILING_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def teachers():
    return InferenceEngine(default_teachers(), threads=1, cv2_threads=None)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Real frames of three sizes: 512×512 (16 tiles), 480×320 (6), a sample-video 640×480 (12)."""
    cap = cv2.VideoCapture(str(sample_video()))
    video = cv2.cvtColor(cap.read()[1], cv2.COLOR_BGR2RGB)
    cap.release()
    uav = sorted((DATA / "uav75" / "images").glob("*.jpg"))
    cfd = sorted((DATA / "crackforest_cfd" / "images").glob("*.jpg"))
    return [load_rgb(uav[3]), load_rgb(cfd[5]), video, load_rgb(uav[40])]


def add_flag(store, engine, frame):
    result = engine.inspect(frame)
    return store.add(frame, result.heatmap, tile_dicts(result), reason="uncertain", source="test",
                     model=engine_model(engine), crack_prob_max=result.crack_prob_max)


@pytest.fixture
def scorers():
    """Scorers made by a test; each is stopped afterwards, whatever the test did."""
    made: list[TeacherScorer] = []

    def make(store, **kwargs) -> TeacherScorer:
        made.append(TeacherScorer(store, default_teachers(), **kwargs))
        return made[-1]

    yield make
    for s in made:
        s.stop()


def test_every_flag_is_scored_with_the_package_on_the_students_tiles(store, engine, teachers, frames, scorers):
    flags = [add_flag(store, engine, f) for f in frames]
    seen, priority = [], []

    def on_scored(rec):  # runs on the scorer's thread
        seen.append(rec)
        if sys.platform.startswith("linux"):
            tid = threading.get_native_id()
            priority.append((os.getpriority(os.PRIO_PROCESS, tid), os.sched_getscheduler(tid)))

    scorer = scorers(store, on_scored=on_scored)
    scorer.start()
    wait_for(lambda: len(seen) == len(flags), "every flag scored")
    assert store.unscored(limit=100) == []
    assert sorted(r.id for r in seen) == sorted(f.id for f in flags)
    m = teachers.manifest
    for flag, frame in zip(flags, frames):
        rec = store.get(flag.id)
        assert rec.teacher_model is not None and m.name in rec.teacher_model and m.version in rec.teacher_model
        boxes = [t["box"] for t in rec.tiles]
        # the package run directly on the crops of the student's boxes
        assert rec.teacher_probs == pytest.approx(tile_crack_probs(teachers, frame, boxes), abs=1e-6)
        # and the engine's own tiling of the frame with the teacher package: the same grid, the same tiles
        direct = teachers.inspect(frame)
        assert [list(t.box) for t in direct.tiles] == boxes
        assert rec.teacher_probs == pytest.approx([t.crack_prob for t in direct.tiles], abs=1e-6)
        gaps = [abs(t - s) for t, s in zip(rec.teacher_probs, rec.student_probs)]
        assert rec.disagreement == pytest.approx(max(gaps), abs=1e-6)
    assert max(r.disagreement for r in seen) > 0.05  # the teachers are not a copy of the student
    if sys.platform.startswith("linux"):
        assert set(priority) == {(NICE, os.SCHED_IDLE)}
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != NICE  # only its own thread
    assert scorer.stats.scored == len(flags) and scorer.stats.skipped == 0


def test_tiles_of_frames_smaller_than_a_tile_are_padded_as_the_engine_pads(teachers, frames):
    for frame in (frames[0][:100, :130], frames[0][:100, :400], frames[0][:150, :]):
        frame = np.ascontiguousarray(frame)
        direct = teachers.inspect(frame)
        boxes = [list(t.box) for t in direct.tiles]
        assert tile_crack_probs(teachers, frame, boxes) == pytest.approx([t.crack_prob for t in direct.tiles],
                                                                         abs=1e-6)
    with pytest.raises(ValueError, match="not inside"):
        tile_batch(frames[0], [[500, 0, 660, 160]], 160, 96)


def test_a_flag_whose_image_is_missing_is_skipped_once(store, engine, frames, scorers):
    flags = [add_flag(store, engine, f) for f in frames[:3]]
    (store.root / flags[1].frame_file).unlink()
    scorer = scorers(store, poll_s=0.05)
    scorer.start()
    wait_for(lambda: scorer.stats.scored == 2, "the two readable flags scored")
    passes = scorer.stats.passes
    wait_for(lambda: scorer.stats.passes >= passes + 5, "five more looks at the store")
    assert scorer.stats.skipped == 1 and scorer.skipped == {flags[1].id}
    assert [r.id for r in store.unscored(limit=10)] == [flags[1].id]
    assert store.get(flags[0].id).teacher_probs is not None and store.get(flags[2].id).teacher_probs is not None


def test_notify_wakes_the_scorer_long_before_its_poll(store, engine, frames, scorers):
    seen = []
    scorer = scorers(store, poll_s=3600.0, on_scored=seen.append)
    scorer.start()
    wait_for(lambda: scorer.stats.passes >= 1, "the first look at the (empty) store")
    flag = add_flag(store, engine, frames[1])
    scorer.notify()
    wait_for(lambda: len(seen) == 1, "the new flag scored after notify()")
    assert seen[0].id == flag.id


def test_a_failing_callback_does_not_stop_the_scoring(store, engine, frames, scorers):
    for f in frames[:2]:
        add_flag(store, engine, f)

    def on_scored(rec):
        raise RuntimeError("a broken subscriber")

    scorer = scorers(store, on_scored=on_scored)
    scorer.start()
    wait_for(lambda: scorer.stats.scored == 2, "both flags scored")
    assert scorer.running


def test_stop_joins_and_is_idempotent(store, scorers):
    never = scorers(store)
    never.stop()  # before start: nothing to join, and the scorer is done
    with pytest.raises(RuntimeError):
        never.start()
    scorer = scorers(store)
    scorer.start()
    wait_for(lambda: scorer.stats.passes >= 1, "the scorer running")
    scorer.stop()
    assert not scorer.running
    scorer.stop()
    with pytest.raises(RuntimeError):
        scorer.start()


def test_a_closed_store_ends_the_thread(tmp_path, engine, frames, scorers):
    from inspector.store.database import FlagStore

    store = FlagStore(tmp_path / "flags")
    scorer = scorers(store, poll_s=3600.0)
    scorer.start()
    wait_for(lambda: scorer.stats.passes >= 1, "the scorer running")
    store.close()
    scorer.notify()
    wait_for(lambda: not scorer.running, "the thread to end by itself")
    with pytest.raises(StoreError):
        store.unscored(limit=1)


# ----------------------------------------------------------------------------- the app's wiring


def test_the_window_runs_the_scorer_and_wakes_it_for_each_flag(qtbot, engine, store):
    from inspector.live.flagging import Flagger, FlagPolicy
    from inspector.qt.window import MainWindow
    from inspector.capture.sources import parse_source

    scorer = TeacherScorer(store, default_teachers(), poll_s=3600.0)  # only notify() wakes it in time
    w = MainWindow(engine, store, Flagger(FlagPolicy(auto=False)), parse_source(sample_video()), scorer=scorer)
    qtbot.addWidget(w)
    w.show()
    w.start()
    try:
        assert scorer.running
        qtbot.waitUntil(lambda: w.frames_shown >= 1 and scorer.stats.passes >= 1, timeout=30000)
        with qtbot.waitSignal(w.flagShown, timeout=10000) as blocker:
            assert w.flag_now()
        flag_id = blocker.args[0].id
        qtbot.waitUntil(lambda: store.get(flag_id).teacher_probs is not None, timeout=30000)
    finally:
        w.shutdown()
    assert not scorer.running
    assert len(store.get(flag_id).teacher_probs) == len(store.get(flag_id).tiles)


def test_the_app_finds_the_shipped_teachers_or_is_told_not_to(tmp_path, store):
    from inspector.qt.main import build_parser
    from inspector.qt.startup import StartupError, make_scorer, resolve_teachers

    assert resolve_teachers(None) == default_teachers()
    assert resolve_teachers(None, disabled=True) is None
    with pytest.raises(StartupError, match="no such package"):
        resolve_teachers(tmp_path / "missing.crackpkg")
    args = build_parser().parse_args(["--teachers", str(default_teachers()), "--no-teachers"])
    assert resolve_teachers(args.teachers, args.no_teachers) is None
    assert make_scorer(store, None) is None
    scorer = make_scorer(store, default_teachers())
    assert isinstance(scorer, TeacherScorer) and scorer.threads == 1 and not scorer.running
