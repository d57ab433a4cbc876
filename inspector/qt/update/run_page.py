"""The update dialog's second page, **the run**: the stage list, the loss / validation-MCC curves
(:mod:`.charts`), the progress bar with the time left, the log, and at the end the verdict, the
before/after table with the gate's rules and the state of the push.

The page shows an :class:`~inspector.update.job.UpdateState` (the job's events folded) and what
the dialog tells it; it starts, cancels and pushes nothing itself.
"""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QAbstractItemView, QFrame, QHBoxLayout, QHeaderView, QLabel, QListWidget,
                               QListWidgetItem, QPlainTextEdit, QProgressBar, QPushButton, QSplitter, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from inspector.qt import theme
from inspector.qt.update.charts import TrainingCurves
from inspector.update.job import UpdateState, comparison_rows, rule_text
from inspector.update.plan import format_duration

STAGE_NAMES = {"read": "Read the reviewed data", "split": "Split (by frame)", "adapt_teachers": "Adapt the teachers",
               "teacher_outputs": "Teacher outputs", "distil": "Distil the student", "calibrate": "Calibrate INT8",
               "export": "Export packages", "gate": "Gate: before vs after", "write": "Write the record"}
STAGE_MARKS = {"pending": ("○", theme.TEXT_DIM), "running": ("▶", theme.ACCENT), "done": ("✓", "#78c88c"),
               "skipped": ("–", theme.TEXT_DIM), "failed": ("✗", "#ff8a80"), "cancelled": ("■", "#ffb300")}
OUTCOME_TEXT = {"passed": "✓ The gate passed", "failed": "✗ The gate failed", "error": "✗ The update failed",
                "cancelled": "■ Cancelled: no model was changed"}
LOG_PREFIX = {"info": "", "app": "· ", "stdout": "", "stderr": "", "warning": "⚠ ", "error": "✗ "}
LOG_HEIGHT_RUNNING, LOG_HEIGHT_FINISHED = 130, 80     # the result box takes the room at the end
GOOD, BAD = "#78c88c", "#ff8a80"


class RunPage(QWidget):
    """``title``, ``stage_list``, ``curves``, ``bar``, ``time_left``, ``log_view``; the result box
    (``result_box``: ``verdict``, ``table``, ``rules``, ``deploy_label``); the buttons
    ``history_button``, ``override_button`` (hidden until a failed gate may be overridden),
    ``cancel_button``, ``close_button``."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
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
        self.log_view.setMaximumHeight(LOG_HEIGHT_RUNNING)
        lay.addWidget(self.log_view, 1)
        buttons = QHBoxLayout()
        self.history_button = QPushButton("Model history…")
        self.override_button = QPushButton("Push anyway…", visible=False,
                                           toolTip="Override the failed gate (an expert decision, recorded)")
        self.cancel_button = QPushButton("Cancel")
        self.close_button = QPushButton("Close", enabled=False)
        # Enter closes a finished run; it never cancels, pushes anyway or opens the history
        self.close_button.setDefault(True)
        for b in (self.history_button, self.override_button, self.cancel_button):
            b.setAutoDefault(False)
        buttons.addWidget(self.history_button)
        buttons.addStretch(1)
        for b in (self.override_button, self.cancel_button, self.close_button):
            buttons.addWidget(b)
        lay.addLayout(buttons)

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

    # ---------------------------------------------------------------- a run

    def reset(self, title: str) -> None:
        """A new run: no result, an empty log and curves, Cancel on, Close off."""
        self.result_box.hide()
        self.override_button.hide()
        self.log_view.clear()
        self.log_view.setMaximumHeight(LOG_HEIGHT_RUNNING)
        self.curves.clear()
        self.cancel_button.setEnabled(True)
        self.close_button.setEnabled(False)
        self.title.setText(title)

    def show_stages(self, state: UpdateState) -> None:
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

    def show_progress(self, state: UpdateState, elapsed: float) -> None:
        """The bar (stage, steps) and the time left, or the time taken once the run is over."""
        self.bar.setValue(int(1000 * state.fraction()))
        if state.finished:
            self.bar.setFormat({"passed": "done: the gate passed", "failed": "done: the gate failed",
                                "error": "failed", "cancelled": "cancelled"}[state.outcome])
            self.time_left.setText(f"took {format_duration(elapsed)}")
            return
        stage = STAGE_NAMES.get(state.current or "", "preparing")
        if state.progress:
            done, total = state.progress
            self.bar.setFormat(f"{stage}: {done}/{total}   %p%")
        else:
            self.bar.setFormat(f"{stage}   %p%")
        seconds, how = state.time_left()
        self.time_left.setText(f"≈ {format_duration(seconds)} {how}" if seconds is not None
                               else f"elapsed {format_duration(elapsed)}")

    def show_gate(self, gate: dict | None) -> None:
        """The before/after table and the gate's rules (the result box shows once there is a gate)."""
        rows = comparison_rows(gate)
        self.table.setRowCount(len(rows))
        for i, (set_name, metric, base, cand) in enumerate(rows):
            delta = cand - base if base is not None and cand is not None else None
            cells = [set_name.replace("_", " "), metric, _cell(base), _cell(cand),
                     "—" if delta is None else f"{delta:+.3f}"]
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignCenter if j >= 2 else Qt.AlignLeft | Qt.AlignVCenter)
                if j == 4 and delta is not None and abs(delta) >= 5e-4:
                    item.setForeground(QColor(GOOD if delta > 0 else BAD))
                self.table.setItem(i, j, item)
        header = self.table.horizontalHeader().sizeHint().height()
        self.table.setFixedHeight(header + 22 * max(1, len(rows)) + 2 * self.table.frameWidth() + 2)
        rules = (gate or {}).get("rules") or []
        self.rules.setText("Gate rules:  " + "   ·   ".join(("✓ " if r.get("passed") else "✗ ") + rule_text(r)
                                                             for r in rules) if rules else "")
        if gate is not None:
            self.result_box.show()

    def show_outcome(self, state: UpdateState, base_label: str) -> str:
        """The run is over: the verdict (which rules failed, or the error), the title, Close on.
        Returns the verdict's text."""
        outcome = state.outcome
        self.cancel_button.setEnabled(False)
        self.close_button.setEnabled(True)
        self.result_box.show()
        self.show_gate(state.gate)
        text = OUTCOME_TEXT[outcome]
        if outcome == "failed":
            failed = state.failed_rules()
            text += ": " + "; ".join(rule_text(r) for r in failed) if failed else ""
        if outcome == "error":
            text += f": {state.error}"
        colour = {"passed": GOOD, "cancelled": "#ffb300"}.get(outcome, BAD)
        self.verdict.setStyleSheet(f"font-size: 12pt; font-weight: 600; color: {colour};")
        self.verdict.setText(text)
        version = (state.result or {}).get("candidate", {}).get("version")
        self.title.setText(f"Update of {base_label}" + (f" → {version}" if version else "")
                           + f": {OUTCOME_TEXT[outcome].split(' ', 1)[1].split(':')[0].lower()}")
        self.log_view.setMaximumHeight(LOG_HEIGHT_FINISHED)
        return text

    # ---------------------------------------------------------------- lines of text

    def append(self, level: str, text: str) -> None:
        """A line in the log, marked by its level."""
        self.log_view.appendPlainText(LOG_PREFIX.get(level, "") + text)

    def set_status(self, text: str) -> None:
        """What the run is doing now, on hover over the title, the bar and the time left."""
        for widget in (self.title, self.time_left, self.bar):
            widget.setToolTip(text)

    def show_deploy(self, text: str, ok: bool | None = None) -> None:
        """The push's state; ``ok`` True / False: it ended (marked and coloured)."""
        if ok is None:
            self.deploy_label.setText(text)
            return
        self.deploy_label.setText(("✓ " if ok else "✗ ") + text)
        self.deploy_label.setStyleSheet(f"color: {GOOD if ok else BAD};")


def _cell(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"
