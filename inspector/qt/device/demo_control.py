"""The window's demo device: :class:`~inspector.link.demo.DemoDevice` started and stopped on the job
runner (starting and pairing take seconds; the window never waits), watched for a crash.

Signals: ``started(Pairing)`` once paired (the window then views it), ``failed(text)`` when it
could not start or stopped unexpectedly, ``stateChanged(state)`` with "off", "starting", "on"
or "stopping" (the Device panel's button follows it).
"""
from __future__ import annotations

import logging

from PySide6.QtCore import QObject, QTimer, Signal

from inspector.link.demo import DemoDevice, DemoError
from inspector.qt import jobs

log = logging.getLogger(__name__)

WATCH_MS = 1000


class DemoControl(QObject):
    """``start(**options)`` (options go to :class:`~inspector.link.demo.DemoDevice`), ``stop()``
    (on the job runner), ``shutdown()`` (blocking: the window is closing)."""

    started = Signal(object)
    failed = Signal(str)
    stateChanged = Signal(str)

    def __init__(self, pairings, parent: QObject | None = None):
        super().__init__(parent)
        self.pairings = pairings
        self.device: DemoDevice | None = None
        self.state = "off"
        self._watch = QTimer(self, interval=WATCH_MS, timeout=self._check)

    def _set_state(self, state: str) -> None:
        self.state = state
        self.stateChanged.emit(state)

    def start(self, **options) -> None:
        if self.state != "off":
            return
        device = self.device = DemoDevice(self.pairings, **options)
        self._set_state("starting")
        jobs.run(device.start, on_success=lambda pairing: self._on_started(device, pairing),
                 on_failure=lambda exc: self._on_failed(device, exc))

    def _on_started(self, device: DemoDevice, pairing) -> None:
        if device is not self.device:
            return
        self._set_state("on")
        self._watch.start()
        self.started.emit(pairing)

    def _on_failed(self, device: DemoDevice, exc: BaseException) -> None:
        if device is not self.device:
            return
        self.device = None
        self._set_state("off")
        text = str(exc) if isinstance(exc, DemoError) else f"The demo device did not start: {type(exc).__name__}: {exc}"
        self.failed.emit(text)

    def _check(self) -> None:
        device = self.device
        problem = device.failure() if device is not None else None
        if problem:
            log.error("%s", problem)
            self._watch.stop()
            self.device = None
            device.stop()            # reaps the process, closes its log
            self._set_state("off")
            self.failed.emit(problem)

    def stop(self) -> None:
        """Stop the agent off the GUI thread (SIGTERM; SIGKILL after a timeout)."""
        device, self.device = self.device, None
        self._watch.stop()
        if device is None:
            return
        self._set_state("stopping")
        jobs.run(device.stop, on_success=lambda rc: self._set_state("off"),
                 on_failure=lambda exc: self._set_state("off"))

    def shutdown(self) -> None:
        """Stop the agent now, waiting for it (the window is going away). Idempotent."""
        device, self.device = self.device, None
        self._watch.stop()
        if device is not None:
            device.stop()
        self.state = "off"
