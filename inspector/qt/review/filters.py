"""The review filter bar: which flags the grid lists, in which order, how many; Export…, Report…,
Update model… and Models… (the model history).

Two rows over the grid. Every choice becomes a :class:`~inspector.store.query.FlagFilter`, a
sort key of :data:`~inspector.store.query.SORTS` and a direction, emitted as
``filterChanged(flt, sort, descending)`` a moment after the last change (typing a probability
does not query the store per keystroke). Dates are local calendar days: "from" is that day's
local midnight, "to" includes the whole day. The combos of sources, locations and model
versions hold what the store has (:meth:`set_choices`, from ``store.distinct``).
"""
from __future__ import annotations

import datetime as _dt

from PySide6.QtCore import QDate, Qt, QTimer, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDateEdit, QDoubleSpinBox, QFrame, QHBoxLayout, QLabel,
                               QPushButton, QWidget)

from inspector.store.query import FlagFilter
from inspector.qt.flow import FlowLayout

SORT_CHOICES = (("need", "Most in need"), ("time", "Time"), ("probability", "Probability"),
                ("uncertainty", "Uncertainty"), ("disagreement", "Disagreement"))
STATES = (("all", "All flags"), ("unreviewed", "Unreviewed"), ("reviewed", "Reviewed"),
          ("needs_tiles", "Needs tiles"),   # crack frames without a crack tile marked
          ("contradicted", "Teachers disagree with the label"))
LABELS = ((None, "Any label"), ("crack", "Crack"), ("no_crack", "No crack"), ("unsure", "Unsure"))
REASONS = ((None, "Any reason"), ("manual", "Manual"), ("crack", "Auto: crack"), ("uncertain", "Auto: uncertain"))
NO_DATE = QDate(2000, 1, 1)
DEBOUNCE_MS = 150


def local_day_start(day: _dt.date) -> str:
    """ISO time of local midnight starting ``day`` (with its UTC offset)."""
    return _dt.datetime(day.year, day.month, day.day).astimezone().isoformat(timespec="seconds")


def counts_text(counts) -> str:
    def n(k, one, many):
        return f"{k} {one if k == 1 else many}"
    parts = [n(counts.total, "flag", "flags"), f"{counts.unreviewed} unreviewed"]
    if counts.needs_tiles:
        parts.append(f"{counts.needs_tiles} need{'s' if counts.needs_tiles == 1 else ''} tiles")
    if counts.contradicted:
        parts.append(f"{counts.contradicted} label{'' if counts.contradicted == 1 else 's'} the teachers contradict")
    return ", ".join(parts + [n(counts.disagreements, "disagreement", "disagreements")])


def _combo(items, tip: str) -> QComboBox:
    box = QComboBox(toolTip=tip)
    for value, text in items:
        box.addItem(text, value)
    box.setFocusPolicy(Qt.ClickFocus)
    return box


def _date_edit(tip: str) -> QDateEdit:
    d = QDateEdit(calendarPopup=True, toolTip=tip)
    d.setDisplayFormat("yyyy-MM-dd")
    d.setMinimumDate(NO_DATE)
    d.setSpecialValueText("any")
    d.setDate(NO_DATE)
    d.setFocusPolicy(Qt.ClickFocus)
    return d


def _prob(value: float, tip: str) -> QDoubleSpinBox:
    s = QDoubleSpinBox(toolTip=tip, decimals=2, minimum=0.0, maximum=1.0, singleStep=0.05, value=value)
    s.setFocusPolicy(Qt.ClickFocus)
    return s


def _group(widgets) -> QWidget:
    """Widgets that stay together on one row of the filter bar."""
    box = QWidget()
    row = QHBoxLayout(box)
    row.setContentsMargins(0, 0, 0, 0)
    row.setSpacing(6)
    for w in widgets:
        row.addWidget(w)
    return box


class ReviewFilterBar(QFrame):
    filterChanged = Signal(object, str, bool)     # FlagFilter, sort, descending
    choiceMade = Signal()                         # a combo chosen, a date or p entered: keys back to the grid
    exportRequested = Signal(bool)                # include unreviewed
    reportRequested = Signal()
    updateRequested = Signal()                    # Update model…: fine-tune on the reviewed flags
    historyRequested = Signal()                   # Models…: the model history

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, objectName="panel")
        self._timer = QTimer(self, singleShot=True, interval=DEBOUNCE_MS, timeout=self.apply)
        self.state = _combo(STATES, "Review state")
        self.label = _combo(LABELS, "The reviewed label of the frame")
        self.reason = _combo(REASONS, "Why the frame was flagged")
        self.source = _combo(((None, "Any source"),), "Camera, file or device")
        self.location = _combo(((None, "Any location"),), "Location typed when flagging or reviewing")
        self.version = _combo(((None, "Any model"),), "Model version that flagged the frame")
        self.since = _date_edit("First day (local time)")
        self.until = _date_edit("Last day, included (local time)")
        self.p_min = _prob(0.0, "Lowest crack probability (the frame's highest tile)")
        self.p_max = _prob(1.0, "Highest crack probability (the frame's highest tile)")
        self.sort = _combo(SORT_CHOICES, "Order: most in need = teachers' disagreement, then the student's "
                                         "uncertainty")
        self.descending = QPushButton("↓", checkable=True, checked=True, toolTip="Descending / ascending")
        self.descending.setFixedWidth(36)
        self.descending.setFocusPolicy(Qt.NoFocus)
        self.descending.toggled.connect(lambda on: self.descending.setText("↓" if on else "↑"))
        self.clear = QPushButton("Clear", toolTip="Show every flag again")
        self.clear.setFocusPolicy(Qt.NoFocus)
        self.clear.clicked.connect(self.reset)
        self.counts = QLabel("", objectName="value")
        self.include_unreviewed = QCheckBox("with unreviewed", toolTip="Export unreviewed and unsure frames too, "
                                            "into unlabelled/ (for distillation through the teachers)")
        self.include_unreviewed.setFocusPolicy(Qt.NoFocus)
        self.export = QPushButton("Export…", toolTip="Reviewed flags as a dataset folder distill reads")
        self.report = QPushButton("Report…", toolTip="Inspection report (PDF or HTML) of this location and dates")
        self.update_model = QPushButton("Update model…", objectName="primary",
                                        toolTip="Fine-tune the model on the reviewed flags, check it against the "
                                                "current one, and put it live")
        self.models = QPushButton("Models…", toolTip="Model history on this laptop and the device; roll back")
        for b in (self.export, self.report, self.update_model, self.models):
            b.setFocusPolicy(Qt.NoFocus)
        self.export.clicked.connect(lambda: self.exportRequested.emit(self.include_unreviewed.isChecked()))
        self.report.clicked.connect(self.reportRequested)
        self.update_model.clicked.connect(self.updateRequested)
        self.models.clicked.connect(self.historyRequested)
        self._layout()
        for box in (self.state, self.label, self.reason, self.source, self.location, self.version, self.sort):
            box.currentIndexChanged.connect(self.changed)
            box.activated.connect(self.choiceMade)
        for d in (self.since, self.until):
            d.dateChanged.connect(self.changed)
        for s in (self.p_min, self.p_max):
            s.valueChanged.connect(self.changed)
        for edit in (self.since, self.until, self.p_min, self.p_max):
            edit.editingFinished.connect(self.choiceMade)
        self.descending.toggled.connect(self.changed)

    def _layout(self) -> None:
        # groups that wrap onto more rows on a narrow screen (a 1280-px laptop) instead of
        # widening the window
        lay = FlowLayout(self, spacing=10, row_spacing=5)
        lay.setContentsMargins(10, 6, 10, 6)
        for w in (self.state, self.label, self.reason, self.source, self.location, self.version):
            w.setMinimumWidth(100)
        groups = ((self.state, self.label, self.reason), (self.source, self.location, self.version),
                  (self.clear, self.counts),
                  (QLabel("From", objectName="dim"), self.since, QLabel("to", objectName="dim"), self.until),
                  (QLabel("p", objectName="dim"), self.p_min, QLabel("–", objectName="dim"), self.p_max),
                  (QLabel("Sort", objectName="dim"), self.sort, self.descending),
                  (self.include_unreviewed, self.export, self.report, self.update_model, self.models))
        for members in groups:
            lay.addWidget(_group(members))

    # ---------------------------------------------------------------- values

    def flt(self) -> FlagFilter:
        def date(edit):
            d = edit.date()
            return None if d == NO_DATE else _dt.date(d.year(), d.month(), d.day())
        since, until = date(self.since), date(self.until)
        p_min, p_max = self.p_min.value(), self.p_max.value()
        return FlagFilter(state=self.state.currentData(), label=self.label.currentData(),
                          reason=self.reason.currentData(), source=self.source.currentData(),
                          location=self.location.currentData(), model_version=self.version.currentData(),
                          since=None if since is None else local_day_start(since),
                          until=None if until is None else local_day_start(until + _dt.timedelta(days=1)),
                          prob_min=p_min if p_min > 0 else None, prob_max=p_max if p_max < 1 else None)

    def sort_key(self) -> str:
        return self.sort.currentData()

    def is_descending(self) -> bool:
        return self.descending.isChecked()

    def set_choices(self, sources: list[str], locations: list[str], versions: list[str]) -> None:
        """Fill the source / location / version combos (the current choice stays if still there)."""
        for box, values in ((self.source, sources), (self.location, locations), (self.version, versions)):
            current = box.currentData()
            if [box.itemData(i) for i in range(1, box.count())] == list(values):
                continue
            box.blockSignals(True)
            while box.count() > 1:
                box.removeItem(1)
            for v in values:
                box.addItem(v, v)
            box.setCurrentIndex(max(0, box.findData(current)) if current is not None else 0)
            box.blockSignals(False)
            if box.currentData() != current:   # the value vanished (e.g. its flags were deleted)
                self.changed()

    def set_counts(self, counts) -> None:
        self.counts.setText(counts_text(counts))

    def select(self, **choices) -> None:
        """Set combos by value, e.g. ``select(state="unreviewed", location="pier 3")`` (tests, scripts)."""
        boxes = {"state": self.state, "label": self.label, "reason": self.reason, "source": self.source,
                 "location": self.location, "model_version": self.version, "sort": self.sort}
        for name, value in choices.items():
            box = boxes[name]
            index = box.findData(value)
            if index < 0:
                raise ValueError(f"{name}: no choice {value!r}")
            box.setCurrentIndex(index)

    def reset(self) -> None:
        for box in (self.state, self.label, self.reason, self.source, self.location, self.version):
            box.setCurrentIndex(0)
        self.since.setDate(NO_DATE)
        self.until.setDate(NO_DATE)
        self.p_min.setValue(0.0)
        self.p_max.setValue(1.0)

    # ---------------------------------------------------------------- emitting

    def changed(self, *_) -> None:
        self._timer.start()

    def apply(self) -> None:
        """Emit the filter now (the debounce timer calls this)."""
        self._timer.stop()
        self.filterChanged.emit(self.flt(), self.sort_key(), self.is_descending())
