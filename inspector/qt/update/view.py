"""Update model: from the reviewed flags to a new model live on the device (or this laptop).

:class:`UpdateDialog` has two pages. **What will be used**: reviewed frames and tiles per label,
unlabelled frames, replay, the base model (the paired device's active model when one is
connected, else this laptop's), an estimated time and "push when the gate passes". **The run**:
the store is exported (a job on :mod:`.jobs`), then ``distill update`` runs as a separate
process (:class:`~.update_process.UpdateProcess`; torch never enters this process) and its
events drive the stage list, the progress bar with the time left, the loss / validation-MCC
curves (:mod:`.update_charts`) and the log. Cancel sends SIGTERM (then SIGKILL after a grace
period). At the end: the before/after table and the verdict; if the gate passed (and the box is
on) the INT8 candidate is signed, pushed, activated and awaited until the device reports it
live, or, without a device, swapped into this laptop's live view. A failed gate can be
overridden by an expert: a confirmation with a reason, recorded in the model history, then the
same push path (no re-run).

Signals (tests, the window): ``updateFinished(outcome)`` ("passed", "failed", "error", "cancelled"),
``deployed(text)``, ``deployFailed(text)``, ``message(text, level)``.
"""
from __future__ import annotations

import getpass
import logging
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QDialog, QFormLayout, QFrame,
                               QHBoxLayout, QHeaderView, QLabel, QListWidget, QListWidgetItem,
                               QPlainTextEdit, QProgressBar, QPushButton, QSplitter, QStackedWidget, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from inspector.update import plan as MU
from inspector.update.history import (
    MIN_OVERRIDE_REASON,
    ModelHistory,
    ModelVersion,
    override_package,
)
from inspector.paths import app_root
from inspector.qt import jobs, theme
from inspector.qt.update.charts import TrainingCurves
from inspector.qt.update.process import UpdateProcess

log = logging.getLogger(__name__)

STAGE_NAMES = {"read": "Read the reviewed data", "split": "Split (by frame)", "adapt_teachers": "Adapt the teachers",
               "teacher_outputs": "Teacher outputs", "distil": "Distil the student", "calibrate": "Calibrate INT8",
               "export": "Export packages", "gate": "Gate: before vs after", "write": "Write the record"}
STAGE_MARKS = {"pending": ("○", theme.TEXT_DIM), "running": ("▶", theme.ACCENT), "done": ("✓", "#78c88c"),
               "skipped": ("–", theme.TEXT_DIM), "failed": ("✗", "#ff8a80"), "cancelled": ("■", "#ffb300")}
OUTCOME_TEXT = {"passed": "✓ The gate passed", "failed": "✗ The gate failed", "error": "✗ The update failed",
                "cancelled": "■ Cancelled: no model was changed"}


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def default_make_engine(path):
    """An InferenceEngine on ``path`` with the app's thread count (called on a job thread)."""
    from inspector.edge.engine import InferenceEngine
    from inspector.qt.main import default_threads

    return InferenceEngine(path, threads=default_threads())


class UpdateDialog(QDialog):
    """``UpdateDialog(store, engine=, swap_engine=, device=, history=, work_dir=)``.

    ``engine()``: this laptop's engine now; ``swap_engine(engine)``: put a new engine in the live
    view (GUI thread); ``device()``: (Pairing, PairingStore) of the device on screen, or None;
    ``program``: the command that stands for ``distill`` (tests: a fake job); ``fast``: ask the
    job for its short run (``--fast``); ``extra_args``: more options for ``distill update``;
    ``make_engine(path)``: load a package (on a job thread).
    """

    updateFinished = Signal(str)
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
        self.plan: MU.UpdatePlan | None = None
        self.state: MU.UpdateState | None = None
        self.record: dict | None = None
        self.candidate: dict | None = None
        self.export_dir: Path | None = None
        self.out_dir: Path | None = None
        self.deploy_text = ""
        self.process = UpdateProcess(self)
        self.process.event.connect(self._on_event)
        self.process.log.connect(self._on_log)
        self.process.ended.connect(self._on_ended)
        self._tick = QTimer(self, interval=1000, timeout=self._show_progress)
        self.pages = QStackedWidget()
        self.pages.addWidget(self._plan_page())
        self.pages.addWidget(self._run_page())
        lay = QVBoxLayout(self)
        lay.setContentsMargins(14, 12, 14, 12)
        lay.addWidget(self.pages)
        self.resize(1180, 820)

    # ================================================================ page 1: what will be used

    def _plan_page(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        lay.addWidget(QLabel("UPDATE MODEL", objectName="sectionTitle"))
        lay.addWidget(QLabel("Fine-tune the student on the reviewed flags, against the teachers, then check it "
                             "against the current model before it goes live.", objectName="dim", wordWrap=True))
        box = QFrame(objectName="panel")
        self.form = QFormLayout(box)
        self.form.setContentsMargins(14, 12, 14, 12)
        self.form.setVerticalSpacing(8)
        self.fields = {}
        for key, caption in (("reviewed", "Reviewed frames"), ("tiles", "Reviewed tiles"),
                             ("unlabelled", "Unlabelled frames"), ("left_out", "Left out"),
                             ("validation", "Site validation"), ("replay", "Replay"), ("base", "Base model"),
                             ("estimate", "Estimated time")):
            value = QLabel("…", objectName="value", wordWrap=True)
            value.setTextInteractionFlags(Qt.TextSelectableByMouse)
            self.fields[key] = value
            self.form.addRow(QLabel(caption, objectName="dim"), value)
        lay.addWidget(box)
        # what the reviewed data lack for a run the gate could promote (the job's own split rule)
        self.missing_label = QLabel("", objectName="error", wordWrap=True, visible=False)
        self.missing_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.missing_label)
        self.push_box = QCheckBox("Push when the gate passes", checked=True)
        lay.addWidget(self.push_box)
        lay.addStretch(1)
        buttons = QHBoxLayout()
        self.history_button_plan = QPushButton("Model history…")
        self.history_button_plan.clicked.connect(self.show_history)
        self.start_button = QPushButton("Start update", objectName="primary", enabled=False)
        self.start_button.clicked.connect(self.start)
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        buttons.addWidget(self.history_button_plan)
        buttons.addStretch(1)
        buttons.addWidget(close)
        buttons.addWidget(self.start_button)
        lay.addLayout(buttons)
        return page

    def refresh_plan(self) -> None:
        """Count the store and ask the device (a job); the page fills in when it answers."""
        self.start_button.setEnabled(False)
        for v in self.fields.values():
            v.setText("…")
        engine = self.engine()
        dev = self.device()
        package = getattr(getattr(engine, "package", None), "path", None)
        jobs.run(MU.make_plan, self.store, engine.manifest, package, pairing=dev[0] if dev else None,
                 history=self.history, fast=self.fast,
                 on_success=self._show_plan, on_failure=lambda exc: self._say(f"Cannot prepare the update: {exc}",
                                                                              "error"))

    def _show_plan(self, plan: MU.UpdatePlan) -> None:
        self.plan = plan
        r, p = plan.review, plan.patches
        f = self.fields
        f["reviewed"].setText(f"{r.crack} crack, {r.no_crack} no crack  ({p['frames']} frames exported)")
        f["tiles"].setText(f"{p['crack']} crack, {p['no_crack']} no crack  ({plan.labelled_tiles} tiles)")
        f["unlabelled"].setText(f"{r.unreviewed} unreviewed + {r.unsure} unsure  ({p['unlabelled']} tiles, "
                                f"labelled by the teachers)")
        f["left_out"].setText(f"{p['needs_tiles']} crack frames without tile labels" if p["needs_tiles"] else "none")
        f["replay"].setText(f"base data replay, chosen by the job (≈ {MU.replay_tiles(plan.labelled_tiles)} patches "
                            f"at its default of {MU.REPLAY_RATIO:g} per reviewed tile)")
        b = plan.base
        f["base"].setText(f"{b.label} — {'running on ' + b.where if b.where != 'this laptop' else 'this laptop'}"
                          + (f"\n{b.note}" if b.note else ""))
        f["estimate"].setText(f"≈ {MU.format_duration(plan.estimate_s)}  (an estimate from the counts; this "
                              f"laptop keeps its live view running meanwhile)")
        target = f"to {plan.device}" if plan.device else "into this laptop's live view"
        self.push_box.setText(f"Push when the gate passes ({target})")
        sp = plan.split
        f["validation"].setText("—" if sp is None else
                                f"{sp.val_crack} crack, {sp.val_clean} clean tiles from {len(sp.val)} frames held out "
                                f"to judge the candidate (at least {MU.SITE_MIN_PER_CLASS} of each)")
        missing = plan.missing
        self.missing_label.setText("Start is off until the reviewed data can show a gain, because the gate could "
                                   "not promote any candidate: " + "; ".join(missing) if missing else "")
        self.missing_label.setVisible(bool(missing))
        ok = plan.labelled_tiles > 0 and b.path is not None and not missing
        self.start_button.setEnabled(ok)
        self.start_button.setToolTip("; ".join(missing))
        if plan.labelled_tiles == 0:
            self._say("No reviewed tiles yet: review some flags first (C / N / Space in the review workspace).", "warning")

    # ================================================================ page 2: the run

    def _run_page(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        lay.setSpacing(8)
        self.title = QLabel("", objectName="value")
        self.title.setStyleSheet("font-size: 12pt;")
        lay.addWidget(self.title)
        top = QSplitter(Qt.Horizontal)
        self.stage_list = QListWidget()
        self.stage_list.setSelectionMode(QAbstractItemView.NoSelection)
        self.stage_list.setFocusPolicy(Qt.NoFocus)
        self.stage_list.setMinimumWidth(250)
        self.stage_list.setWordWrap(True)
        self.stage_list.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.curves = TrainingCurves()
        top.addWidget(self.stage_list)
        top.addWidget(self.curves)
        top.setStretchFactor(1, 1)
        top.setSizes([270, 880])
        lay.addWidget(top, 3)
        row = QHBoxLayout()
        self.bar = QProgressBar(textVisible=True, minimum=0, maximum=1000)
        self.time_left = QLabel("", objectName="dim")
        self.time_left.setMinimumWidth(260)
        row.addWidget(self.bar, 1)
        row.addWidget(self.time_left)
        lay.addLayout(row)
        lay.addWidget(self._result_box(), 0)
        self.log_view = QPlainTextEdit(readOnly=True, maximumBlockCount=3000)
        self.log_view.setFont(theme.mono_font(9))
        self.log_view.setMaximumHeight(130)
        lay.addWidget(self.log_view, 1)
        buttons = QHBoxLayout()
        self.history_button = QPushButton("Model history…")
        self.history_button.clicked.connect(self.show_history)
        self.override_button = QPushButton("Push anyway…", visible=False,
                                           toolTip="Override the failed gate (an expert decision, recorded)")
        self.override_button.clicked.connect(self.ask_override)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button = QPushButton("Close", enabled=False)
        self.close_button.clicked.connect(self.close)
        buttons.addWidget(self.history_button)
        buttons.addStretch(1)
        for b in (self.override_button, self.cancel_button, self.close_button):
            buttons.addWidget(b)
        lay.addLayout(buttons)
        return page

    def _result_box(self) -> QWidget:
        self.result_box = QFrame(objectName="panel", visible=False)
        lay = QVBoxLayout(self.result_box)
        lay.setContentsMargins(12, 8, 12, 10)
        self.verdict = QLabel("", wordWrap=True)
        self.verdict.setStyleSheet("font-size: 12pt; font-weight: 600;")
        lay.addWidget(self.verdict)
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["Set", "Metric", "Before (base)", "After (candidate)", "Change"])
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)     # sized to its rows, never scrolled
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.NoSelection)
        self.table.setFocusPolicy(Qt.NoFocus)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.setStyleSheet(f"QTableWidget {{ background: #121416; gridline-color: {theme.PANEL_EDGE}; }}"
                                 f"QHeaderView::section {{ background: {theme.PANEL}; color: {theme.TEXT_DIM}; "
                                 f"border: 0; padding: 4px; }}")
        lay.addWidget(self.table)
        self.rules = QLabel("", objectName="dim", wordWrap=True)
        lay.addWidget(self.rules)
        self.deploy_label = QLabel("", objectName="value", wordWrap=True)
        lay.addWidget(self.deploy_label)
        return self.result_box

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
        self.state = MU.UpdateState()
        self.record = self.candidate = None
        self.deploy_text = ""
        self.pages.setCurrentIndex(1)
        self.result_box.hide()
        self.override_button.hide()
        self.log_view.clear()
        self.log_view.setMaximumHeight(130)
        self.curves.clear()
        self.cancel_button.setEnabled(True)
        self.close_button.setEnabled(False)
        self.title.setText(f"Updating {plan.base.label} with {plan.labelled_tiles} reviewed and "
                           f"{plan.unlabelled_tiles} unlabelled tiles")
        self._show_stages()
        self._status("Exporting the reviewed flags…")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.out_dir = self.work_dir / f"{stamp}-from-{plan.base.version}"
        self.export_dir = self.work_dir / f".export-{stamp}"
        self._started = time.monotonic()
        self._tick.start()
        jobs.run(_export, self.store, self.export_dir, on_success=self._launch,
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
        argv = MU.update_command(MU.training_base(plan.base.path), self.export_dir, self.out_dir,
                                 unlabelled=self.export_dir / "unlabelled" if report.unlabelled else None,
                                 seed=0, fast=self.fast, pushed_by=_user(), extra=extra,
                                 program=self.program)
        self._append("app", "$ " + " ".join(argv))
        self.state.started = time.monotonic()
        self._status("Starting distill update…")
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
            self.curves.set_curves(state.curves)
        if kind == "log":
            self._append(event["level"], event["message"])
        if kind == "error":
            self._append("error", event["message"])
        if kind == "gate":
            self._show_gate(event)
        self._show_progress()

    def _on_log(self, level: str, text: str) -> None:
        self._append(level, text)

    def _on_ended(self, code: int, cancelled: bool) -> None:
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
            jobs.run(_read_result, state.result, on_success=self._on_result,
                     on_failure=lambda exc: self._fail(f"Cannot read the update's result: {exc}"))
            return
        self._finish()

    def _on_result(self, record: dict | None) -> None:
        self.record = record
        state = self.state
        if state.gate is None:
            state.gate = MU.gate_of(record)
        self.candidate = dict(state.result.get("candidate") or {})
        jobs.run(_register, self.history, self.plan.base, self.candidate, state.result, state.gate,
                 on_failure=lambda exc: self._append("warning", f"model history not updated: {exc}"))
        self._finish()

    def _finish(self) -> None:
        state = self.state
        outcome = state.outcome
        self._show_stages()
        self._show_progress()
        self.cancel_button.setEnabled(False)
        self.close_button.setEnabled(True)
        self.result_box.show()
        self._show_gate(state.gate)
        text = OUTCOME_TEXT[outcome]
        if outcome == "failed":
            failed = state.failed_rules()
            text += ": " + "; ".join(MU.rule_text(r) for r in failed) if failed else ""
        if outcome == "error":
            text += f": {state.error}"
        colour = {"passed": "#78c88c", "cancelled": "#ffb300"}.get(outcome, "#ff8a80")
        self.verdict.setStyleSheet(f"font-size: 12pt; font-weight: 600; color: {colour};")
        self.verdict.setText(text)
        self._status(text)
        version = (state.result or {}).get("candidate", {}).get("version")
        self.title.setText(f"Update of {self.plan.base.label}" + (f" → {version}" if version else "")
                           + f": {OUTCOME_TEXT[outcome].split(' ', 1)[1].split(':')[0].lower()}")
        self.log_view.setMaximumHeight(80)
        has_candidate = bool(self.candidate and self.candidate.get("int8"))
        if outcome == "failed" and has_candidate and not state.promoted:
            self.override_button.show()
            self.deploy_label.setText("Not pushed: the gate failed. An expert may push it anyway (recorded).")
        elif state.promoted and has_candidate and self.push_box.isChecked():
            self.deploy()
        elif state.promoted and has_candidate:
            self.deploy_label.setText(f"Not pushed (the box was off). The packages are in {self.out_dir}.")
        self.updateFinished.emit(outcome)

    # ---------------------------------------------------------------- cancel, close

    def cancel(self) -> None:
        if self.process.running:
            self._status("Cancelling…")
            self.cancel_button.setEnabled(False)
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
        name = MU.read_manifest(package).get("name", "model")
        label = f"{name} {cand.get('version', '')}".strip()
        self.override_button.hide()
        if dev is not None:
            pairing, pairings = dev
            self.deploy_label.setText(f"Signing and pushing {label} to {pairing.agent_name}…")
            jobs.run(_deploy_device, pairings, pairing, package, self.history, label,
                     on_progress=self._deploy_progress,
                     on_success=lambda out: self._deployed(f"{label} live on {pairing.agent_name}"),
                     on_failure=lambda exc: self._deploy_failed(f"{label} did not go live on "
                                                                f"{pairing.agent_name}: {exc}"))
        else:
            self.deploy_label.setText(f"Loading {label} into this laptop's live view…")
            jobs.run(self.make_engine, package, on_success=lambda eng: self._swap(eng, label, package),
                     on_failure=lambda exc: self._deploy_failed(f"{label} could not be loaded here: {exc}"))

    def _deploy_progress(self, step, *values) -> None:
        if step == "upload":
            sent, total = values
            self.deploy_label.setText(f"Uploading… {sent / 2**20:.1f} / {total / 2**20:.1f} MB")
        else:
            self.deploy_label.setText(str(values[0]))

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
        self.deploy_label.setText("✓ " + text)
        self.deploy_label.setStyleSheet("color: #78c88c;")
        self._say(text, "info")
        if self.on_device_changed is not None:
            self.on_device_changed()
        self.deployed.emit(text)

    def _deploy_failed(self, text: str) -> None:
        self.deploy_label.setText("✗ " + text)
        self.deploy_label.setStyleSheet("color: #ff8a80;")
        self._say(text, "error")
        self.deployFailed.emit(text)

    def ask_override(self) -> None:
        """The one expert-override dialog (also the device panel's): failed rules, reason, who."""
        from inspector.qt.device.override_dialog import ExpertOverrideDialog

        state = self.state
        dialog = ExpertOverrideDialog([MU.rule_text(r) for r in state.failed_rules()], "the candidate", self)
        dialog.accepted.connect(lambda: self.override(*dialog.values()))
        dialog.open()

    def override(self, reason: str, by: str | None = None) -> None:
        """Push the candidate although the gate failed: the reason and who are written into the
        packages' signed lineage (the device refuses a refused candidate without it) and the history."""
        by = by or _user()
        if len(reason) < MIN_OVERRIDE_REASON or not self.candidate or not by:
            return
        self._append("warning", f"gate overridden by {by}: {reason}")
        jobs.run(override_package, self.candidate["int8"], reason=reason, by=by, history=self.history,
                 also=tuple(p for p in (self.candidate.get("fp32"),) if p),
                 on_success=lambda _: self.deploy(),
                 on_failure=lambda exc: self._deploy_failed(f"the override could not be recorded, not pushed: {exc}"))

    def show_history(self) -> None:
        from inspector.qt.update.history_view import ModelHistoryDialog

        dialog = ModelHistoryDialog(self.history, engine=self.engine, swap_engine=self.swap_engine,
                                    device=self.device, make_engine=self.make_engine,
                                    on_device_changed=self.on_device_changed, parent=self)
        dialog.message.connect(self.message)
        dialog.setAttribute(Qt.WA_DeleteOnClose)
        dialog.open()

    # ---------------------------------------------------------------- showing

    def _show_stages(self) -> None:
        state = self.state
        if state is None:
            return
        self.stage_list.clear()
        for name, st in state.stages.items():
            mark, colour = STAGE_MARKS.get(st, ("?", theme.TEXT))
            text = f"{mark}  {STAGE_NAMES.get(name, name)}"
            detail = state.stage_detail.get(name)
            if detail:
                text += f"\n     {detail}"
            item = QListWidgetItem(text)
            item.setData(Qt.UserRole, st)
            item.setForeground(QColor(colour if st != "pending" else theme.TEXT_DIM))
            self.stage_list.addItem(item)

    def _show_progress(self) -> None:
        state = self.state
        if state is None:
            return
        self.bar.setValue(int(1000 * state.fraction()))
        if state.finished:
            self.bar.setFormat({"passed": "done: the gate passed", "failed": "done: the gate failed",
                                "error": "failed", "cancelled": "cancelled"}[state.outcome])
            self.time_left.setText(f"took {MU.format_duration(time.monotonic() - self._started)}")
            return
        stage = STAGE_NAMES.get(state.current or "", "preparing")
        if state.progress:
            done, total = state.progress
            self.bar.setFormat(f"{stage}: {done}/{total}   %p%")
        else:
            self.bar.setFormat(f"{stage}   %p%")
        seconds, how = state.time_left()
        self.time_left.setText(f"≈ {MU.format_duration(seconds)} {how}" if seconds is not None
                               else f"elapsed {MU.format_duration(time.monotonic() - self._started)}")

    def _show_gate(self, gate: dict | None) -> None:
        rows = MU.comparison_rows(gate)
        self.table.setRowCount(len(rows))
        for i, (set_name, metric, base, cand) in enumerate(rows):
            delta = cand - base if base is not None and cand is not None else None
            cells = [set_name.replace("_", " "), metric, _cell(base), _cell(cand),
                     "—" if delta is None else f"{delta:+.3f}"]
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignCenter if j >= 2 else Qt.AlignLeft | Qt.AlignVCenter)
                if j == 4 and delta is not None and abs(delta) >= 5e-4:
                    item.setForeground(QColor("#78c88c" if delta > 0 else "#ff8a80"))
                self.table.setItem(i, j, item)
        header = self.table.horizontalHeader().sizeHint().height()
        self.table.setFixedHeight(header + 22 * max(1, len(rows)) + 2 * self.table.frameWidth() + 2)
        rules = (gate or {}).get("rules") or []
        self.rules.setText("Gate rules:  " + "   ·   ".join(("✓ " if r.get("passed") else "✗ ") + MU.rule_text(r)
                                                             for r in rules) if rules else "")
        if gate is not None:
            self.result_box.show()

    def _status(self, text: str) -> None:
        self.title.setToolTip(text)
        self.time_left.setToolTip(text)
        self.bar.setToolTip(text)
        log.info("update: %s", text)

    def _append(self, level: str, text: str) -> None:
        prefix = {"info": "", "app": "· ", "stdout": "", "stderr": "", "warning": "⚠ ", "error": "✗ "}.get(level, "")
        self.log_view.appendPlainText(prefix + text)

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


def _cell(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


# ---------------------------------------------------------------------------- jobs (pool threads)

def _export(store, folder: Path):
    folder.parent.mkdir(parents=True, exist_ok=True)
    return store.export_dataset(folder, include_unreviewed=True)


def _read_result(result: dict) -> dict | None:
    path = Path(result["update_json"])
    return MU.read_update_json(path.parent) if path.name == "update.json" else None


def _register(history: ModelHistory, base: MU.BaseModel, candidate: dict, result: dict, gate: dict | None) -> None:
    int8 = candidate.get("int8")
    m = MU.read_manifest(int8) if int8 else {}
    history.add(ModelVersion(name=m.get("name", base.name), version=str(candidate.get("version", "")),
                             parent=base.version, created=m.get("created", ""), int8=int8,
                             fp32=candidate.get("fp32"), checkpoint=candidate.get("checkpoint"),
                             update_json=result.get("update_json"), gate_passed=bool(gate and gate.get("passed")),
                             metrics=(gate or {}).get("metrics") or {}))


def _deploy_device(pairings, pairing, package, history: ModelHistory, label: str, progress):
    info, status = MU.deploy_to_device(pairing, pairings.signing_key(), package, progress=progress)
    history.record_event("device", f"{label} live on {pairing.agent_name}", device=pairing.agent_name,
                         version=info.version)
    return info, status
