"""The machinery shared by the live sources that run on their own thread and hand out only their
newest item: :class:`~inspector.capture.sources.FrameGrabber` (camera frames) and
:class:`~inspector.link.remote.DeviceFeed` (a device's results).

:class:`NewestItemSource` owns the daemon thread and everything around it that does not depend
on what is read:

* the newest-item-wins slot: :meth:`~NewestItemSource._publish` replaces the item and wakes the
  waiters of :meth:`~NewestItemSource.latest`; a slow consumer skips items, it never works
  through a backlog. ``seq`` counts 1, 2, 3 ... per source and is never reused, also across a
  stop and a new start;
* a prompt stop: :meth:`~NewestItemSource.stop` sets an Event that every wait on the thread
  (back-off included) watches, calls :meth:`~NewestItemSource._interrupt` (a subclass closes
  what its thread may be blocked on), releases the waiters and joins the thread;
* status reporting (:class:`SourceStatus`): each change is logged and passed to ``on_status``
  on the thread; a listener's exception is logged, never raised into the thread, and the thread
  itself never dies silently (an unexpected error ends it in state ``"ended"``);
* exponential back-off between reconnect attempts (:meth:`~NewestItemSource._wait_backoff`);
* the measured rate (:attr:`~NewestItemSource.fps`) over the last :data:`FPS_WINDOW_S`.

A subclass implements :meth:`~NewestItemSource._serve` (open, read, reconnect until the stop
Event is set) and decides what an item is. Plain Python: no Qt, no torch, no OpenCV.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from inspector.capture.rate import RateWindow

log = logging.getLogger(__name__)

FPS_WINDOW_S = 2.0            # the rate is measured over this window

T = TypeVar("T")


@dataclass(frozen=True)
class SourceStatus:
    state: str            # "connecting" | "live" | "reconnecting" | "ended" | "stopped"
    message: str
    attempt: int = 0
    retry_in: float | None = None


class NewestItemSource(Generic[T]):
    """A daemon thread that publishes items of type ``T``; :meth:`latest` hands out the newest.

    ``label``: short human text for logs and statuses (a subclass may change it). ``thread_name``:
    the thread's name. ``backoff``: first and longest wait between reconnect attempts, doubling.
    ``on_status``: called on the thread at every state change; its exceptions are logged, never
    raised into the thread. See the module doc for what a subclass adds.
    """

    _log: logging.Logger = log          # a subclass logs to its own module's logger
    _kind = "worker"                    # "the <kind> thread failed / did not stop"
    _busy = "busy"                      # why a thread that does not stop in time is stuck

    def __init__(self, label: str, *, thread_name: str, backoff: tuple[float, float] = (0.5, 10.0),
                 on_status: Callable[[SourceStatus], None] | None = None):
        try:
            first, longest = (float(b) for b in backoff)
        except (TypeError, ValueError):
            raise ValueError(f"backoff must be (first, longest) in seconds, got {backoff!r}") from None
        if not (0 < first <= longest and math.isfinite(longest)):
            raise ValueError(f"backoff must satisfy 0 < first <= longest, got {backoff!r}")
        self.label = label
        self.backoff = (first, longest)
        self._thread_name = thread_name
        self._on_status = on_status
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._item: T | None = None
        self._seq = 0                 # the newest item's seq (0: none yet)
        self._done = False            # ended or stopped: waiters in latest() return at once
        self._rate = RateWindow(FPS_WINDOW_S)
        self._status = SourceStatus("stopped", f"{label}: not started")

    # ---------------------------------------------------------------- public

    def start(self) -> None:
        """Start the thread (no-op if running). A stopped source may be started again; ``seq`` goes on."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        with self._cond:
            self._done = False
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop and join the thread (up to ``timeout``; a thread blocked where :meth:`_interrupt`
        cannot reach is abandoned)."""
        self._stop.set()
        self._interrupt()
        with self._cond:
            self._done = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                self._log.warning("%s: the %s thread did not stop within %.1f s (%s); abandoned",
                                  self.label, self._kind, timeout, self._busy)
        self._set_status(SourceStatus("stopped", f"{self.label} stopped"))

    def latest(self, after_seq: int = 0, timeout: float | None = None) -> T | None:
        """The newest item with ``seq > after_seq``, waiting up to ``timeout`` s (None: until one
        arrives or the source ends/stops). None if there is none."""
        def ready() -> bool:
            return self._done or (self._item is not None and self._seq > after_seq)

        with self._cond:
            self._cond.wait_for(ready, timeout)
            item, seq = self._item, self._seq
        return item if item is not None and seq > after_seq else None

    @property
    def status(self) -> SourceStatus:
        with self._cond:
            return self._status

    @property
    def fps(self) -> float:
        """Items published per second over the last ``FPS_WINDOW_S`` (0 if fewer than two)."""
        with self._cond:
            return self._rate.rate(time.perf_counter())

    # ---------------------------------------------------------------- for subclasses

    def _serve(self) -> None:
        """The thread's work: open, read, :meth:`_publish`, reconnect, until ``self._stop`` is set
        (or the source ends: return). An exception ends the source in state ``"ended"``."""
        raise NotImplementedError

    def _interrupt(self) -> None:
        """Called by :meth:`stop` after the stop Event is set: unblock the thread if it can be."""

    def _publish(self, make: Callable[[int], T], t: float) -> T:
        """Replace the newest item with ``make(seq)`` (called with the lock held: keep it cheap),
        count it at ``t`` (``time.perf_counter()``) for :attr:`fps` and wake the waiters."""
        with self._cond:
            self._seq += 1
            item = self._item = make(self._seq)
            self._rate.add(t)
            self._cond.notify_all()
        return item

    def _set_status(self, status: SourceStatus) -> None:
        with self._cond:
            if status == self._status:
                return
            self._status = status
        self._log.info("%s: %s: %s", self.label, status.state, status.message)
        self._notify(self._on_status, status, "on_status")

    def _notify(self, callback: Callable | None, arg, name: str) -> None:
        """``callback(arg)``; its exception is logged (as ``name`` failing), never raised."""
        if callback is None:
            return
        try:
            callback(arg)
        except Exception:  # noqa: BLE001 - a listener's bug must not kill the thread
            self._log.exception("%s: %s callback failed", self.label, name)

    def _wait_backoff(self, attempt: int, what: str) -> None:
        """Report ``what`` went wrong as ``"reconnecting"`` and wait before attempt ``attempt + 1``
        (``backoff[0]`` doubling up to ``backoff[1]``); :meth:`stop` cuts the wait short."""
        delay = min(self.backoff[1], self.backoff[0] * 2.0 ** (attempt - 1))
        self._set_status(SourceStatus("reconnecting", f"{what}; retrying in {delay:.1f} s (attempt {attempt})",
                                      attempt, delay))
        self._stop.wait(delay)

    def _run(self) -> None:
        try:
            self._serve()
        except Exception:  # noqa: BLE001 - report, never die silently
            self._log.exception("%s: %s thread failed", self.label, self._kind)
            self._set_status(SourceStatus("ended", f"{self.label}: internal error (see the log)"))
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()
            if self._stop.is_set():
                self._set_status(SourceStatus("stopped", f"{self.label} stopped"))
