"""The review side panel: verdict buttons, what is known about the flag, location and note.

Everything here is also a key (the buttons say which); the panel only emits what was asked:
``verdictRequested("crack" | "no_crack" | "unsure" | "accept")``, ``fieldsEdited(flag_id,
location, note)`` when a field is committed (Enter or leaving it; Escape reverts), and
``doneEditing`` so the workspace can hand the keys back to the grid. While a text field has the
focus, letters type text: QLineEdit claims them before any shortcut.
"""
from __future__ import annotations

from datetime import datetime

from PySide6.QtCore import QEvent, QStringListModel, Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QCompleter, QFormLayout, QFrame, QGridLayout, QHBoxLayout, QLabel,
                               QLineEdit, QPushButton, QVBoxLayout, QWidget)

from inspector.store.query import DISAGREEMENT_COUNTED
from inspector.qt import theme
from inspector.qt.review.grid import STATE_COLOURS, STATE_TEXT

VERDICTS = (("crack", "Crack", "C"), ("no_crack", "No crack", "N"), ("unsure", "Unsure", "U"),
            ("accept", "Accept", "Space"))


def local_datetime(iso: str | None) -> str:
    """``YYYY-MM-DD HH:MM:SS TZ`` in local time of an ISO-8601 timestamp ("–" for None)."""
    if not iso:
        return "–"
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    except ValueError:
        return iso


class _Field(QLineEdit):
    """A line edit that reverts on Escape and reports leaving it."""

    cancelled = Signal()

    def keyPressEvent(self, e) -> None:  # noqa: N802 - Qt API
        if e.key() == Qt.Key_Escape:
            self.cancelled.emit()
        else:
            super().keyPressEvent(e)

    def event(self, e) -> bool:
        if e.type() == QEvent.ShortcutOverride and e.key() == Qt.Key_Escape:
            e.accept()
            return True
        return super().event(e)


class ReviewMetaPanel(QFrame):
    verdictRequested = Signal(str)
    fieldsEdited = Signal(int, str, str)     # flag id, location, note
    doneEditing = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, objectName="panel")
        self.record = None
        lay = QVBoxLayout(self)
        lay.setContentsMargins(12, 10, 12, 12)
        lay.setSpacing(8)
        lay.addWidget(QLabel("VERDICT", objectName="sectionTitle"))
        buttons = QGridLayout()
        buttons.setSpacing(6)
        self.buttons: dict[str, QPushButton] = {}
        for k, (verdict, text, key) in enumerate(VERDICTS):
            b = QPushButton(f"{text}  [{key}]")
            b.setFocusPolicy(Qt.NoFocus)
            b.clicked.connect(lambda _=False, v=verdict: self.verdictRequested.emit(v))
            buttons.addWidget(b, k // 2, k % 2)
            self.buttons[verdict] = b
        for verdict, colour in (("crack", theme.CRACK), ("no_crack", theme.CLEAN), ("unsure", theme.UNCERTAIN)):
            self.buttons[verdict].setStyleSheet(f"QPushButton {{ border-left: 4px solid {colour.name()}; }}")
        lay.addLayout(buttons)
        self.auto_advance = QCheckBox("Next flag after a verdict", checked=True)
        self.auto_advance.setFocusPolicy(Qt.NoFocus)
        lay.addWidget(self.auto_advance)

        lay.addWidget(QLabel("FLAG", objectName="sectionTitle"))
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.setHorizontalSpacing(10)
        form.setVerticalSpacing(3)
        self.values: dict[str, QLabel] = {}
        for key, title in (("flag", "Flag"), ("state", "Review"), ("time", "Time"), ("source", "Source"),
                           ("model", "Model"), ("reason", "Reason"), ("p_max", "p max"),
                           ("uncertainty", "Uncertainty"), ("disagreement", "Disagreement"),
                           ("teachers", "Teachers"), ("reviewer", "Reviewer"), ("reviewed_at", "Reviewed")):
            value = QLabel("–", objectName="value", wordWrap=True)
            value.setTextInteractionFlags(Qt.TextSelectableByMouse)
            value.setFocusPolicy(Qt.NoFocus)
            self.values[key] = value
            form.addRow(QLabel(title, objectName="dim"), value)
        lay.addLayout(form)

        lay.addWidget(QLabel("NOTES", objectName="sectionTitle"))
        notes = QFormLayout()
        notes.setContentsMargins(0, 0, 0, 0)
        notes.setHorizontalSpacing(10)
        self.location = _Field(placeholderText="e.g. Pier 3, north face")
        self.note = _Field(placeholderText="optional")
        self._locations = QStringListModel(self)
        completer = QCompleter(self._locations, self)
        completer.setCaseSensitivity(Qt.CaseInsensitive)
        self.location.setCompleter(completer)
        notes.addRow("Location", self.location)
        notes.addRow("Note", self.note)
        lay.addLayout(notes)
        for edit in (self.location, self.note):
            edit.editingFinished.connect(self._commit)
            edit.returnPressed.connect(self.doneEditing)
            edit.cancelled.connect(self._revert)
        lay.addStretch(1)
        hint = QHBoxLayout()
        hint.addWidget(QLabel("F1: all keys", objectName="dim"))
        hint.addStretch(1)
        lay.addLayout(hint)
        self.setEnabled(False)

    def set_locations(self, locations: list[str]) -> None:
        self._locations.setStringList(locations)

    def show_record(self, rec) -> None:
        """Show ``rec`` (None: nothing); a field being edited keeps what is typed."""
        same = self.record is not None and rec is not None and rec.id == self.record.id
        self.record = rec
        self.setEnabled(rec is not None)
        if rec is None:
            for v in self.values.values():
                v.setText("–")
            self.location.setText("")
            self.note.setText("")
            return
        v = self.values
        v["flag"].setText(f"#{rec.id}  ·  {rec.uid[:8]}")
        colour = STATE_COLOURS.get(rec.label, theme.TEXT_DIM)
        state = STATE_TEXT.get(rec.label, rec.label)
        if rec.needs_tiles:
            state += " · needs tiles: mark the crack tiles (or Space to accept the verdicts shown)"
        v["state"].setText(f"<span style='color:{colour.name()}'>●</span> {state}")
        v["time"].setText(local_datetime(rec.created))
        v["source"].setText(rec.source)
        v["model"].setText(f"{rec.model.name} {rec.model.version}")
        v["reason"].setText(rec.reason)
        v["p_max"].setText(f"{rec.crack_prob_max:.2f}")
        v["uncertainty"].setText(f"{rec.uncertainty:.2f} bits")
        if rec.disagreement is None:
            v["disagreement"].setText("– (not scored yet)")
        else:
            strong = rec.disagreement >= DISAGREEMENT_COUNTED
            v["disagreement"].setText(f"{rec.disagreement:.2f}" + ("  ⚠ teachers disagree" if strong else ""))
        v["teachers"].setText(" ".join(rec.teacher_model.split()[:2]) if rec.teacher_model else "–")
        v["reviewer"].setText(rec.reviewer or "–")
        v["reviewed_at"].setText(local_datetime(rec.reviewed_at))
        for edit, value in ((self.location, rec.location), (self.note, rec.note)):
            if not (same and edit.hasFocus()):
                edit.setText(value or "")
                edit.setCursorPosition(0)

    def _commit(self) -> None:
        rec = self.record
        if rec is None:
            return
        location, note = self.location.text().strip(), self.note.text().strip()
        if (location, note) != (rec.location or "", rec.note or ""):
            self.fieldsEdited.emit(rec.id, location, note)

    def _revert(self) -> None:
        rec = self.record
        if rec is not None:
            self.location.setText(rec.location or "")
            self.note.setText(rec.note or "")
        self.doneEditing.emit()
