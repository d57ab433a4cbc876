"""The agent's live loop: newest camera frame → the model in service → one encoded stream frame,
handed to every client's newest-only slot; model changes without stopping the stream.

Threads
-------
* the :class:`~inspector.capture.sources.FrameGrabber`'s capture thread (newest frame only);
* one **inference thread**: takes the newest frame it has not seen, runs the engine in
  service, checks the result, encodes it **once** (JPEG of the frame, heat-map via
  :func:`~inspector.link.protocol.heat_to_wire`, :func:`~inspector.link.protocol.encode_frame`) and
  publishes the bytes. Each :class:`Subscription` (one per stream client) only ever gets the
  newest published frame it has not had yet: a slow client skips frames, it never builds a
  backlog, and a fast one costs no extra encoding;
* model changes (:meth:`AgentRuntime.activate`, :meth:`AgentRuntime.rollback`, the start-up
  load) run on the *caller's* thread, one at a time (``_admin`` lock);
  :meth:`AgentRuntime.start_activation` runs the same change on a worker thread and returns at
  once. The new engine is loaded off the serving path (a low-priority thread), reference outputs
  verified (``verify_reference=True``) and run once on a frame of the camera's size -- where
  TensorRT builds its engine, cached per version in the repository (:mod:`inspector.edge.engine_cache`)
  -- and only then is the engine reference swapped, between two frames. The stream goes on with
  the old model meanwhile; at most the frame in flight still comes from the old model.
  :meth:`AgentRuntime.activation` (the status's ``activation``) follows the latest change:
  building → verifying (probation) → live, or failed with the reason.

Probation and auto-rollback
---------------------------
A newly swapped-in engine is on probation for its first :data:`PROBATION_FRAMES` real frames:
an exception, a non-finite or out-of-range probability or heat value, or a wrong shape fails
it. Failed frames are never published. The changing thread waits for the verdict (up to
:data:`PROBATION_TIMEOUT_S`; not at all if the camera is reconnecting, then the model stays
unchecked on frames and an event says so); on failure it swaps the previous engine back at
once, calls ``repository.mark_failed`` (which reactivates the previous version) and records an
``auto-rollback`` event with the reason. Exactly the same happens at start-up, going back
through the stored versions until one works.
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from inspector.link import protocol
from inspector.capture.newest import FPS_WINDOW_S
from inspector.edge.numerics import int8_isa
from inspector.edge.package import ReferenceCheckError
from inspector.link.protocol import ApiError, ModelInfo, ModelList, StreamHeader
from inspector.capture.rate import RateWindow

log = logging.getLogger(__name__)

PROBATION_FRAMES = 5          # first results of a new engine that must pass the checks
PROBATION_TIMEOUT_S = 10.0    # longest a model change waits for those frames
POLL_S = 0.1                  # inference thread: wake-up period to notice stop()
JPEG_QUALITY = 80
EVENTS_KEPT = 100
JOIN_S = 10.0                 # stop(): wait for the frame in flight
ERROR_LOG_EVERY_S = 10.0      # repeated inference errors are logged at most this often
PROB_TOLERANCE = 1e-3         # INT8 outputs may overshoot [0, 1] by rounding
ADMIN_WAIT_S = 0.5            # start_activation: how long to wait for another model change to end
FIRST_FRAME_WAIT_S = 10.0     # loading a model: wait this long for a frame to size the TensorRT profile

Event = dict[str, Any]


def _now_iso() -> str:
    # the repository's format (its events and ours are merged and sorted by this string)
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class _Loaded:
    engine: Any              # InferenceEngine (duck-typed for tests)
    info: ModelInfo


@dataclass
class _ActivationRecord:
    """The latest model change (see :class:`~inspector.link.protocol.Activation`); ``t_state`` is
    the monotonic time it entered ``state``."""
    model_id: str
    state: str
    since: str
    started: str
    t_state: float
    message: str

    def to_protocol(self, now: float) -> protocol.Activation:
        return protocol.Activation(model_id=self.model_id, state=self.state, since=self.since, started=self.started,
                                   elapsed_s=round(max(0.0, now - self.t_state), 1), message=self.message)


class _Probation:
    """The verdict on a new engine's first ``needed`` results (recorded by the inference thread)."""

    def __init__(self, loaded: _Loaded, needed: int):
        self.loaded, self.needed = loaded, needed
        self.passed = 0
        self.failure: str | None = None
        self.cancelled = False
        self._cond = threading.Condition()

    def record(self, failure: str | None) -> None:
        with self._cond:
            if self.failure is not None or self.passed >= self.needed:
                return
            if failure is None:
                self.passed += 1
            else:
                self.failure = failure
            self._cond.notify_all()

    def cancel(self) -> None:
        """The agent is stopping: end :meth:`wait` now, undecided (the model is not blamed)."""
        with self._cond:
            self.cancelled = True
            self._cond.notify_all()

    def wait(self, timeout: float) -> tuple[bool, str | None]:
        """(decided, failure): decided is False when the frames did not come in time."""
        def done() -> bool:
            return self.cancelled or self.failure is not None or self.passed >= self.needed

        with self._cond:
            self._cond.wait_for(done, timeout)
            return self.failure is not None or self.passed >= self.needed, self.failure


def check_result(result: Any, height: int, width: int, n_labels: int, *, full: bool) -> str | None:
    """Why ``result`` (a FrameResult) is not a sane answer for an H×W frame, or None.

    ``full`` also checks every heat-map value (probation); otherwise only the cheap parts, so
    that nothing non-finite ever reaches the JSON header.
    """
    tiles = getattr(result, "tiles", None)
    if not tiles:
        return "no tiles in the result"
    for i, t in enumerate(tiles):
        p = np.asarray(t.probs, dtype=np.float64)
        if p.shape != (n_labels,):
            return f"tile {i}: probs of shape {p.shape}, expected ({n_labels},)"
        if not np.all(np.isfinite(p)) or p.min() < -PROB_TOLERANCE or p.max() > 1 + PROB_TOLERANCE:
            return f"tile {i}: probabilities {p.tolist()} are not finite values in [0, 1]"
        if not (math.isfinite(t.crack_prob) and -PROB_TOLERANCE <= t.crack_prob <= 1 + PROB_TOLERANCE):
            return f"tile {i}: crack probability {t.crack_prob!r} not in [0, 1]"
    pmax = result.crack_prob_max
    if not (isinstance(pmax, float) and math.isfinite(pmax) and -PROB_TOLERANCE <= pmax <= 1 + PROB_TOLERANCE):
        return f"crack_prob_max {pmax!r} not in [0, 1]"
    heat = result.heatmap
    if not isinstance(heat, np.ndarray) or heat.shape != (height, width):
        return f"heat-map of shape {getattr(heat, 'shape', None)}, expected {(height, width)}"
    if full:
        if not np.all(np.isfinite(heat)):
            return "heat-map has non-finite values"
        lo, hi = float(heat.min()), float(heat.max())
        if lo < -PROB_TOLERANCE or hi > 1 + PROB_TOLERANCE:
            return f"heat-map values in [{lo:.3g}, {hi:.3g}], expected [0, 1]"
    return None


class Subscription:
    """One stream client's view: :meth:`next` returns the newest frame it has not had yet."""

    def __init__(self, runtime: "AgentRuntime"):
        self._rt = runtime
        self.seq = 0              # seq of the last frame handed out
        self.closed = False

    def next(self, after_seq: int | None = None, timeout: float | None = None) -> bytes | None:
        """The newest encoded frame with seq > ``after_seq`` (default: the last one this
        subscription returned), waiting up to ``timeout`` s; None on time-out or when closed."""
        after = self.seq if after_seq is None else after_seq
        cond = self._rt._cond

        def ready() -> bool:
            latest = self._rt._latest
            return self.closed or (latest is not None and latest[0] > after)

        with cond:
            cond.wait_for(ready, timeout)
            if self.closed:
                return None
            latest = self._rt._latest
            if latest is None or latest[0] <= after:
                return None
            self.seq = latest[0]
            return latest[1]

    def close(self) -> None:
        with self._rt._cond:
            if not self.closed:
                self.closed = True
                self._rt._subs.discard(self)
                self._rt._cond.notify_all()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


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
                 jpeg_quality: int = JPEG_QUALITY, numeric_path: str = "optimised"):
        self.repository = repository
        self.numeric_path = numeric_path
        self.grabber = grabber
        self.threads = threads
        self._on_event = on_event
        self._factory = engine_factory or self._default_factory
        self.probation_frames = int(probation_frames)
        self.probation_timeout = float(probation_timeout)
        self.jpeg_quality = int(jpeg_quality)
        self._lock = threading.Lock()            # _current, _probation, _cache, _events, _rate
        self._admin = threading.Lock()           # one model change at a time
        self._cond = threading.Condition()       # _latest, _subs (shared with Subscription)
        self._current: _Loaded | None = None
        self._probation: _Probation | None = None
        self._cache: dict[tuple[str, str], _Loaded] = {}   # current and previous engine, for rollbacks
        self._latest: tuple[int, bytes] | None = None
        self._subs: set[Subscription] = set()
        self._events: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self._rate = RateWindow(FPS_WINDOW_S)   # results published by the model in service (reset at a swap)
        self._served = 0                         # frames the model in service computed, checked and published
        self._seq = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._startup: threading.Thread | None = None
        self._worker: threading.Thread | None = None      # start_activation's background change
        self._activation: _ActivationRecord | None = None
        self._last_load: tuple[str, float, str | None] | None = None   # (model id, load s, TRT cache state)
        self._last_error_log = 0.0
        self.errors = 0

    def _default_factory(self, path: Path) -> Any:
        """The engine for a stored package: TensorRT (when this onnxruntime has it) caches its
        engine in the version's folder of the repository, with a profile for the camera's frames."""
        from inspector.edge.engine import InferenceEngine, select_providers
        from inspector.edge.engine_cache import CACHE_DIR, TENSORRT

        engine_dir = getattr(self.repository, "engine_dir", None)
        tensorrt = engine_dir is not None and TENSORRT in select_providers()
        # only TensorRT needs the frame size before the session exists (its profile)
        frame = self._probe_frame(FIRST_FRAME_WAIT_S) if tensorrt else None
        return InferenceEngine(path, threads=self.threads, verify_reference=True, numeric_path=self.numeric_path,
                               trt_cache=engine_dir(path) / CACHE_DIR if tensorrt else None,
                               frame_size=tuple(frame.rgb.shape[:2]) if frame is not None else None)

    def _probe_frame(self, timeout: float = 0.0) -> Any:
        """The camera's newest frame (waiting up to ``timeout`` s), or None."""
        latest = getattr(self.grabber, "latest", None)
        if latest is None:
            return None
        try:
            return latest(0, timeout)
        except Exception:  # noqa: BLE001 - a frame is only a hint here
            return None

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
        self._startup = threading.Thread(target=self._serve_at_start, name="agent-model-start", daemon=True)
        self._startup.start()
        if wait_model:
            self._startup.join()

    def stop(self) -> None:
        """Stop inference and the camera; every subscription returns None from now on."""
        self._stopping.set()
        with self._lock:
            probation = self._probation
        if probation is not None:
            probation.cancel()
        with self._cond:
            for sub in list(self._subs):
                sub.closed = True
            self._subs.clear()
            self._cond.notify_all()
        for t in (self._thread, self._startup, self._worker):
            if t is not None and t is not threading.current_thread():
                t.join(JOIN_S)
        self._thread = self._startup = self._worker = None
        self.grabber.stop()

    # ------------------------------------------------------------------ stream slots

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        with self._cond:
            if self._stopping.is_set():
                sub.closed = True
            else:
                self._subs.add(sub)
        return sub

    # ------------------------------------------------------------------ status

    @property
    def model(self) -> ModelInfo | None:
        with self._lock:
            return self._current.info if self._current else None

    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def activation(self) -> protocol.Activation | None:
        """The latest model change and how far it got (None before the first)."""
        with self._lock:
            record = self._activation
            return None if record is None else record.to_protocol(time.monotonic())

    def status(self) -> dict[str, Any]:
        """``camera``, ``model`` (dict or None), ``provider``, ``fps``, ``clients``, ``activation``
        (dict or None) for protocol.Status."""
        activation = self.activation()
        with self._lock:
            current = self._current
            fps = self._rate.rate(time.perf_counter())
            served = self._served
        cam = self.grabber.status
        with self._cond:
            clients = len(self._subs)
        providers = list(getattr(current.engine, "providers", []) or []) if current else []
        verification = getattr(current.engine, "verification", None) if current else None
        return {"camera": {"source": self.grabber.spec.label, "state": cam.state, "message": cam.message,
                           "fps": round(float(self.grabber.fps), 2)},
                "model": current.info.to_dict() if current else None,
                "provider": providers[0] if providers else "",
                "isa": int8_isa(),
                "model_frames": served if current else 0,
                "model_checked": bool(current) and served >= max(1, self.probation_frames),
                "verification": verification.to_dict() if verification is not None else None,
                "fps": round(fps, 2), "clients": clients,
                "activation": activation.to_dict() if activation is not None else None}

    def _event(self, kind: str, message: str, *, record: bool = True) -> None:
        """Log, tell ``on_event`` and (``record``) keep for the status. Auto-rollbacks are not
        kept: the repository records them itself (``mark_failed``), with the same reason."""
        event = {"time": _now_iso(), "kind": kind, "message": message}
        if record:
            with self._lock:
                self._events.append(event)
        (log.warning if kind in ("auto-rollback", "error") else log.info)("%s: %s", kind, message)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # noqa: BLE001 - a listener's bug must not break a model change
                log.exception("on_event callback failed")

    # ------------------------------------------------------------------ model changes

    def activate(self, model_id: str) -> ModelList:
        """Activate stored version ``model_id``: load, swap, probation (see the module doc).

        RepositoryError from the repository propagates; a model that fails to load or fails its
        first frames raises ApiError 422 ``model_failed`` after the previous one is back."""
        with self._admin:
            listing = self.repository.activate(model_id)
            self._track(model_id, "building", f"loading {model_id}", new=True)
            try:
                failures = self._serve_active(f"activated {model_id}")
            except Exception as exc:  # e.g. the state write of an auto-rollback: no record left "building"
                self._track(model_id, "failed", f"{model_id}: {type(exc).__name__}: {exc}")
                raise
            self._track_outcome(model_id, failures)
            if failures and failures[0][0] == model_id:
                raise ApiError(422, "model_failed", f"{model_id} failed and was rolled back: {failures[0][1]}; "
                               f"active now: {self.repository.list().active}")
            return listing if not failures else self.repository.list()

    def start_activation(self, model_id: str) -> protocol.Activation:
        """Activate ``model_id`` in the background; returns at once, the Activation in state
        ``building``. The repository's switch is made here (RepositoryError for an unknown or
        damaged version, as :meth:`activate`); loading (a TensorRT engine build: minutes on a
        Nano), the swap and the probation run on a worker thread while the old model serves, and
        :meth:`activation` / the status follow it to ``live`` or ``failed`` (then the previous
        model is back, as with :meth:`activate`). One model change at a time: while another is in
        progress, asking for the same version returns it, another raises ApiError 409 ``busy``."""
        if not self._admin.acquire(timeout=ADMIN_WAIT_S):
            current = self.activation()
            if current is not None and current.model_id == model_id and not current.done:
                return current
            doing = f"{current.model_id} {current.state} for {current.elapsed_s:.0f} s" if current else "start-up"
            raise ApiError(409, "busy", f"another model change is in progress ({doing}); "
                                        f"activate {model_id} when the status shows it ended")
        try:
            if self._stopping.is_set():
                raise ApiError(503, "stopping", "the agent is stopping")
            self.repository.activate(model_id)
            activation = self._track(model_id, "building", f"loading {model_id}", new=True)
            self._worker = threading.Thread(target=self._activate_in_background, args=(model_id,),
                                            name="agent-activation", daemon=True)
            self._worker.start()
        except BaseException:
            self._admin.release()
            raise
        return activation

    def _activate_in_background(self, model_id: str) -> None:
        """start_activation's worker: owns ``_admin`` (taken by the caller) until the end."""
        try:
            self._track_outcome(model_id, self._serve_active(f"activated {model_id}"))
        except Exception as exc:  # noqa: BLE001 - the status must say why, the agent goes on
            log.exception("activating %s failed", model_id)
            self._track(model_id, "failed", f"{model_id}: {type(exc).__name__}: {exc}")
        finally:
            self._admin.release()

    def _track(self, model_id: str, state: str, message: str, *, new: bool = False) -> protocol.Activation:
        """Move the activation record to ``state`` (``new``: start a record for ``model_id``).
        Without ``new`` only the record of ``model_id`` moves, and only until it is done (a
        fall-back to the previous model at a failure loads that one without touching it)."""
        now, iso = time.monotonic(), _now_iso()
        with self._lock:
            record = self._activation
            if new or record is None:
                record = self._activation = _ActivationRecord(model_id, state, iso, iso, now, message)
            elif record.model_id == model_id and record.state not in protocol.ACTIVATION_DONE:
                if record.state != state:
                    record.state, record.since, record.t_state = state, iso, now
                record.message = message
            return record.to_protocol(now)

    def _track_outcome(self, model_id: str, failures: list[tuple[str, str]]) -> None:
        serving = self.model
        mine = [why for failed, why in failures if failed == model_id]
        if mine:
            self._track(model_id, "failed", f"{model_id} failed: {mine[0]}; serving "
                                            f"{serving.id if serving is not None else 'nothing'}")
        elif serving is not None and serving.id == model_id:
            self._track(model_id, "live", self._live_message(model_id))
        else:
            self._track(model_id, "failed", f"{model_id} not in service (serving "
                                            f"{serving.id if serving is not None else 'nothing'})")

    def _live_message(self, model_id: str) -> str:
        with self._lock:
            current, load = self._current, self._last_load
        providers = list(getattr(current.engine, "providers", []) or []) if current is not None else []
        text = f"{model_id} live on {providers[0] if providers else '?'}"
        if load is not None and load[0] == model_id:
            text += f" (loaded in {load[1]:.1f} s" + (f"; TensorRT engine cache {load[2]})" if load[2] else ")")
        return text

    def rollback(self) -> ModelList:
        """Go back to the previously active version (repository.rollback), then swap engines."""
        with self._admin:
            before = self.model
            listing = self.repository.rollback()
            target = listing.active
            self._track(target, "building", f"rolling back from {before.id if before else None} to {target}",
                        new=True)
            failures = self._serve_active(f"rolled back from {before.id if before else None}")
            self._track_outcome(target, failures)
            if failures and failures[0][0] == target:
                raise ApiError(422, "model_failed", f"rollback target {target} failed: {failures[0][1]}; "
                               f"active now: {self.repository.list().active}")
            return listing if not failures else self.repository.list()

    def _serve_at_start(self) -> None:
        try:
            with self._admin:
                active = self.repository.active()
                if not self._stopping.is_set():
                    if active is not None:
                        self._track(active.id, "building", f"agent started: loading {active.id}", new=True)
                    failures = self._serve_active("agent started")
                    if active is not None:
                        self._track_outcome(active.id, failures)
        except Exception as exc:  # noqa: BLE001 - the agent keeps running and says why
            log.exception("putting the active model in service failed")
            self._event("error", f"no model in service: {type(exc).__name__}: {exc}")

    def _serve_active(self, why: str) -> list[tuple[str, str]]:
        """Under ``_admin``: put the repository's active version in service; if it fails, mark it
        failed (the repository reactivates the previous one) and try that, until one works or
        none is left. Returns the [(model_id, reason)] that failed, in order."""
        failures: list[tuple[str, str]] = []
        while True:
            info = self.repository.active()
            if info is None or any(info.id == f for f, _ in failures):
                # nothing active, or the repository kept a failed model active (no previous one)
                with self._lock:
                    serving = self._current
                    if serving is not None and info is None:
                        self._current = serving = None
                        self._swapped()
                if serving is None:
                    self._event("error", "no model in service: upload or activate one")
                elif failures:
                    self._event("error", f"{failures[-1][0]} failed and the repository has nothing to go back "
                                         f"to; still serving {serving.info.id}")
                return failures
            with self._lock:
                unchanged = self._current is not None and self._current.info == info
            reason = self._trial(info)
            if reason is None:
                if not unchanged:
                    self._event("in-service", f"{info.id} in service ({why})")
                return failures
            failures.append((info.id, reason))
            self.repository.mark_failed(info.id, reason)
            after = self.repository.active()
            self._event("auto-rollback", f"{info.id} failed: {reason}; going back to "
                                         f"{after.id if after is not None and after.id != info.id else 'nothing'}",
                        record=False)

    def _engine_for(self, info: ModelInfo) -> _Loaded:
        key = (info.id, info.sha256)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        path = self.repository.active_path()
        if path is None:
            raise FileNotFoundError(f"the repository has no file for {info.id}")
        return _Loaded(_in_background(lambda: self._load_warm(Path(path))), info)

    def _load_warm(self, path: Path) -> Any:
        """Build the engine and run it once on a frame of the camera's size, so the swap does not
        put a cold session (first-run allocations for the tile batch) on the live path."""
        engine = self._factory(path)
        frame = getattr(self.grabber, "latest", lambda *a, **k: None)(0, 0.0)
        inspect = getattr(engine, "inspect", None)
        if frame is not None and inspect is not None:
            try:
                inspect(np.zeros_like(frame.rgb))
            except Exception:  # noqa: BLE001 - a failing model is judged on live frames (probation)
                log.debug("warm-up of %s failed; probation will judge it", path.name, exc_info=True)
        return engine

    def _trial(self, info: ModelInfo) -> str | None:
        """Load ``info`` (the repository's active version), swap it in, wait for its probation.
        None if it passed; else why not, and the engine that served before is back."""
        with self._lock:
            before = self._current
        if before is not None and before.info.id == info.id and before.info.sha256 == info.sha256:
            return None
        t0 = time.perf_counter()
        self._track(info.id, "building", f"loading {info.id} and running it once off the serving path "
                                         f"(a TensorRT engine is built here the first time)")
        try:
            loaded = self._engine_for(info)
        except ReferenceCheckError as exc:
            return f"refused by its reference check on this device, never activated: {exc}"
        except Exception as exc:  # noqa: BLE001 - PackageError, ORT errors, OSError: all mean "not this one"
            return f"does not load ({type(exc).__name__}: {exc})"
        load_s = time.perf_counter() - t0
        with self._lock:
            self._last_load = (info.id, load_s, getattr(loaded.engine, "trt_cache_state", None))
        probation = _Probation(loaded, self.probation_frames)
        with self._lock:
            self._current, self._probation = loaded, probation
            self._swapped()
        self._track(info.id, "verifying", f"{info.id} swapped in after {load_s:.1f} s; checking its first "
                                          f"{self.probation_frames} live frames")
        # stop() sets _stopping before it looks for a probation to cancel: seen here or there
        live = self.grabber.status.state in ("live", "connecting") and not self._stopping.is_set()
        decided, failure = probation.wait(self.probation_timeout if live and self.probation_frames > 0 else 0.0)
        with self._lock:
            self._probation = None
            if failure is not None:
                self._current = before
                self._swapped()
                return f"failed on a live frame: {failure}"
            self._cache = {k: v for k, v in self._cache.items() if before is not None and v is before}
            self._cache[(info.id, info.sha256)] = loaded
        if not decided and self.probation_frames > 0 and not self._stopping.is_set():
            self._event("unchecked", f"{info.id}: only {probation.passed} of {probation.needed} frames checked "
                                     f"(camera {self.grabber.status.state}); kept on its reference check")
        log.info("%s in service (loaded in %.2f s, provider %s)", info.id, load_s,
                 (getattr(loaded.engine, "providers", None) or ["?"])[0])
        return None

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
            with self._lock:
                loaded, probation = self._current, self._probation
            if loaded is None or self._stopping.is_set():
                continue
            try:
                self._inspect(frame, loaded, probation if probation is not None and probation.loaded is loaded
                              else None)
            except Exception:  # noqa: BLE001 - one bad frame: report, go on with the next
                log.exception("publishing a frame failed")

    def _inspect(self, frame: Any, loaded: _Loaded, probation: _Probation | None) -> None:
        t_start = time.perf_counter()
        height, width = frame.rgb.shape[:2]
        try:
            result = loaded.engine.inspect(frame.rgb)
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
        self._publish(self._encode(frame, result, loaded.info.id, t_start), loaded)

    def _encode(self, frame: Any, result: Any, model_id: str, t_start: float) -> tuple[int, bytes]:
        t_enc = time.perf_counter()
        bgr = cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR)
        ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        heat = protocol.heat_to_wire(result.heatmap)
        now_perf, now_wall = time.perf_counter(), time.time()
        timings = {"capture_to_start": (t_start - frame.t_capture) * 1e3}
        timings.update({k: float(v) for k, v in result.timings.items()})
        timings["encode"] = (now_perf - t_enc) * 1e3
        with self._lock:
            self._seq += 1
            seq = self._seq
        height, width = frame.rgb.shape[:2]
        header = StreamHeader(
            seq=seq, frame_seq=int(frame.seq), t_capture=now_wall - (now_perf - frame.t_capture), t_sent=now_wall,
            width=int(width), height=int(height), heat_scale=protocol.HEAT_SCALE,
            tiles=[{"box": [int(v) for v in t.box], "crack_prob": float(t.crack_prob)} for t in result.tiles],
            crack_prob_max=float(result.crack_prob_max), model_id=model_id,
            timings_ms={k: round(v, 3) for k, v in timings.items()})
        return seq, protocol.encode_frame(header, jpeg.tobytes(), heat)

    def _swapped(self) -> None:
        """The model in service changed (caller holds ``_lock``): its FPS and frame count start
        afresh, so the status never credits the old model's frames to the new one."""
        self._rate = RateWindow(FPS_WINDOW_S)
        self._served = 0

    def _publish(self, item: tuple[int, bytes], loaded: _Loaded | None = None) -> None:
        t = time.perf_counter()
        with self._lock:
            if loaded is not None and loaded is not self._current:
                return  # computed by a model swapped out meanwhile: never shown as the new one's
            self._rate.add(t)
            self._served += 1
        with self._cond:
            self._latest = item
            self._cond.notify_all()


def _in_background(work: Callable[[], Any], nice: int = 10) -> Any:
    """Run ``work`` on a short-lived thread with a lower CPU priority and return its result.

    Loading and checking a new model (session creation, reference run, warm-up) takes a few
    hundred ms of CPU; at normal priority on a 2-core board it steals the cores of the inference
    thread and the stream stalls for several frames during a swap. Linux gives threads their own
    nice value, inherited by the threads they create (onnxruntime's pool), and a thread that
    ends takes it with it (lowering a nice value again would need privileges)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            if hasattr(os, "setpriority"):
                try:
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
                except OSError:
                    pass
            out["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            out["error"] = exc

    t = threading.Thread(target=run, name="model-loader", daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]
