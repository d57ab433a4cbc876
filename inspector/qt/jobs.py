"""One job runner for the Qt layer: work on a thread pool, outcomes on the GUI thread.

After Anki's ``taskman`` and ``CollectionOp``: a job is a plain function run on a pool thread;
its result goes to ``on_success(result)``, its exception to ``on_failure(exc)``, both called
later on the GUI thread (the runner is a QObject living there, and the pool thread reaches it
through queued signals). A job given ``on_progress`` receives a ``progress(*values)`` keyword
argument to call as it goes; the values arrive in ``on_progress(*values)`` on the GUI thread.

    from inspector.qt import jobs
    jobs.run(store.export_dataset, folder, include_unreviewed=True,
             on_success=show_report, on_failure=show_error)

:func:`run` uses the application's shared runner (two threads: exports, reports, loading a
frame). Work that must never compete with the live view, e.g. decoding thumbnails, gets its own
:class:`JobRunner` with a ``nice`` value: on Linux its threads lower their own scheduling
priority, so the camera, inference and GUI threads win every contention for a core. Talking to
a device gets its own runner too (the device panel's), so a slow or dead device never holds the
threads the store's work needs.

A look-up whose answer is worthless once its widget is gone (finding cameras or devices on the
network, reading the recent flags) runs ``detached=True``: on a thread of its own that nobody
waits for, so closing the window never waits for it (a pool's owner waits for its jobs when it
is destroyed). Its outcome is delivered like any other, or dropped if the runner is closed or gone.

A job that is cancelled (:meth:`Job.cancel`) or whose runner is closed (:meth:`JobRunner.close`,
the window is going away) reports nothing; its ``progress`` raises :class:`JobCancelled`, so a
long job stops at its next progress call. A failure without ``on_failure`` is logged.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable

from PySide6.QtCore import QCoreApplication, QObject, QThreadPool, Signal, Slot
from inspector.errors import InspectorError

log = logging.getLogger(__name__)

DEFAULT_THREADS = 2


class JobCancelled(InspectorError):
    """Raised by a cancelled job's ``progress``: the job should stop."""


class Job:
    """One submitted job: :meth:`cancel` it; ``done`` once its outcome was delivered or dropped."""

    def __init__(self, name: str, on_success, on_failure, on_progress):
        self.name = name
        self.on_success, self.on_failure, self.on_progress = on_success, on_failure, on_progress
        self.cancelled = False
        self.done = False

    def cancel(self) -> None:
        self.cancelled = True

    def __repr__(self) -> str:
        return f"<Job {self.name}{' cancelled' if self.cancelled else ''}{' done' if self.done else ''}>"


_niced = threading.local()


def _lower_priority(nice: int) -> None:
    """Raise this thread's nice value once (Linux: per-thread; elsewhere a no-op)."""
    if nice <= 0 or getattr(_niced, "done", False) or not hasattr(os, "setpriority"):
        return
    _niced.done = True
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as err:  # not permitted in some sandboxes: the job still runs
        log.debug("could not lower the priority of a job thread: %s", err)


class JobRunner(QObject):
    """``run(fn, *args, on_success=, on_failure=, on_progress=, **kwargs) -> Job`` on a pool of
    ``threads``; ``busy`` counts jobs not yet delivered; :meth:`close` stops delivering."""

    _finished = Signal(object, bool, object)     # job, ok, result or exception
    _progressed = Signal(object, object)         # job, values

    def __init__(self, parent: QObject | None = None, *, threads: int = DEFAULT_THREADS, nice: int = 0):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max(1, int(threads)))
        self.nice = int(nice)
        self.closed = False
        self._jobs: set[Job] = set()
        self._finished.connect(self._deliver)
        self._progressed.connect(self._deliver_progress)

    @property
    def busy(self) -> int:
        return len(self._jobs)

    @property
    def threads(self) -> int:
        return self.pool.maxThreadCount()

    def run(self, fn: Callable, *args: Any, on_success: Callable | None = None, on_failure: Callable | None = None,
            on_progress: Callable | None = None, priority: int = 0, detached: bool = False, **kwargs: Any) -> Job:
        """``priority``: among jobs waiting for a thread, higher ones start first; ``detached``:
        on a daemon thread of its own, outside the pool (see the module docstring)."""
        job = Job(getattr(fn, "__qualname__", repr(fn)), on_success, on_failure, on_progress)
        if self.closed:
            job.cancelled = job.done = True
            return job
        self._jobs.add(job)
        if on_progress is not None:
            def progress(*values):
                if job.cancelled or self.closed:
                    raise JobCancelled(f"{job.name} was cancelled")
                self._progressed.emit(job, values)
            kwargs["progress"] = progress

        def task():
            _lower_priority(self.nice)
            try:
                outcome = True, fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - every failure is delivered, never lost on a pool thread
                outcome = False, exc
            try:
                self._finished.emit(job, *outcome)
            except RuntimeError:  # a detached job outlived its runner (the window was closed): nobody listens
                log.debug("background job %s ended after its runner was deleted", job.name)

        if detached:
            threading.Thread(target=task, name=f"job-{job.name}", daemon=True).start()
        else:
            self.pool.start(task, priority)
        return job

    def close(self, msecs: int = 5000) -> bool:
        """No new jobs, no more callbacks; wait up to ``msecs`` for the pool's jobs in flight (True if
        all ended; detached jobs are not waited for)."""
        self.closed = True
        for job in self._jobs:
            job.cancelled = True
        return self.pool.waitForDone(msecs)

    def wait(self, msecs: int = 5000) -> bool:
        """Wait for the jobs in flight (tests); their outcomes are still delivered by the event loop."""
        return self.pool.waitForDone(msecs)

    @Slot(object, bool, object)
    def _deliver(self, job: Job, ok: bool, value) -> None:
        self._jobs.discard(job)
        job.done = True
        if job.cancelled or self.closed:
            return
        if ok:
            if job.on_success is not None:
                job.on_success(value)
        elif isinstance(value, JobCancelled):
            return
        elif job.on_failure is not None:
            job.on_failure(value)
        else:
            log.warning("background job %s failed: %s: %s", job.name, type(value).__name__, value)

    @Slot(object, object)
    def _deliver_progress(self, job: Job, values) -> None:
        if not (job.cancelled or self.closed or job.done) and job.on_progress is not None:
            job.on_progress(*values)


def runner() -> JobRunner:
    """The application's shared runner (made on first use, owned by the QApplication)."""
    app = QCoreApplication.instance()
    if app is None:
        raise RuntimeError("jobs need a QApplication")
    shared = getattr(app, "_crack_jobs", None)
    if shared is None or shared.closed:
        shared = JobRunner(app)
        app._crack_jobs = shared
    return shared


def run(fn: Callable, *args: Any, on_success: Callable | None = None, on_failure: Callable | None = None,
        on_progress: Callable | None = None, priority: int = 0, detached: bool = False, **kwargs: Any) -> Job:
    """``fn(*args, **kwargs)`` on the shared runner; see the module docstring."""
    return runner().run(fn, *args, on_success=on_success, on_failure=on_failure, on_progress=on_progress,
                        priority=priority, detached=detached, **kwargs)
