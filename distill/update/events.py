"""Reporting and cancelling a model update: events through ``inspector/update/protocol.py``.

:class:`Reporter` turns what the stages do into the protocol's events (``make_event``) and hands
each to ``emit`` (the command prints it as a JSON line on stdout; the API's caller may collect
them). It also owns cancellation: :meth:`Reporter.check` raises :class:`UpdateCancelled` once
:meth:`Reporter.cancel` was called (by the SIGTERM/SIGINT handler the command installs, or by a
caller's thread); the stages call it between batches, so a run stops within one batch.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Callable

from inspector.update.protocol import EXIT_CANCELLED, STAGES, make_event

from distill.update.errors import UpdateCancelled

Emit = Callable[[dict], None]
PROGRESS_EVERY_S = 0.5   # progress events at most this often per stage (and always the last one)


class Reporter:
    def __init__(self, emit: Emit | None = None):
        self.emit = emit or (lambda event: None)
        self.stage: str = STAGES[0]
        self._cancel = threading.Event()
        self._last_progress = 0.0
        self._stage_t0 = time.monotonic()
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ cancellation

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise UpdateCancelled(f"cancelled during {self.stage}", stage=self.stage)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT set the cancel flag (main thread only; the run stops at the next
        check, within one batch). A second signal while a long step cannot check (an ONNX
        export, INT8 calibration) stops at once: ``cancelled``, exit 3; files under their final
        names are only written in the ``write`` stage, where a second signal waits too."""
        def handler(signum, frame):
            if self._cancel.is_set() and self.stage != "write":
                self.send("cancelled", stage=self.stage)
                os._exit(EXIT_CANCELLED)
            self.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)

    # ------------------------------------------------------------------ events

    def send(self, kind: str, **fields) -> None:
        self.emit(make_event(kind, **fields))

    def begin(self, stage: str, detail: str | None = None) -> None:
        self.check()
        self.stage = stage
        self._stage_t0 = time.monotonic()
        self._last_progress = 0.0
        self.send("stage", stage=stage, status="start", index=STAGES.index(stage), of=len(STAGES),
                  **({"detail": detail} if detail else {}))

    def done(self, stage: str, detail: str | None = None) -> None:
        self.timings[stage] = round(time.monotonic() - self._stage_t0, 1)
        self.send("stage", stage=stage, status="done", index=STAGES.index(stage), of=len(STAGES),
                  **({"detail": detail} if detail else {}))

    def skipped(self, stage: str, detail: str) -> None:
        self.check()
        self.stage = stage
        self.timings[stage] = 0.0
        self.send("stage", stage=stage, status="skipped", index=STAGES.index(stage), of=len(STAGES), detail=detail)

    def progress(self, done: int, total: int, *, force: bool = False) -> None:
        """Throttled; checks for cancellation every time (call it once per batch)."""
        self.check()
        now = time.monotonic()
        if not force and done < total and now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        elapsed = now - self._stage_t0
        eta = elapsed / done * (total - done) if 0 < done <= total else None
        self.send("progress", stage=self.stage, done=int(done), total=int(total),
                  eta_s=None if eta is None else round(eta, 1))

    def epoch(self, model: str, epoch: int, epochs: int, loss: float, val_mcc: float | None) -> None:
        self.send("epoch", stage=self.stage, model=model, epoch=int(epoch), epochs=int(epochs),
                  loss=round(float(loss), 5), val_mcc=None if val_mcc is None else round(float(val_mcc), 4))

    def log(self, message: str, level: str = "info") -> None:
        self.send("log", level=level, message=message)

    def fit_callback(self, model: str) -> Callable[[dict], None]:
        """A ``distill.training.loop.fit`` callback: steps → progress (and cancel checks), epochs → epoch events."""
        state = {"steps": 1, "epoch": 0, "epochs": 1}

        def on(event: dict) -> None:
            kind = event["event"]
            if kind == "epoch_start":
                state.update(steps=event["steps"], epoch=event["epoch"], epochs=event["epochs"])
                self.check()
            elif kind == "step":
                total = state["steps"] * state["epochs"]
                self.progress(state["epoch"] * state["steps"] + event["step"] + 1, total)
            elif kind == "epoch_end":
                self.epoch(model, event["epoch"] + 1, state["epochs"], event["train_loss"], event["val"]["mcc"])
            elif kind == "resumed":
                self.log(f"{model}: resuming at epoch {event['epoch'] + 1} from the earlier run")
        return on
