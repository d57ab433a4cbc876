"""``distill update`` as a child process of the app: QProcess on the GUI thread (asynchronous by
itself, so no worker thread), stdout read line by line as update events, stderr to the log.

Cancel is SIGTERM (``QProcess.terminate``), which the job takes as "stop now, write nothing
half"; if it has not ended after :data:`KILL_AFTER_MS` it is killed. The child runs at normal
priority: while it trains, the app's own inference yields the cores to it instead
(:meth:`inspector.qt.window.MainWindow.yield_to_update`), so the model the inspector waits for
is ready sooner.

Signals: ``event(dict)`` for every valid event, ``log(level, text)`` for anything else worth
showing (stderr, stray stdout, a line that breaks the schema), ``ended(exit_code, cancelled)``
once, after the process is gone (``cancelled``: Cancel was asked).
"""
from __future__ import annotations

import logging

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

from inspector.update.job import parse_output_line

log = logging.getLogger(__name__)

KILL_AFTER_MS = 15000        # Cancel: SIGTERM, then SIGKILL if still running after this long


class UpdateProcess(QObject):
    event = Signal(object)
    log = Signal(str, str)
    ended = Signal(int, bool)

    def __init__(self, parent: QObject | None = None, *, kill_after_ms: int = KILL_AFTER_MS):
        super().__init__(parent)
        self.proc: QProcess | None = None
        self.cancel_requested = False
        self.kill_after_ms = kill_after_ms
        self._buffers = {"out": b"", "err": b""}
        self._kill_timer = QTimer(self, singleShot=True, timeout=self._kill)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.state() != QProcess.NotRunning

    def start(self, argv: list[str], *, cwd: str | None = None, env: dict[str, str] | None = None) -> None:
        if self.running:
            raise RuntimeError("an update is already running")
        self.cancel_requested = False
        self._buffers = {"out": b"", "err": b""}
        proc = self.proc = QProcess(self)
        environment = QProcessEnvironment.systemEnvironment()
        environment.insert("PYTHONUNBUFFERED", "1")        # events must arrive as they happen
        for k, v in (env or {}).items():
            environment.insert(k, v)
        proc.setProcessEnvironment(environment)
        if cwd:
            proc.setWorkingDirectory(cwd)
        proc.readyReadStandardOutput.connect(lambda: self._read("out"))
        proc.readyReadStandardError.connect(lambda: self._read("err"))
        proc.errorOccurred.connect(self._on_error)
        proc.finished.connect(self._on_finished)
        log.info("update: %s", " ".join(argv))
        proc.start(argv[0], argv[1:])

    def cancel(self) -> None:
        """SIGTERM now; SIGKILL if the job has not stopped after ``kill_after_ms``."""
        if not self.running:
            return
        self.cancel_requested = True
        self.proc.terminate()
        self._kill_timer.start(self.kill_after_ms)

    def shutdown(self, msecs: int = 10000) -> None:
        """The app is closing: cancel and wait for the job to end (kill it after ``msecs``)."""
        if not self.running:
            return
        self.cancel()
        if not self.proc.waitForFinished(msecs):
            self.proc.kill()
            self.proc.waitForFinished(3000)

    # ---------------------------------------------------------------- internals

    def _read(self, which: str) -> None:
        proc = self.proc
        if proc is None:
            return
        data = bytes(proc.readAllStandardOutput() if which == "out" else proc.readAllStandardError())
        buf = self._buffers[which] + data
        *lines, self._buffers[which] = buf.split(b"\n")
        for raw in lines:
            self._line(which, raw)

    def _line(self, which: str, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace")
        if which == "err":
            if text.strip():
                self.log.emit("stderr", text.rstrip())
            return
        event, other = parse_output_line(text)
        if event is not None:
            self.event.emit(event)
        elif other is not None:
            self.log.emit("stdout", other)

    def _flush(self) -> None:
        for which in ("out", "err"):
            rest, self._buffers[which] = self._buffers[which], b""
            if rest.strip():
                self._line(which, rest)

    def _on_error(self, error) -> None:
        if error == QProcess.FailedToStart:
            self.log.emit("error", f"could not start {self.proc.program()}: {self.proc.errorString()}")
            self._kill_timer.stop()
            self.ended.emit(-1, self.cancel_requested)

    def _on_finished(self, exit_code: int, exit_status) -> None:
        self._read("out")
        self._read("err")
        self._flush()
        self._kill_timer.stop()
        code = exit_code if exit_status == QProcess.NormalExit else -1
        self.ended.emit(code, self.cancel_requested)

    def _kill(self) -> None:
        if self.running:
            self.log.emit("warning", f"the job did not stop within {self.kill_after_ms / 1000:.0f} s of Cancel: killed")
            self.proc.kill()
