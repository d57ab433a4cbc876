"""Live inspection: frames from a grabber → inference (newest frame wins) → flagger → flag store.

Plain Python (no Qt): the desktop window (``inspector/qt``), the self-test and the tests drive
the same object through callbacks.

Result sources
--------------
Where results come from is a *result source*: ``start()``, ``stop()``, ``status``
(:class:`~inspector.capture.newest.SourceStatus`), ``fps``, ``latest(after_seq, timeout)`` (the newest
item with ``.seq > after_seq``, or None) and ``inspect(item) -> Inspected``.

* local: :class:`LocalInference` = a :class:`~inspector.capture.sources.FrameGrabber` (``latest`` gives
  frames) + the :class:`~inspector.edge.engine.InferenceEngine` (``inspect`` runs the model here);
* remote: :class:`inspector.link.remote.DeviceFeed` (``latest`` gives results the device computed,
  ``inspect`` returns them as they are).

``LiveInspector(engine, grabber, ...)`` wraps a plain grabber in :class:`LocalInference`; an
object that already has ``inspect`` is used as it is (``engine`` may then be None). Flags are
stored with the model of the result (:attr:`Inspected.model`): the device's model for a device.

Threads
-------
* the source's own thread (a grabber's capture thread, a device feed's network thread; each
  keeps only the newest item);
* one **inference worker**: takes the newest item it has not seen
  (``source.latest(after_seq=last)``), has it inspected (runs the engine, or nothing for a
  device), offers it to the flagger, hands a :class:`LiveResult` to ``on_result``. Frames that
  arrived while it was busy are skipped, so a slow model or a slow consumer never builds a
  backlog: the latency stays one inference, not a growing queue. The flagger keeps the most
  informative frame of each window of ``window_s`` (:mod:`inspector.live.flagging`): a
  flag is queued when its window ends (with a later frame, or from the worker's wait when no
  frame comes) and the open window is closed by :meth:`LiveInspector.stop`;
* one **store writer** with an unbounded queue: flag writes (SQLite + image files, fsync) never
  block inference. :meth:`LiveInspector.stop` closes the flagger's window and drains the queue,
  so every flag that was chosen is written before ``stop`` returns; ``on_flag_stored(record)``
  follows each durable write.

Callbacks run on these worker threads and must not block for long (the Qt layer only
re-emits them as queued signals). An exception in any stage (a bad frame, a full disk, a
callback) is reported to ``on_error`` as a :class:`LiveError` and the thread carries on with
the next frame or flag; nothing fails silently and no thread dies of one bad item.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import numpy as np

from inspector.edge.engine import FrameResult, InferenceEngine
from inspector.edge.reuse import ReusePolicy, ReusingEngine, reusable
from inspector.store.database import ModelRef
from inspector.errors import InspectorError

log = logging.getLogger(__name__)

# How long the worker waits for a new frame before it looks at the source status and the
# stop flag again: short enough for a prompt stop() and status updates, long enough not to spin.
POLL_S = 0.1
# stop(): how long to wait for the inference worker to finish the frame it is on.
WORKER_JOIN_S = 10.0
# stop(): how long the store writer may take to drain queued flags (each is a few fsyncs).
DRAIN_JOIN_S = 60.0

Callback = Callable[[Any], None]


class LiveError(InspectorError, RuntimeError):
    """A failure in one stage of the live pipeline; ``stage`` is "source", "inference",
    "flagging", "store" or "callback"; the original exception is ``__cause__``."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage


@dataclass(frozen=True)
class LiveResult:
    """One inspected frame. ``threshold`` is the verdict threshold in force for it;
    ``t_inferred`` is ``time.perf_counter()`` when inference finished (``frame.t_capture``
    is when it was read, so ``t_inferred - frame.t_capture`` is capture→verdict latency);
    ``model`` the model that produced it; ``link`` how it travelled (a
    :class:`inspector.link.remote.DeviceLink` for a device's result, None for local inference)."""

    frame: Any  # sources.Frame
    result: FrameResult
    threshold: float
    t_inferred: float
    model: ModelRef | None = None
    link: Any = None


@dataclass(frozen=True)
class Inspected:
    """What a result source's ``inspect`` returns: the ``frame``, its ``result``, the ``model``
    that made it, ``t_inferred`` (perf_counter when the result was available here) and, for a
    device, the ``link`` it came over."""

    frame: Any  # sources.Frame
    result: FrameResult
    model: ModelRef
    t_inferred: float
    link: Any = None

    @property
    def seq(self) -> int:
        return self.frame.seq


def engine_model(engine) -> ModelRef:
    m = engine.manifest
    return ModelRef(name=m.name, version=m.version, sha256=m.model_sha256)


class LocalInference:
    """The local result source: ``grabber``'s frames, inspected here by ``engine``, with
    temporal tile reuse (:mod:`inspector.edge.reuse`) unless ``reuse`` is None (or the engine is a
    stand-in with ``inspect`` alone); the cap on fresh tiles follows the grabber's frame rate."""

    def __init__(self, grabber, engine: InferenceEngine, reuse: ReusePolicy | None = ReusePolicy()):
        if engine is None:
            raise ValueError("a local video source needs an inference engine (LiveInspector(engine, ...))")
        self.grabber = grabber
        self.engine = engine
        self.model = engine_model(engine)
        self.reuse = ReusingEngine(engine, reuse) if reuse is not None and reusable(engine) else None

    def __repr__(self) -> str:
        return f"LocalInference({self.grabber!r})"

    def start(self) -> None:
        self.grabber.start()

    def stop(self) -> None:
        self.grabber.stop()

    @property
    def status(self):
        return self.grabber.status

    @property
    def fps(self) -> float:
        return self.grabber.fps

    def latest(self, after_seq: int = 0, timeout: float | None = None):
        return self.grabber.latest(after_seq=after_seq, timeout=timeout)

    def inspect(self, frame) -> Inspected:
        if self.reuse is None:
            result = self.engine.inspect(frame.rgb)
        else:
            self.reuse.follow_rate(float(getattr(self.grabber, "fps", 0.0) or 0.0))
            result = self.reuse.inspect(frame.rgb)
        return Inspected(frame=frame, result=result, model=self.model, t_inferred=time.perf_counter())


def as_result_source(source, engine, reuse: ReusePolicy | None = ReusePolicy()):
    """``source`` if it is a result source (has ``inspect``), else ``LocalInference(source, engine, reuse)``."""
    return source if callable(getattr(source, "inspect", None)) else LocalInference(source, engine, reuse)


@dataclass
class LiveStats:
    """Counters, for the HUD and the self-test (read without a lock: approximate by design)."""

    results: int = 0
    skipped: int = 0          # frames the grabber produced that the worker never saw (newest wins)
    flags_queued: int = 0
    flags_stored: int = 0
    errors: int = 0
    infer_ms: float = 0.0     # of the last result
    infer_ms_total: float = 0.0

    @property
    def infer_ms_mean(self) -> float:
        return self.infer_ms_total / self.results if self.results else 0.0


@dataclass(frozen=True)
class _FlagJob:
    live: LiveResult
    reason: str
    location: str | None
    note: str | None
    created: str


def tile_dicts(result: FrameResult) -> list[dict]:
    """The tiles of a result as the store keeps them: ``{"box": [x0, y0, x1, y1], "crack_prob": p}``."""
    return [{"box": [int(v) for v in t.box], "crack_prob": float(t.crack_prob)} for t in result.tiles]


def _noop(_: Any) -> None:
    pass


class LiveInspector:
    """Run ``engine`` on the newest frames of ``grabber``; flag through ``flagger`` into ``store``.

    ``grabber`` may also be a result source whose results are computed elsewhere (a
    :class:`~inspector.link.remote.DeviceFeed`; ``engine`` may then be None): see the module doc.

    ``on_result(LiveResult)``, ``on_status(SourceStatus)`` (whenever the grabber's status
    changes), ``on_flag_stored(FlagRecord)``, ``on_error(LiveError)``: see the module doc.
    ``location`` and ``note`` (attributes) are attached to every following flag, automatic or
    manual, unless :meth:`flag_current` is given its own.
    """

    def __init__(self, engine: InferenceEngine | None, grabber, store, flagger, *,
                 on_result: Callback | None = None, on_status: Callback | None = None,
                 on_flag_stored: Callback | None = None, on_error: Callback | None = None,
                 threshold: float = 0.5, reuse: ReusePolicy | None = ReusePolicy()):
        self.engine = engine
        self.reuse = reuse    # tile reuse for local sources (None: every tile of every frame)
        self.store = store
        self.flagger = flagger
        self.on_result = on_result or _noop
        self.on_status = on_status or _noop
        self.on_flag_stored = on_flag_stored or _noop
        self.on_error = on_error or _noop
        self.model = engine_model(engine) if engine is not None else None   # of local inference
        self.location: str | None = None
        self.note: str | None = None
        # seconds at least between two inferences on this laptop (None: as fast as frames come);
        # the window sets it while a model update trains, so the job gets the cores
        self.pace: float | None = None
        self.stats = LiveStats()
        self._threshold = 0.5
        self.threshold = threshold

        self._source = as_result_source(grabber, engine, reuse)
        self._lock = threading.Lock()          # _latest, _source, _accepting + putting jobs
        self._latest: LiveResult | None = None
        self._jobs: queue.Queue[_FlagJob | None] = queue.Queue()
        self._stopping = threading.Event()
        self._accepting = False
        self._worker: threading.Thread | None = None
        self._writer: threading.Thread | None = None

    # ------------------------------------------------------------------ control

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        v = float(value)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"threshold must be a crack probability in [0, 1], got {value!r}")
        self._threshold = v

    @property
    def grabber(self):
        """The current source as given: a FrameGrabber, or a result source such as a DeviceFeed."""
        s = self._source
        return s.grabber if isinstance(s, LocalInference) else s

    @property
    def source(self):
        """The current result source (a :class:`LocalInference` for a grabber)."""
        return self._source

    @property
    def latest(self) -> LiveResult | None:
        """The newest result (None before the first)."""
        return self._latest

    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def start(self) -> None:
        """Start the grabber, the inference worker and the store writer."""
        if self._worker is not None:
            raise RuntimeError("LiveInspector.start(): already started (make a new one after stop())")
        self._stopping.clear()
        self._accepting = True
        self._writer = threading.Thread(target=self._run_writer, name="live-store-writer", daemon=True)
        self._worker = threading.Thread(target=self._run_inference, name="live-inference", daemon=True)
        self._writer.start()
        self._source.start()
        self._worker.start()

    def set_grabber(self, grabber) -> None:
        """Switch to another source while running (a grabber, or a result source such as a
        DeviceFeed): the worker moves to it at once and the old source is stopped on a helper
        thread (closing a network stream can block)."""
        source = as_result_source(grabber, self.engine, self.reuse)
        with self._lock:
            old, self._source = self._source, source
            self._latest = None
        if self._worker is not None and not self._stopping.is_set():
            source.start()
        threading.Thread(target=self._stop_quietly, args=(old,), name="live-old-source", daemon=True).start()

    def set_engine(self, engine: InferenceEngine) -> None:
        """Run ``engine`` from the next frame on (a new model on this laptop), while running.

        A local source is re-wrapped around the same grabber (which keeps running): the worker
        moves to it and takes the newest frame, and a result the old engine finishes after the
        swap is dropped, like after :meth:`set_grabber`. A device source is left alone; the
        engine is used when the view goes back to a local source."""
        if engine is None:
            raise ValueError("set_engine needs an inference engine")
        with self._lock:
            self.engine, self.model = engine, engine_model(engine)
            current = self._source
            if isinstance(current, LocalInference):
                self._source = LocalInference(current.grabber, engine, self.reuse)
                self._latest = None

    def stop(self) -> None:
        """Stop inference and the grabber, close the flagger's open window, then write every
        queued flag before returning."""
        self._stopping.set()
        if self._worker is not None:
            self._worker.join(WORKER_JOIN_S)
            if self._worker.is_alive():
                log.warning("live: the inference worker did not stop within %.0f s", WORKER_JOIN_S)
        self._stop_quietly(self._source)
        if self._accepting:
            self._queue_flags(self.flagger.flush)   # the window's best is a flag like any other
        with self._lock:
            self._accepting = False   # from here on no flag is queued, so the sentinel comes last
        if self._writer is not None:
            self._jobs.put(None)  # after every job queued so far: the writer drains, then ends
            self._writer.join(DRAIN_JOIN_S)
            if self._writer.is_alive():
                self._report("store", RuntimeError(f"{self._jobs.qsize()} flag(s) still being written after "
                                                   f"{DRAIN_JOIN_S:.0f} s"))

    def flag_current(self, location: str | None = None, note: str | None = None) -> LiveResult | None:
        """Flag the newest result by hand. Returns it (the write is queued; ``on_flag_stored``
        follows), or None if there is no result yet or the inspector is stopped."""
        live = self._latest
        if live is None or not self._accepting:
            return None
        try:
            self.flagger.manual(live.frame.rgb)
        except Exception as exc:  # noqa: BLE001 - the user asked: flag anyway, and say what failed
            self._report("flagging", exc)
        return live if self._enqueue(live, "manual", location, note) else None

    # ------------------------------------------------------------------ threads

    def _run_inference(self) -> None:
        source, last_seq, last_status = None, 0, None
        while not self._stopping.is_set():
            g = self._source
            if g is not source:
                source, last_seq, last_status = g, 0, None
            try:
                status = g.status
                if status != last_status:
                    last_status = status
                    self._call(self.on_status, status)
                t_ask = time.perf_counter()
                frame = g.latest(after_seq=last_seq, timeout=POLL_S)
            except Exception as exc:  # noqa: BLE001 - a broken source must not kill the worker
                self._report("source", exc)
                self._stopping.wait(POLL_S)
                continue
            if frame is None:
                self._queue_flags(self.flagger.due, time.perf_counter())   # a window ends without frames too
                # an ended or stopped source answers at once: wait here instead of spinning
                self._stopping.wait(max(0.0, POLL_S - (time.perf_counter() - t_ask)))
                continue
            if self._stopping.is_set():
                break
            if last_seq:
                self.stats.skipped += max(0, frame.seq - last_seq - 1)
            last_seq = frame.seq
            t_frame = time.perf_counter()
            self._inspect(frame, g)
            pace = self.pace
            if pace and isinstance(g, LocalInference):   # a device's results cost this laptop nothing
                self._stopping.wait(max(0.0, pace - (time.perf_counter() - t_frame)))

    def _inspect(self, item, source) -> None:
        try:
            done = source.inspect(item)
        except Exception as exc:  # noqa: BLE001 - one bad frame: report, go on with the next
            self._report("inference", exc)
            return
        frame, result, t_inferred = done.frame, done.result, done.t_inferred
        if source is not self._source:
            return  # the source was switched during inference: this frame is history
        live = LiveResult(frame=frame, result=result, threshold=self._threshold, t_inferred=t_inferred,
                          model=done.model, link=done.link)
        with self._lock:
            self._latest = live
        self.stats.results += 1
        self.stats.infer_ms = float(result.timings.get("total", 0.0))
        self.stats.infer_ms_total += self.stats.infer_ms
        self._queue_flags(self.flagger.offer, frame.rgb, result, t_inferred, live)
        self._call(self.on_result, live)

    def _queue_flags(self, choose: Callable[..., list], *args) -> None:
        """Ask the flagger (``choose(*args)``: offer, due or flush) and queue the flags it chose."""
        try:
            flags = choose(*args)
        except Exception as exc:  # noqa: BLE001 - one frame the flagger refuses must not stop the rest
            self._report("flagging", exc)
            return
        for flag in flags:
            self._enqueue(flag.item, flag.reason, None, None)

    def _enqueue(self, live: LiveResult, reason: str, location: str | None, note: str | None) -> bool:
        """Queue a flag write; False once stop() has begun (nothing may follow its sentinel).
        The flag is dated when its frame was inferred (a window's best is chosen up to
        ``window_s`` later, more while the rate budget waits)."""
        ago = max(0.0, time.perf_counter() - live.t_inferred)
        created = (datetime.now(timezone.utc) - timedelta(seconds=ago)).isoformat(timespec="milliseconds")
        job = _FlagJob(live=live, reason=reason, created=created,
                       location=location if location is not None else self.location,
                       note=note if note is not None else self.note)
        with self._lock:
            if not self._accepting:
                return False
            self.stats.flags_queued += 1
            self._jobs.put(job)
        return True

    def _run_writer(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                record = self._write(job)
            except Exception as exc:  # noqa: BLE001 - a failed write is reported; the next one may work
                self._report("store", exc)
                continue
            self.stats.flags_stored += 1
            self._call(self.on_flag_stored, record)

    def _write(self, job: _FlagJob):
        live = job.live
        frame, result = live.frame, live.result
        return self.store.add(np.ascontiguousarray(frame.rgb), result.heatmap, tile_dicts(result),
                              reason=job.reason, source=frame.source, model=live.model or self.model,
                              crack_prob_max=float(result.crack_prob_max), location=job.location or None,
                              note=job.note or None, created=job.created)

    # ------------------------------------------------------------------ helpers

    def _call(self, callback: Callback, arg: Any) -> None:
        try:
            callback(arg)
        except Exception as exc:  # noqa: BLE001 - a broken consumer must not stop the pipeline
            self._report("callback", exc)

    def _report(self, stage: str, exc: BaseException) -> None:
        self.stats.errors += 1
        err = LiveError(stage, f"{type(exc).__name__}: {exc}")
        err.__cause__ = exc
        log.warning("live: %s", err, exc_info=(type(exc), exc, exc.__traceback__))
        try:
            self.on_error(err)
        except Exception:  # noqa: BLE001 - nowhere left to report to but the log
            log.exception("live: on_error raised while reporting %s", err)

    def _stop_quietly(self, source) -> None:
        try:
            source.stop()
        except Exception as exc:  # noqa: BLE001
            self._report("source", exc)
