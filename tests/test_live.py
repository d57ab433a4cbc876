"""LiveInspector without Qt: results arrive, the newest frame wins, stop() writes every flag."""
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import cv2
import pytest

from inspector.live.flagging import Flagger, FlagPolicy
from inspector.live.loop import LiveError, LiveInspector, LiveResult
from inspector.paths import sample_video
from inspector.capture.sources import FrameGrabber, parse_source
from support import engine, store  # noqa: F401  (fixtures)

FLAG_EVERY_FRAME = FlagPolicy(crack_threshold=1e-6, window_s=0.0, budget_s=0.0, duplicate_memory=0)


class Recorder:
    """Collects the callbacks; ``wait(pred)`` polls until a predicate over it holds."""

    def __init__(self, on_result_delay: float = 0.0):
        self.results: list[LiveResult] = []
        self.statuses, self.stored, self.errors = [], [], []
        self.delay = on_result_delay
        self.lock = threading.Lock()

    def on_result(self, live):
        with self.lock:
            self.results.append(live)
        if self.delay:
            time.sleep(self.delay)   # a slow consumer, on the inference thread

    def callbacks(self):
        return dict(on_result=self.on_result, on_status=self.statuses.append,
                    on_flag_stored=self.stored.append, on_error=self.errors.append)

    def wait(self, pred, timeout=20.0):
        deadline = time.monotonic() + timeout
        while not pred(self):
            assert time.monotonic() < deadline, f"timed out: {len(self.results)} results, errors {self.errors}"
            time.sleep(0.02)


def sample_grabber():
    return FrameGrabber(parse_source(sample_video()), loop=True, realtime=True)


def test_results_arrive_with_latency_stamps(engine, store):
    rec = Recorder()
    live = LiveInspector(engine, sample_grabber(), store, Flagger(FlagPolicy(auto=False)), threshold=0.7,
                         **rec.callbacks())
    live.start()
    try:
        rec.wait(lambda r: len(r.results) >= 3)
    finally:
        live.stop()
    first = rec.results[0]
    assert first.frame.rgb.shape == (480, 640, 3)
    assert first.result.heatmap.shape == (480, 640)
    assert first.threshold == 0.7
    assert all(r.t_inferred >= r.frame.t_capture for r in rec.results)
    seqs = [r.frame.seq for r in rec.results]
    assert seqs == sorted(set(seqs))                       # each frame once, in order
    assert [s.state for s in rec.statuses][:1] in (["connecting"], ["live"])
    assert rec.errors == [] and not live.running
    assert live.latest is rec.results[-1]


def five_spaced_results(engine, store, *, delay: float = 0.0, pace: float | None = None):
    """Five results of the sample video with a consumer that takes ``delay`` s per result or a
    ``pace``; (recorder, inspector, frame-number gaps between consecutive results)."""
    rec = Recorder(on_result_delay=delay)
    live = LiveInspector(engine, sample_grabber(), store, Flagger(FlagPolicy(auto=False)), **rec.callbacks())
    live.pace = pace
    live.start()
    try:
        rec.wait(lambda r: len(r.results) >= 5, timeout=30.0)
    finally:
        live.stop()
    return rec, live, [b.frame.seq - a.frame.seq for a, b in zip(rec.results, rec.results[1:])]


def test_slow_consumer_skips_frames_instead_of_queueing(engine, store):
    rec, live, gaps = five_spaced_results(engine, store, delay=0.4)
    # 30 fps for ≥ 0.4 s per result: about a dozen frames pass between two results, all skipped
    assert min(gaps) >= 5, gaps
    assert live.stats.skipped >= sum(g - 1 for g in gaps)
    # no backlog: a frame is never older than one consumer delay + one inference when inspected
    ages = [r.t_inferred - r.frame.t_capture for r in rec.results]
    assert max(ages) < 0.4 + 1.5, ages


def test_a_pace_spaces_local_inferences_out(engine, store):
    """While a model update trains the window sets ``pace``: one inference per 0.4 s at most, the
    frames in between skipped (as for a slow consumer), none queued."""
    rec, live, gaps = five_spaced_results(engine, store, pace=0.4)
    assert min(gaps) >= 5, gaps           # 30 fps, ≥ 0.4 s apart: about a dozen frames between two
    assert live.stats.skipped >= sum(g - 1 for g in gaps) and rec.errors == []


def test_stop_writes_every_queued_flag(engine, store):
    class SlowStore:
        """The real store, 0.15 s slower per write, so flags pile up in the writer's queue."""

        def add(self, *args, **kwargs):
            time.sleep(0.15)
            return store.add(*args, **kwargs)

    rec = Recorder()
    live = LiveInspector(engine, sample_grabber(), SlowStore(), Flagger(FLAG_EVERY_FRAME), **rec.callbacks())
    live.start()
    try:
        rec.wait(lambda r: len(r.results) >= 1)
        assert live.flag_current(location="pier 3", note="by hand") is not None
        rec.wait(lambda r: live.stats.flags_queued >= 5)
    finally:
        live.stop()
    queued = live.stats.flags_queued
    assert queued >= 5
    assert live.stats.flags_stored == queued == len(rec.stored) == store.count()
    in_store = {r.id: r for r in store.list()}
    assert {r.id for r in rec.stored} == set(in_store)
    manual = [r for r in in_store.values() if r.reason == "manual"]
    assert len(manual) == 1 and manual[0].location == "pier 3" and manual[0].note == "by hand"
    assert live.flag_current() is None                     # stopped: nothing more is accepted
    assert rec.errors == []


def test_a_failing_frame_is_reported_and_the_worker_goes_on(engine, store):
    class FlakyEngine:
        manifest = engine.manifest

        def __init__(self):
            self.calls = 0

        def inspect(self, rgb):
            self.calls += 1
            if self.calls % 2:
                raise ValueError("bad frame")
            return engine.inspect(rgb)

    rec = Recorder()
    live = LiveInspector(FlakyEngine(), sample_grabber(), store, Flagger(FlagPolicy(auto=False)), **rec.callbacks())
    live.start()
    try:
        rec.wait(lambda r: len(r.results) >= 2 and len(r.errors) >= 2)
    finally:
        live.stop()
    assert all(isinstance(e, LiveError) and e.stage == "inference" for e in rec.errors)
    assert isinstance(rec.errors[0].__cause__, ValueError)


def test_threshold_is_validated(engine, store):
    live = LiveInspector(engine, sample_grabber(), store, Flagger())
    live.threshold = 0.25
    assert live.threshold == 0.25
    with pytest.raises(ValueError, match="threshold"):
        live.threshold = 1.5


def test_the_live_pipeline_imports_no_qt():
    code = ("import sys, inspector.live.loop, inspector.capture.sources, inspector.live.flagging, inspector.store.database; "
            "assert not [m for m in sys.modules if m.startswith(('PySide6', 'shiboken6'))]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def short_video(tmp_path, frames: int = 16, first: int = 170):
    """``frames`` frames of the sample video's crack stretch as a video of their own (it ends)."""
    cap = cv2.VideoCapture(str(sample_video()))
    cap.set(cv2.CAP_PROP_POS_FRAMES, first)
    path = tmp_path / "short.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    for _ in range(frames):
        ok, bgr = cap.read()
        assert ok
        writer.write(bgr)
    writer.release()
    cap.release()
    return FrameGrabber(parse_source(path), loop=False, realtime=True)


def test_stop_stores_the_open_windows_best_frame_dated_by_its_frame(engine, store, tmp_path):
    """The rate budget holds a window's best until the window ends; stop() must not lose it. The
    flag stored is the most informative frame offered, dated when that frame was inferred."""
    rec = Recorder()
    flagger = Flagger(FlagPolicy(crack_threshold=1e-6, window_s=3600.0, duplicate_memory=0))
    live = LiveInspector(engine, short_video(tmp_path), store, flagger, **rec.callbacks())
    live.start()
    try:
        rec.wait(lambda r: len(r.results) >= 5)
        assert flagger.pending and store.count() == 0
    finally:
        live.stop()
    assert live.stats.flags_stored == 1 == store.count() and not flagger.pending
    (record,) = store.list()
    # candidates: frames with a freshly inferred tile (tile reuse carries the others' over)
    candidates = [r for r in rec.results if flagger.policy.reason_for(r.result)]
    best = max(candidates, key=lambda r: flagger.score(r.result))
    assert record.crack_prob_max == pytest.approx(best.result.crack_prob_max)
    assert [t["crack_prob"] for t in record.tiles] == pytest.approx([t.crack_prob for t in best.result.tiles])
    created = datetime.fromisoformat(record.created)
    inferred = datetime.now(timezone.utc) - timedelta(seconds=time.perf_counter() - best.t_inferred)
    assert abs((created - inferred).total_seconds()) < 0.5
    assert flagger.stats.kept == 1 and flagger.stats.outranked == len(candidates) - 1 >= 1


def test_a_window_ends_on_time_when_no_frame_comes(engine, store, tmp_path):
    """After the video's last frame no offer closes the window: the worker's wait does."""
    rec = Recorder()
    flagger = Flagger(FlagPolicy(crack_threshold=1e-6, window_s=0.3, duplicate_memory=0))
    live = LiveInspector(engine, short_video(tmp_path), store, flagger, **rec.callbacks())
    live.start()
    try:
        rec.wait(lambda r: r.statuses and r.statuses[-1].state == "ended" and not flagger.pending
                 and live.stats.flags_stored == live.stats.flags_queued >= 1)
        stored = live.stats.flags_stored
    finally:
        live.stop()
    assert live.stats.flags_stored == stored == store.count() == flagger.stats.kept and rec.errors == []
