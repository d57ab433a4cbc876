"""The agent's live loop: newest camera frame → the model in service → one encoded stream frame,
handed to every client's newest-only slot; model changes without stopping the stream.

Threads
-------
* the :class:`~inspector.capture.sources.FrameGrabber`'s capture thread (newest frame only);
* one **inference thread** (here): takes the newest frame it has not seen, runs the engine in
  service, checks the result (:func:`~inspector.agent.stream.check_result`), encodes it **once**
  (:func:`~inspector.agent.stream.encode_result`) and publishes the bytes on the
  :class:`~inspector.agent.stream.FrameBoard`, where each stream client's
  :class:`~inspector.agent.stream.Subscription` only ever gets the newest frame it has not had;
* model changes (:meth:`AgentRuntime.activate`, :meth:`AgentRuntime.rollback`, the start-up
  load; :meth:`AgentRuntime.start_activation` on a worker thread) are the
  :class:`~inspector.agent.service.ModelService`'s: load off the serving path, swap between
  two frames, probation on the first live frames and auto-rollback (its module doc says how).
  The inference thread records each probation verdict, and a result computed by an engine
  swapped out meanwhile is never published.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from inspector.agent.service import (PROBATION_FRAMES, PROBATION_TIMEOUT_S, Loaded, ModelService, Probation,
                                     now_iso)
from inspector.agent.stream import JPEG_QUALITY, FrameBoard, Subscription, check_result, encode_result
from inspector.edge.numerics import int8_isa
from inspector.edge.reuse import ReusePolicy, ReusingEngine, reusable
from inspector.link import protocol
from inspector.link.protocol import ModelInfo, ModelList

log = logging.getLogger(__name__)

POLL_S = 0.1                  # inference thread: wake-up period to notice stop()
EVENTS_KEPT = 100
JOIN_S = 10.0                 # stop(): wait for the frame in flight
ERROR_LOG_EVERY_S = 10.0      # repeated inference errors are logged at most this often
SHARE_FRAMES = 90             # the status's share of tiles inferred is over this many frames

Event = dict[str, Any]


class AgentRuntime:
    """Inference, model swaps and the stream slots of the agent (see the module doc).

    ``repository``: a :class:`~inspector.agent.repository.ModelRepository`; ``grabber``: a
    :class:`~inspector.capture.sources.FrameGrabber` (started and stopped here). ``threads``: ORT
    intra-op threads per engine (None: the engine's default). ``on_event(event)``: called with
    every event dict ``{"time", "kind", "message"}`` on the thread that made it; exceptions are
    logged. ``engine_factory(path)``: how a package becomes an engine (tests). Thread-safe.
    """

    def __init__(self, repository: Any, grabber: Any, *, threads: int | None = None,
                 on_event: Callable[[Event], None] | None = None,
                 engine_factory: Callable[[Path], Any] | None = None,
                 probation_frames: int = PROBATION_FRAMES, probation_timeout: float = PROBATION_TIMEOUT_S,
                 jpeg_quality: int = JPEG_QUALITY, numeric_path: str = "optimised",
                 reuse: ReusePolicy | None = ReusePolicy()):
        self.repository = repository
        self.grabber = grabber
        self._on_event = on_event
        self.jpeg_quality = int(jpeg_quality)
        self._lock = threading.Lock()            # _events, _seq
        self._events: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self._seq = 0
        self._stopping = threading.Event()
        self._board = FrameBoard(self._stopping)
        self.models = ModelService(repository, grabber, self._event, self._stopping, threads=threads,
                                   engine_factory=engine_factory, probation_frames=probation_frames,
                                   probation_timeout=probation_timeout, numeric_path=numeric_path)
        self._thread: threading.Thread | None = None
        self._startup: threading.Thread | None = None
        self._last_error_log = 0.0
        self.errors = 0
        self.reuse = reuse
        self._reuser: ReusingEngine | None = None
        self._shares: deque[tuple[int, int]] = deque(maxlen=SHARE_FRAMES)

    # ------------------------------------------------------------------ life cycle

    def start(self, *, wait_model: bool = False) -> None:
        """Start the camera and the inference thread; put the active model in service in the
        background (``wait_model``: before returning)."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self.grabber.start()
        self._thread = threading.Thread(target=self._run, name="agent-inference", daemon=True)
        self._thread.start()
        self._startup = threading.Thread(target=self.models.serve_at_start, name="agent-model-start", daemon=True)
        self._startup.start()
        if wait_model:
            self._startup.join()

    def stop(self) -> None:
        """Stop inference and the camera; every subscription returns None from now on."""
        self._stopping.set()
        self.models.cancel_probation()
        self._board.close_all()
        for t in (self._thread, self._startup):
            if t is not None and t is not threading.current_thread():
                t.join(JOIN_S)
        self.models.join(JOIN_S)
        self._thread = self._startup = None
        self.grabber.stop()

    # ------------------------------------------------------------------ stream slots

    def subscribe(self) -> Subscription:
        return self._board.subscribe()

    # ------------------------------------------------------------------ model changes (the ModelService's)

    def activate(self, model_id: str) -> ModelList:
        """:meth:`ModelService.activate <inspector.agent.service.ModelService.activate>`."""
        return self.models.activate(model_id)

    def start_activation(self, model_id: str) -> protocol.Activation:
        """:meth:`ModelService.start_activation <inspector.agent.service.ModelService.start_activation>`."""
        return self.models.start_activation(model_id)

    def rollback(self) -> ModelList:
        """:meth:`ModelService.rollback <inspector.agent.service.ModelService.rollback>`."""
        return self.models.rollback()

    # ------------------------------------------------------------------ status

    @property
    def model(self) -> ModelInfo | None:
        return self.models.model

    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def activation(self) -> protocol.Activation | None:
        """The latest model change and how far it got (None before the first)."""
        return self.models.activation()

    def status(self) -> dict[str, Any]:
        """``camera``, ``model`` (dict or None), ``provider``, ``fps``, ``clients``, ``activation``
        (dict or None) for protocol.Status."""
        activation = self.activation()
        current, fps, served = self.models.snapshot()
        cam = self.grabber.status
        clients = self._board.clients
        providers = list(getattr(current.engine, "providers", []) or []) if current else []
        verification = getattr(current.engine, "verification", None) if current else None
        return {"camera": {"source": self.grabber.spec.label, "state": cam.state, "message": cam.message,
                           "fps": round(float(self.grabber.fps), 2)},
                "model": current.info.to_dict() if current else None,
                "provider": providers[0] if providers else "",
                "isa": int8_isa(),
                "model_frames": served if current else 0,
                "tile_share": self.tile_share(),
                # still putting its model in service (loading, the reference check): not "no model"
                "starting": current is None and self._startup is not None and self._startup.is_alive(),
                "model_checked": bool(current) and served >= max(1, self.models.probation_frames),
                "verification": verification.to_dict() if verification is not None else None,
                "fps": round(fps, 2), "clients": clients,
                "activation": activation.to_dict() if activation is not None else None}

    def _event(self, kind: str, message: str, *, record: bool = True) -> None:
        """Log, tell ``on_event`` and (``record``) keep for the status. Auto-rollbacks are not
        kept: the repository records them itself (``mark_failed``), with the same reason."""
        event = {"time": now_iso(), "kind": kind, "message": message}
        if record:
            with self._lock:
                self._events.append(event)
        (log.warning if kind in ("auto-rollback", "error") else log.info)("%s: %s", kind, message)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # noqa: BLE001 - a listener's bug must not break a model change
                log.exception("on_event callback failed")

    # ------------------------------------------------------------------ the inference thread

    def _run(self) -> None:
        last = 0
        while not self._stopping.is_set():
            t_ask = time.perf_counter()
            try:
                frame = self.grabber.latest(after_seq=last, timeout=POLL_S)
            except Exception:  # noqa: BLE001 - a broken grabber must not kill the thread
                log.exception("reading a frame failed")
                frame = None
            if frame is None:
                # an ended or stopped grabber answers at once: wait here instead of spinning
                self._stopping.wait(max(0.0, POLL_S - (time.perf_counter() - t_ask)))
                continue
            last = frame.seq
            loaded, probation = self.models.serving()
            if loaded is None or self._stopping.is_set():
                continue
            try:
                self._inspect(frame, loaded, probation)
            except Exception:  # noqa: BLE001 - one bad frame: report, go on with the next
                log.exception("publishing a frame failed")

    def _inspect(self, frame: Any, loaded: Loaded, probation: Probation | None) -> None:
        t_start = time.perf_counter()
        height, width = frame.rgb.shape[:2]
        try:
            result = self._reusing(loaded).inspect(frame.rgb)
            failure = check_result(result, height, width, len(loaded.info.labels), full=probation is not None)
        except Exception as exc:  # noqa: BLE001 - judged like any other failure
            result, failure = None, f"{type(exc).__name__}: {exc}"
        if probation is not None:
            probation.record(failure)
        if failure is not None:
            self.errors += 1
            now = time.monotonic()
            if probation is None and now - self._last_error_log >= ERROR_LOG_EVERY_S:
                self._last_error_log = now
                log.error("%s: frame %d not published: %s (%d so far)", loaded.info.id, frame.seq, failure,
                          self.errors)
            return
        with self._lock:
            self._shares.append((len(result.fresh_tiles), len(result.tiles)))
        item = encode_result(frame, result, loaded.info.id, t_start, self._next_seq, self.jpeg_quality)
        if self.models.credit(loaded):  # not if computed by a model swapped out meanwhile
            self._board.publish(item)

    def _reusing(self, loaded: Loaded):
        """The model in service with tile reuse (a fresh cache for each model), or the bare engine."""
        if self.reuse is None or not reusable(loaded.engine):
            return loaded.engine
        if self._reuser is None or self._reuser.engine is not loaded.engine:
            self._reuser = ReusingEngine(loaded.engine, self.reuse)
        self._reuser.follow_rate(float(self.grabber.fps or 0.0))
        return self._reuser

    def tile_share(self) -> float | None:
        """Tiles inferred over tiles published, over the last ``SHARE_FRAMES`` frames (None before any)."""
        with self._lock:
            fresh, total = sum(f for f, _ in self._shares), sum(t for _, t in self._shares)
        return round(fresh / total, 4) if total else None

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq
