"""The model in service on the agent and every change of it: load, verify, swap, probation,
auto-rollback, and the activation record the status shows.

Model changes (:meth:`ModelService.activate`, :meth:`ModelService.rollback`, the start-up load)
run on the *caller's* thread, one at a time (``_admin`` lock); :meth:`ModelService.start_activation`
runs the same change on a worker thread and returns at once. The new engine is loaded off the
serving path (a low-priority thread), reference outputs verified (``verify_reference=True``)
and run once on a frame of the camera's size -- where TensorRT builds its engine, cached per
version in the repository (:mod:`inspector.edge.engine_cache`) -- and only then is the engine
reference swapped, between two frames. The stream goes on with the old model meanwhile; at
most the frame in flight still comes from the old model. :meth:`ModelService.activation` (the
status's ``activation``) follows the latest change: building → verifying (probation) → live,
or failed with the reason.

Probation and auto-rollback
---------------------------
A newly swapped-in engine is on probation for its first :data:`PROBATION_FRAMES` real frames
(the inference thread of :mod:`inspector.agent.runtime` records each verdict): an exception, a
non-finite or out-of-range probability or heat value, or a wrong shape fails it. Failed frames
are never published. The changing thread waits for the verdict (up to
:data:`PROBATION_TIMEOUT_S`; not at all if the camera is reconnecting, then the model stays
unchecked on frames and an event says so); on failure it swaps the previous engine back at
once, calls ``repository.mark_failed`` (which reactivates the previous version) and records an
``auto-rollback`` event with the reason. Exactly the same happens at start-up, going back
through the stored versions until one works.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from inspector.capture.newest import FPS_WINDOW_S
from inspector.capture.rate import RateWindow
from inspector.edge.contract import ReferenceCheckError
from inspector.link import protocol
from inspector.link.protocol import ApiError, ModelInfo, ModelList

log = logging.getLogger(__name__)

PROBATION_FRAMES = 5          # first results of a new engine that must pass the checks
PROBATION_TIMEOUT_S = 10.0    # longest a model change waits for those frames
ADMIN_WAIT_S = 0.5            # start_activation: how long to wait for another model change to end
FIRST_FRAME_WAIT_S = 10.0     # loading a model: wait this long for a frame to size the TensorRT profile


def now_iso() -> str:
    # the repository's format (its events and ours are merged and sorted by this string)
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Loaded:
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


class Probation:
    """The verdict on a new engine's first ``needed`` results (recorded by the inference thread)."""

    def __init__(self, loaded: Loaded, needed: int):
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

class ModelService:
    """The engine in service and the changes of it (see the module doc). Thread-safe.

    ``event(kind, message, record=True)``: the runtime's event log; ``stopping``: set when the
    agent stops (a change in progress then ends without blaming the model). The other
    arguments are :class:`~inspector.agent.runtime.AgentRuntime`'s.
    """

    def __init__(self, repository: Any, grabber: Any, event: Callable[..., None], stopping: threading.Event, *,
                 threads: int | None, engine_factory: Callable[[Path], Any] | None, probation_frames: int,
                 probation_timeout: float, numeric_path: str):
        self.repository = repository
        self.grabber = grabber
        self.threads = threads
        self.numeric_path = numeric_path
        self._event = event
        self._stopping = stopping
        self._factory = engine_factory or self._default_factory
        self.probation_frames = int(probation_frames)
        self.probation_timeout = float(probation_timeout)
        self._lock = threading.Lock()            # _current, _probation, _cache, _activation, _last_load, _rate, _served
        self._admin = threading.Lock()           # one model change at a time
        self._current: Loaded | None = None
        self._probation: Probation | None = None
        self._cache: dict[tuple[str, str], Loaded] = {}   # current and previous engine, for rollbacks
        self._rate = RateWindow(FPS_WINDOW_S)   # results published by the model in service (reset at a swap)
        self._served = 0                         # frames the model in service computed, checked and published
        self._worker: threading.Thread | None = None      # start_activation's background change
        self._activation: _ActivationRecord | None = None
        self._last_load: tuple[str, float, str | None] | None = None   # (model id, load s, TRT cache state)

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

    # ------------------------------------------------------------------ what the inference thread asks

    def serving(self) -> tuple[Loaded | None, Probation | None]:
        """The engine in service and its probation (None once it passed, or for another engine)."""
        with self._lock:
            loaded, probation = self._current, self._probation
        return loaded, probation if probation is not None and probation.loaded is loaded else None

    def credit(self, loaded: Loaded) -> bool:
        """Count a result of ``loaded`` as published; False (not to be published) if ``loaded``
        was swapped out meanwhile: never shown as the new one's."""
        t = time.perf_counter()
        with self._lock:
            if loaded is not self._current:
                return False
            self._rate.add(t)
            self._served += 1
        return True

    def snapshot(self) -> tuple[Loaded | None, float, int]:
        """(engine in service, its results per second, results it published) for the status."""
        with self._lock:
            return self._current, self._rate.rate(time.perf_counter()), self._served

    @property
    def model(self) -> ModelInfo | None:
        with self._lock:
            return self._current.info if self._current else None

    def activation(self) -> protocol.Activation | None:
        """The latest model change and how far it got (None before the first)."""
        with self._lock:
            record = self._activation
            return None if record is None else record.to_protocol(time.monotonic())

    def cancel_probation(self) -> None:
        """The agent is stopping (``stopping`` is set): end a probation wait now, undecided."""
        with self._lock:
            probation = self._probation
        if probation is not None:
            probation.cancel()

    def join(self, timeout: float) -> None:
        """Wait for start_activation's worker (after :meth:`cancel_probation`)."""
        worker, self._worker = self._worker, None
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)

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
        now, iso = time.monotonic(), now_iso()
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

    def serve_at_start(self) -> None:
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

    def _engine_for(self, info: ModelInfo) -> Loaded:
        key = (info.id, info.sha256)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        path = self.repository.active_path()
        if path is None:
            raise FileNotFoundError(f"the repository has no file for {info.id}")
        return Loaded(_in_background(lambda: self._load_warm(Path(path))), info)

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
        probation = Probation(loaded, self.probation_frames)
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

    def _swapped(self) -> None:
        """The model in service changed (caller holds ``_lock``): its FPS and frame count start
        afresh, so the status never credits the old model's frames to the new one."""
        self._rate = RateWindow(FPS_WINDOW_S)
        self._served = 0


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
