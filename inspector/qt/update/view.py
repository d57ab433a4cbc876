"""Update model: from the reviewed flags to a new model live on the device (or this laptop).

:class:`UpdateDialog` has two pages. **What will be used** (:mod:`.plan_page`): reviewed frames
and tiles per label, unlabelled frames, replay, the base model (the paired device's active model
when one is connected, else this laptop's), an estimated time and "push when the gate passes".
**The run** (:mod:`.run_page`): the store is exported (a job on :mod:`inspector.qt.jobs`), then
``distill update`` runs as a separate process (:class:`~.process.UpdateProcess`; torch never
enters this process) and its events drive the stage list, the progress bar with the time left,
the loss / validation-MCC curves (:mod:`.charts`) and the log. Cancel sends SIGTERM (then SIGKILL
after a grace period). At the end: the before/after table and the verdict; if the gate passed
(and the box is on) the INT8 candidate is signed, pushed, activated and awaited until the device
reports it live, or, without a device, swapped into this laptop's live view. A failed gate can
be overridden by an expert: a confirmation with a reason, recorded in the model history, then
the same push path (no re-run).

This module owns the run's course (start, events, end, cancel) and the push; the work off the
GUI thread is in :mod:`.tasks`.

Signals (tests, the window): ``updateFinished(outcome)`` ("passed", "failed", "error", "cancelled"),
``runningChanged(running)`` (the job started or ended: the window yields its cores meanwhile),
``deployed(text)``, ``deployFailed(text)``, ``message(text, level)``.
"""
from __future__ import annotations

import logging
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QDialog, QStackedWidget, QVBoxLayout, QWidget

from inspector.paths import app_root
from inspector.qt import jobs
from inspector.qt.device.override_dialog import ExpertOverrideDialog
from inspector.qt.update.history_view import ModelHistoryDialog
from inspector.qt.update.plan_page import PlanPage
from inspector.qt.update.process import UpdateProcess
from inspector.qt.update.run_page import RunPage
from inspector.qt.screen_fit import fitted_size
from inspector.qt.startup import user_name
from inspector.qt.update.tasks import (default_make_engine, export_store, push_to_device, read_result,
                                       register_candidate)
from inspector.update.history import MIN_OVERRIDE_REASON, ModelHistory, override_package
from inspector.update.job import UpdateState, gate_of, rule_text, training_base, update_command
from inspector.update.plan import UpdatePlan, make_plan, read_manifest

PREFERRED_SIZE = (1180, 820)   # fitted to the screen: a 1366×768 laptop gets less (inspector.qt.screen_fit)

log = logging.getLogger(__name__)


class UpdateDialog(QDialog):
    """``UpdateDialog(store, engine=, swap_engine=, device=, history=, work_dir=)``.

    ``engine()``: this laptop's engine now; ``swap_engine(engine)``: put a new engine in the live
    view (GUI thread); ``device()``: (Pairing, PairingStore) of the device on screen, or None;
    ``program``: the command that stands for ``distill`` (tests: a fake job); ``fast``: ask the
    job for its short run (``--fast``); ``extra_args``: more options for ``distill update``;
    ``make_engine(path)``: load a package (on a job thread).

    The pages are ``plan_page`` and ``run_page``; the widgets the window, the scripts and the
    tests drive are also here: ``start_button``, ``push_box``, ``verdict``, ``deploy_label``,
    ``override_button``.
    """

    updateFinished = Signal(str)
    runningChanged = Signal(bool)   # the distill update job started (True) or ended (False)
    deployed = Signal(str)
    deployFailed = Signal(str)
    message = Signal(str, str)

    def __init__(self, store, *, engine: Callable, swap_engine: Callable, device: Callable = lambda: None,
                 history: ModelHistory | None = None, work_dir: str | Path | None = None,
                 program: list[str] | None = None, fast: bool = False, extra_args: list[str] | None = None,
                 make_engine: Callable = default_make_engine,
                 on_device_changed: Callable | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Update model")
        self.store, self.engine, self.swap_engine, self.device = store, engine, swap_engine, device
        self.history = history or ModelHistory()
        self.work_dir = Path(work_dir) if work_dir is not None else self.history.root / "updates"
        self.program, self.fast, self.extra_args, self.make_engine = program, fast, extra_args, make_engine
        self.on_device_changed = on_device_changed
        self.plan: UpdatePlan | None = None
        self.state: UpdateState | None = None
        self.record: dict | None = None
        self.candidate: dict | None = None
        self.export_dir: Path | None = None
        self.out_dir: Path | None = None
        self.deploy_text = ""
        self._started = time.monotonic()
        self.process = UpdateProcess(self)
        self.process.event.connect(self._on_event)
        self.process.log.connect(self._on_log)
        self.process.ended.connect(self._on_ended)
        self._tick = QTimer(self, interval=1000, timeout=self._show_progress)
        self.plan_page, self.run_page = PlanPage(), RunPage()
        self._connect_pages()
        self.pages = QStackedWidget()
        self.pages.addWidget(self.plan_page)
        self.pages.addWidget(self.run_page)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(14, 12, 14, 12)
        lay.addWidget(self.pages)
        self.resize(fitted_size(self, PREFERRED_SIZE))

    def _connect_pages(self) -> None:
        plan, run = self.plan_page, self.run_page
        self.start_button, self.push_box = plan.start_button, plan.push_box
        self.verdict, self.deploy_label, self.override_button = run.verdict, run.deploy_label, run.override_button
        plan.start_button.clicked.connect(self.start)
        run.override_button.clicked.connect(self.ask_override)
        run.cancel_button.clicked.connect(self.cancel)
        for button in (plan.history_button, run.history_button):
            button.clicked.connect(self.show_history)
        for button in (plan.close_button, run.close_button):
            button.clicked.connect(self.close)

    # ---------------------------------------------------------------- the plan

    def refresh_plan(self) -> None:
        """Count the store and ask the device (a job); the page fills in when it answers."""
        self.plan_page.clear()
        engine = self.engine()
        dev = self.device()
        package = getattr(getattr(engine, "package", None), "path", None)
        jobs.run(make_plan, self.store, engine.manifest, package, pairing=dev[0] if dev else None,
                 history=self.history, fast=self.fast,
                 on_success=self._show_plan, on_failure=lambda exc: self._say(f"Cannot prepare the update: {exc}",
                                                                              "error"))

    def _show_plan(self, plan: UpdatePlan) -> None:
        self.plan = plan
        self.plan_page.show_plan(plan)
        if plan.labelled_tiles == 0:
            self._say("No reviewed tiles yet: review some flags first (C / N / Space in the review workspace).", "warning")

    # ---------------------------------------------------------------- start

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if self.pages.currentIndex() == 0:
            self.refresh_plan()

    def start(self) -> None:
        """Export the store (a job), then start ``distill update`` on it."""
        plan = self.plan
        if plan is None or self.process.running or plan.missing:
            return
        self.state = UpdateState()
        self.record = self.candidate = None
        self.deploy_text = ""
        self.pages.setCurrentIndex(1)
        self.run_page.reset(f"Updating {plan.base.label} with {plan.labelled_tiles} reviewed and "
                            f"{plan.unlabelled_tiles} unlabelled tiles")
        self._show_stages()
        self._status("Exporting the reviewed flags…")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.out_dir = self.work_dir / f"{stamp}-from-{plan.base.version}"
        self.export_dir = self.work_dir / f".export-{stamp}"
        self._started = time.monotonic()
        self._tick.start()
        jobs.run(export_store, self.store, self.export_dir, on_success=self._launch,
                 on_failure=lambda exc: self._fail(f"Export failed: {exc}"))

    def _launch(self, report) -> None:
        if self.state is None or self.state.finished:
            return
        plan = self.plan
        self._append("app", f"exported {report.flags} flags: {report.crack} crack, {report.no_crack} no crack, "
                            f"{report.unlabelled} unlabelled tiles")
        extra = list(self.extra_args or [])
        if "--version" not in extra:  # never a version this model had before (after a rollback too)
            extra += ["--version", self.history.next_version(plan.base.name, plan.base.version)]
        argv = update_command(training_base(plan.base.path), self.export_dir, self.out_dir,
                              unlabelled=self.export_dir / "unlabelled" if report.unlabelled else None,
                              seed=0, fast=self.fast, pushed_by=user_name(), extra=extra, program=self.program)
        self._append("app", "$ " + " ".join(argv))
        self.state.started = time.monotonic()
        self._status("Starting distill update…")
        self.runningChanged.emit(True)   # before start(): its end (even a failed start) comes after
        self.process.start(argv, cwd=str(app_root()))

    # ---------------------------------------------------------------- events

    def _on_event(self, event: dict) -> None:
        state = self.state
        if state is None:
            return
        state.apply(event)
        kind = event["event"]
        if kind in ("start", "stage", "error", "cancelled"):
            self._show_stages()
        if kind == "epoch":
            self.run_page.curves.set_curves(state.curves)
        if kind == "log":
            self._append(event["level"], event["message"])
        if kind == "error":
            self._append("error", event["message"])
        if kind == "gate":
            self.run_page.show_gate(event)
        self._show_progress()

    def _on_log(self, level: str, text: str) -> None:
        self._append(level, text)

    def _on_ended(self, code: int, cancelled: bool) -> None:
        self.runningChanged.emit(False)
        state = self.state
        self._tick.stop()
        if state is None:
            return
        if not state.finished:
            if cancelled:
                state.apply({"event": "cancelled", "stage": state.current or "read"})
            else:
                state.error = f"distill update ended (exit status {code}) without a result; see the log"
        self._cleanup_export()
        if state.result is not None:
            jobs.run(read_result, state.result, on_success=self._on_result,
                     on_failure=lambda exc: self._fail(f"Cannot read the update's result: {exc}"))
            return
        self._finish()

    def _on_result(self, record: dict | None) -> None:
        self.record = record
        state = self.state
        if state.gate is None:
            state.gate = gate_of(record)
        self.candidate = dict(state.result.get("candidate") or {})
        jobs.run(register_candidate, self.history, self.plan.base, self.candidate, state.result, state.gate,
                 on_failure=lambda exc: self._append("warning", f"model history not updated: {exc}"))
        self._finish()

    def _finish(self) -> None:
        state = self.state
        outcome = state.outcome
        self._show_stages()
        self._show_progress()
        self._status(self.run_page.show_outcome(state, self.plan.base.label))
        has_candidate = bool(self.candidate and self.candidate.get("int8"))
        if outcome == "failed" and has_candidate and not state.promoted:
            self.override_button.show()
            self.run_page.show_deploy("Not pushed: the gate failed. An expert may push it anyway (recorded).")
        elif state.promoted and has_candidate and self.push_box.isChecked():
            self.deploy()
        elif state.promoted and has_candidate:
            self.run_page.show_deploy(f"Not pushed (the box was off). The packages are in {self.out_dir}.")
        self.updateFinished.emit(outcome)

    # ---------------------------------------------------------------- cancel, close

    def cancel(self) -> None:
        if self.process.running:
            self._status("Cancelling…")
            self.run_page.cancel_button.setEnabled(False)
            self.process.cancel()
        elif self.state is not None and not self.state.finished:   # still exporting
            self.state.apply({"event": "cancelled", "stage": "read"})
            self._cleanup_export()
            self._finish()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        if self.process.running:
            self.cancel()
            event.ignore()        # closes once the job has stopped (Close is enabled then)
            return
        super().closeEvent(event)

    def shutdown(self) -> None:
        """The window is closing: stop a running job (SIGTERM, then SIGKILL)."""
        self._tick.stop()
        self.process.shutdown()

    # ---------------------------------------------------------------- deploy

    def deploy(self) -> None:
        """The INT8 candidate live: on the paired device (push, activate, wait) or on this laptop."""
        cand = self.candidate or {}
        package = cand.get("int8")
        if not package:
            return
        dev = self.device()
        name = read_manifest(package).get("name", "model")
        label = f"{name} {cand.get('version', '')}".strip()
        self.override_button.hide()
        if dev is not None:
            pairing, pairings = dev
            self.run_page.show_deploy(f"Signing and pushing {label} to {pairing.agent_name}…")
            jobs.run(push_to_device, pairings, pairing, package, self.history, label,
                     on_progress=self._deploy_progress,
                     on_success=lambda out: self._deployed(f"{label} live on {pairing.agent_name}"),
                     on_failure=lambda exc: self._deploy_failed(f"{label} did not go live on "
                                                                f"{pairing.agent_name}: {exc}"))
        else:
            self.run_page.show_deploy(f"Loading {label} into this laptop's live view…")
            jobs.run(self.make_engine, package, on_success=lambda eng: self._swap(eng, label, package),
                     on_failure=lambda exc: self._deploy_failed(f"{label} could not be loaded here: {exc}"))

    def _deploy_progress(self, step, *values) -> None:
        if step == "upload":
            sent, total = values
            self.run_page.show_deploy(f"Uploading… {sent / 2**20:.1f} / {total / 2**20:.1f} MB")
        else:
            self.run_page.show_deploy(str(values[0]))

    def _swap(self, engine, label: str, package) -> None:
        before = self.engine()
        m = before.manifest
        previous = (m.name, m.version, str(getattr(before.package, "path", "") or ""))
        self.swap_engine(engine)
        jobs.run(self.history.record_laptop_live, engine.manifest.name, engine.manifest.version, package,
                 previous=previous if previous[2] else None,
                 on_failure=lambda exc: self._append("warning", f"model history not updated: {exc}"))
        self._deployed(f"{label} live on this laptop")

    def _deployed(self, text: str) -> None:
        self.deploy_text = text
        self.run_page.show_deploy(text, ok=True)
        self._say(text, "info")
        if self.on_device_changed is not None:
            self.on_device_changed()
        self.deployed.emit(text)

    def _deploy_failed(self, text: str) -> None:
        self.run_page.show_deploy(text, ok=False)
        self._say(text, "error")
        self.deployFailed.emit(text)

    def ask_override(self) -> None:
        """The one expert-override dialog (also the device panel's): failed rules, reason, who."""
        state = self.state
        dialog = ExpertOverrideDialog([rule_text(r) for r in state.failed_rules()], "the candidate", self)
        dialog.accepted.connect(lambda: self.override(*dialog.values()))
        dialog.open()

    def override(self, reason: str, by: str | None = None) -> None:
        """Push the candidate although the gate failed: the reason and who are written into the
        packages' signed lineage (the device refuses a refused candidate without it) and the history."""
        by = by or user_name()
        if len(reason) < MIN_OVERRIDE_REASON or not self.candidate or not by:
            return
        self._append("warning", f"gate overridden by {by}: {reason}")
        jobs.run(override_package, self.candidate["int8"], reason=reason, by=by, history=self.history,
                 also=tuple(p for p in (self.candidate.get("fp32"),) if p),
                 on_success=lambda _: self.deploy(),
                 on_failure=lambda exc: self._deploy_failed(f"the override could not be recorded, not pushed: {exc}"))

    def show_history(self) -> None:
        dialog = ModelHistoryDialog(self.history, engine=self.engine, swap_engine=self.swap_engine,
                                    device=self.device, make_engine=self.make_engine,
                                    on_device_changed=self.on_device_changed, parent=self)
        dialog.message.connect(self.message)
        dialog.setAttribute(Qt.WA_DeleteOnClose)
        dialog.open()

    # ---------------------------------------------------------------- showing

    def _show_stages(self) -> None:
        if self.state is not None:
            self.run_page.show_stages(self.state)

    def _show_progress(self) -> None:
        if self.state is not None:
            self.run_page.show_progress(self.state, time.monotonic() - self._started)

    def _status(self, text: str) -> None:
        self.run_page.set_status(text)
        log.info("update: %s", text)

    def _append(self, level: str, text: str) -> None:
        self.run_page.append(level, text)

    def _say(self, text: str, level: str) -> None:
        self.message.emit(text, level)

    def _fail(self, text: str) -> None:
        if self.state is not None and not self.state.finished:
            self.state.error = text
        self._tick.stop()
        self._append("error", text)
        self._cleanup_export()
        self._finish()

    def _cleanup_export(self) -> None:
        folder, self.export_dir = self.export_dir, None
        if folder is not None:
            jobs.run(shutil.rmtree, folder, ignore_errors=True)
