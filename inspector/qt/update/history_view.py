"""Model history: every version on this laptop (shipped and made by updates) and on the paired
device, with metrics, parent and date; roll back either from here.

The laptop's list comes from :class:`~inspector.update.history.ModelHistory` (the registry in the
per-user data folder, plus the shipped packages), the device's from its ``models`` endpoint,
with what each stored version's signed lineage says of its gate: promoted, or overridden (by
whom, why), or not promoted.
Rolling back the laptop loads the previous version's package (a job) and swaps it into the live
view, then records it; rolling back the device is the agent's own rollback.
"""
from __future__ import annotations

from typing import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QHBoxLayout, QHeaderView, QLabel, QListWidget,
                               QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from inspector.update.history import ModelHistory, ModelVersion, plain_version
from inspector.qt import confirm, jobs, theme
from inspector.qt.device.status_text import gate_text
from inspector.qt.screen_fit import fitted_size
from inspector.qt.update.tasks import default_make_engine

PREFERRED_SIZE = (980, 640)   # fitted to the screen (inspector.qt.screen_fit)
METRICS_WIDTH = 260           # px of the metrics column (elided; the tooltip has every set)
LAPTOP_COLUMNS = ("Version", "Parent", "Date", "Metrics (MCC)", "Gate", "Here")
DEVICE_COLUMNS = ("Version", "Stored", "Signed by", "Metrics (MCC)", "State", "Gate (signed lineage)")


def metrics_text(metrics: dict, *, long: bool = False) -> str:
    """MCC per set (the candidate's side of a gate's table, or a manifest's metrics): the first
    three, short, or (``long``) all, one a line, with the set's size. A set of one class (crack
    only: the port quay walls) has no MCC (it is 0 by definition): its recall is shown, and said.
    A set's short name is its name before " (": when two sets share one, both keep their full name."""
    rows = []
    for name, value in (metrics or {}).items():
        if not isinstance(value, dict):
            continue
        side = value.get("candidate") if isinstance(value.get("candidate"), dict) else value
        mcc, recall, n = side.get("mcc"), side.get("recall"), side.get("n")
        one_class = "only" in name or (side.get("roc_auc", 0) is None and isinstance(recall, (int, float)))
        if one_class and isinstance(recall, (int, float)):
            rows.append((name, f"recall {recall:.3f}", "one class: MCC undefined, recall shown", n))
        elif isinstance(mcc, (int, float)):
            rows.append((name, f"{mcc:.3f}", "MCC", n))
    short = [name.split(" (")[0].replace("_", " ") for name, *_ in rows]
    shown = [s if short.count(s) == 1 else name.replace("_", " ") for s, (name, *_) in zip(short, rows)]
    if long:
        return "\n".join(f"{label}: {value} ({what}{f', {n} patches' if n else ''})"
                         for label, (_, value, what, n) in zip(shown, rows)) or "no metrics"
    return " · ".join(f"{label} {value}" for label, (_, value, *_) in list(zip(shown, rows))[:3]) or "—"


class ModelHistoryDialog(QDialog):
    """``ModelHistoryDialog(history, engine=, swap_engine=, device=, make_engine=)``: see the module doc.
    Signals: ``message(text, level)``, ``rolledBack(where, version)``, ``activated(device, model_id)``,
    ``refreshed()``."""

    message = Signal(str, str)
    rolledBack = Signal(str, str)
    activated = Signal(str, str)      # (device name, model id) made active from the device table
    refreshed = Signal()

    def __init__(self, history: ModelHistory, *, engine: Callable, swap_engine: Callable,
                 device: Callable = lambda: None, make_engine: Callable | None = None,
                 on_device_changed: Callable | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Model history")
        self.history, self.engine, self.swap_engine, self.device = history, engine, swap_engine, device
        self.make_engine = make_engine or default_make_engine
        self.on_device_changed = on_device_changed
        self.versions: list[ModelVersion] = []
        self.device_models = None
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("THIS LAPTOP", objectName="sectionTitle"))
        self.laptop = _table(LAPTOP_COLUMNS)
        lay.addWidget(self.laptop, 3)
        row = QHBoxLayout()
        self.laptop_info = QLabel("", objectName="dim", wordWrap=True)
        self.laptop_rollback = QPushButton("Roll back this laptop", enabled=False)
        self.laptop_rollback.clicked.connect(self.rollback_laptop)
        row.addWidget(self.laptop_info, 1)
        row.addWidget(self.laptop_rollback)
        lay.addLayout(row)
        self.device_title = QLabel("DEVICE", objectName="sectionTitle")
        lay.addWidget(self.device_title)
        self.device_table = _table(DEVICE_COLUMNS)
        lay.addWidget(self.device_table, 2)
        row = QHBoxLayout()
        self.device_info = QLabel("", objectName="dim", wordWrap=True)
        self.device_rollback = QPushButton("Roll back the device", enabled=False)
        self.device_rollback.clicked.connect(self.rollback_device)
        # any version stored on the device can serve again, a newer one after a rollback too
        self.device_activate = QPushButton("Make the selected version active", enabled=False)
        self.device_activate.clicked.connect(self.activate_on_device)
        self.device_table.itemSelectionChanged.connect(self._update_activate)
        self._device_ids: list[str] = []
        row.addWidget(self.device_info, 1)
        row.addWidget(self.device_activate)
        row.addWidget(self.device_rollback)
        lay.addLayout(row)
        lay.addWidget(QLabel("EVENTS", objectName="sectionTitle"))
        self.events = QListWidget()
        self.events.setMaximumHeight(120)
        lay.addWidget(self.events)
        close = QPushButton("Close")
        close.clicked.connect(self.accept)
        close.setDefault(True)                 # Enter closes; a rollback is never one key away
        for b in (self.laptop_rollback, self.device_rollback, self.device_activate):
            b.setAutoDefault(False)
        bottom = QHBoxLayout()
        bottom.addStretch(1)
        bottom.addWidget(close)
        lay.addLayout(bottom)
        self.resize(fitted_size(self, PREFERRED_SIZE))
        self.refresh()

    # ---------------------------------------------------------------- reading

    def refresh(self) -> None:
        jobs.run(_read_laptop, self.history, on_success=self._show_laptop,
                 on_failure=lambda exc: self._say(f"Cannot read the model history: {exc}", "error"))
        dev = self.device()
        if dev is None:
            self.device_title.setText("DEVICE")
            self.device_info.setText("No device connected (Device panel on the Live tab).")
            self.device_table.setRowCount(0)
            self.device_rollback.setEnabled(False)
            return
        pairing = dev[0]
        self.device_title.setText(f"DEVICE {pairing.agent_name.upper()}")
        self.device_info.setText(f"Reading the models on {pairing.agent_name}…")
        self.device_rollback.setEnabled(False)
        jobs.run(_read_device, pairing, on_success=self._show_device,
                 on_failure=lambda exc: self.device_info.setText(f"{pairing.agent_name} did not answer: {exc}"))

    def _show_laptop(self, value) -> None:
        versions, stack, events = value
        self.versions = versions
        m = self.engine().manifest
        running = (m.name, plain_version(m.version))
        self.laptop.setRowCount(len(versions))
        for i, v in enumerate(reversed(versions)):
            gate = {None: "—", True: "passed", False: "failed"}[v.gate_passed]
            if v.override:
                gate = f"failed, pushed by {v.override.get('by') or '?'}: {v.override.get('reason', '')}"
            here = "● live" if (v.name, v.version) == running else ""
            cells = (f"{v.name} {v.version}" + ("  (shipped)" if v.origin == "shipped" else ""), v.parent or "—",
                     v.created[:16].replace("T", " "), metrics_text(v.metrics), gate, here)
            _fill_row(self.laptop, i, cells, bold=bool(here))
            self.laptop.item(i, 3).setToolTip(metrics_text(v.metrics, long=True))
        self.laptop_rollback.setEnabled(len(stack) >= 2)
        self.laptop_info.setText(f"Back to {stack[-2]['name']} {stack[-2]['version']}" if len(stack) >= 2
                                 else "Nothing to roll back to: no earlier version ran on this laptop.")
        self.events.clear()
        for e in reversed(events[-50:]):
            self.events.addItem(f"{e['time'][:19].replace('T', ' ')}   {e['message']}")
        self.refreshed.emit()

    def _show_device(self, listing) -> None:
        self.device_models = listing
        known = {(v.name, v.version): v for v in self.versions}
        infos = sorted(listing.infos(), key=lambda i: i.stored, reverse=True)
        self._device_ids = [info.id for info in infos]
        self.device_table.setRowCount(len(infos))
        for i, info in enumerate(infos):
            state = "● active" if info.id == listing.active else (
                "previous" if listing.previous and info.id == listing.previous[0] else "")
            v = known.get((info.name, plain_version(info.version)))
            cells = (f"{info.name} {info.version}", info.stored[:16].replace("T", " "), info.signed_by or "—",
                     metrics_text(v.metrics) if v is not None else "—", state, gate_text(info))
            _fill_row(self.device_table, i, cells, bold=bool(state.startswith("●")))
            if v is not None:
                self.device_table.item(i, 3).setToolTip(metrics_text(v.metrics, long=True))
            self.device_table.item(i, 5).setToolTip(gate_text(info, long=True))
        self.device_rollback.setEnabled(bool(listing.previous))
        self.device_info.setText(f"Roll back to {listing.previous[0]}" if listing.previous
                                 else "Nothing to roll back to on the device.")
        self._update_activate()
        self.refreshed.emit()

    def selected_device_version(self) -> str | None:
        rows = {i.row() for i in self.device_table.selectedIndexes()}
        return self._device_ids[rows.pop()] if len(rows) == 1 and max(rows) < len(self._device_ids) else None

    def _update_activate(self) -> None:
        chosen, listing = self.selected_device_version(), self.device_models
        self.device_activate.setEnabled(chosen is not None and listing is not None and chosen != listing.active)

    def activate_on_device(self) -> None:
        """Make the selected stored version the device's active model (asked first; the device
        checks it on its first frames and goes back to the one before if it fails)."""
        dev, chosen, listing = self.device(), self.selected_device_version(), self.device_models
        if dev is None or chosen is None or listing is None or chosen == listing.active:
            return
        pairing = dev[0]
        if not confirm.ask(self, "Make a version active", f"Make {chosen} the active model on {pairing.agent_name}, "
                           f"in place of {listing.active}?\n\nThe device checks it on its first frames and "
                           f"goes back to {listing.active} if it fails.", "Make active"):
            return
        self.device_activate.setEnabled(False)
        self.device_info.setText(f"Activating {chosen} on {pairing.agent_name}…")
        jobs.run(_activate_on_device, pairing, chosen, self.history,
                 on_success=lambda listing: self._activated(pairing.agent_name, listing.active),
                 on_failure=lambda exc: self._failed(f"Activating {chosen} on {pairing.agent_name} failed: {exc}",
                                                     self.device_activate))

    def _activated(self, where: str, model_id: str) -> None:
        self._say(f"{model_id} is now active on {where}", "info")
        if self.on_device_changed is not None:
            self.on_device_changed()
        self.activated.emit(where, model_id)
        self.refresh()

    # ---------------------------------------------------------------- rolling back

    def rollback_laptop(self) -> None:
        stack = self.history.laptop_stack()
        if len(stack) < 2:
            return
        target = stack[-2]
        if not confirm.ask(self, "Roll back this laptop", f"Run {target['name']} {target['version']} on this laptop "
                           f"again, in place of {stack[-1]['name']} {stack[-1]['version']}?", "Roll back"):
            return
        self.laptop_rollback.setEnabled(False)
        self.laptop_info.setText(f"Loading {target['name']} {target['version']}…")

        def loaded(engine):
            self.swap_engine(engine)
            jobs.run(self.history.laptop_rollback, on_success=lambda _: self._rolled("this laptop", target),
                     on_failure=lambda exc: self._say(f"Rolled back, but not recorded: {exc}", "warning"))

        jobs.run(self.make_engine, target["package"], on_success=loaded,
                 on_failure=lambda exc: self._failed(f"Cannot load {target['package']}: {exc}", self.laptop_rollback))

    def rollback_device(self) -> None:
        dev = self.device()
        if dev is None:
            return
        pairing = dev[0]
        listing = self.device_models
        back_to = f" to {listing.previous[0]}" if listing is not None and listing.previous else ""
        if not confirm.ask(self, "Roll back the device", f"Roll {pairing.agent_name} back{back_to}?\n\nThe model "
                           f"active now stays stored on the device and can be made active again here.", "Roll back"):
            return
        self.device_rollback.setEnabled(False)
        self.device_info.setText(f"Rolling {pairing.agent_name} back…")
        jobs.run(_rollback_device, pairing, self.history,
                 on_success=lambda listing: self._rolled(pairing.agent_name, {"version": listing.active, "name": ""}),
                 on_failure=lambda exc: self._failed(f"Rolling {pairing.agent_name} back failed: {exc}",
                                                     self.device_rollback))

    def _rolled(self, where: str, target: dict) -> None:
        text = f"{where} rolled back to {target.get('name', '')} {target.get('version', '')}".replace("  ", " ")
        self._say(text, "info")
        if where != "this laptop" and self.on_device_changed is not None:
            self.on_device_changed()
        self.rolledBack.emit(where, str(target.get("version")))
        self.refresh()

    def _failed(self, text: str, button: QPushButton) -> None:
        button.setEnabled(True)
        self._say(text, "error")

    def _say(self, text: str, level: str) -> None:
        self.message.emit(text, level)


def _table(columns) -> QTableWidget:
    t = QTableWidget(0, len(columns))
    t.setHorizontalHeaderLabels(list(columns))
    t.verticalHeader().hide()
    t.setEditTriggers(QAbstractItemView.NoEditTriggers)
    t.setSelectionBehavior(QAbstractItemView.SelectRows)
    t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
    t.horizontalHeader().setStretchLastSection(True)
    # the metrics are the long column: a fixed width, elided, the whole of it in the tooltip, so
    # that the columns after it stay on screen (they were cut off on a 1366-px laptop)
    metrics = list(columns).index("Metrics (MCC)")
    t.horizontalHeader().setSectionResizeMode(metrics, QHeaderView.Interactive)
    t.setColumnWidth(metrics, METRICS_WIDTH)
    t.setTextElideMode(Qt.ElideRight)
    t.setWordWrap(False)
    t.setStyleSheet(f"QTableWidget {{ background: #121416; gridline-color: {theme.PANEL_EDGE}; }}"
                    f"QHeaderView::section {{ background: {theme.PANEL}; color: {theme.TEXT_DIM}; border: 0; "
                    f"padding: 4px; }}")
    return t


def _fill_row(table: QTableWidget, row: int, cells, *, bold: bool = False) -> None:
    for j, text in enumerate(cells):
        item = QTableWidgetItem(str(text))
        item.setToolTip(str(text))
        if bold:
            f = item.font()
            f.setBold(True)
            item.setFont(f)
        table.setItem(row, j, item)


# ---------------------------------------------------------------------------- jobs

def _read_laptop(history: ModelHistory):
    return history.versions(), history.laptop_stack(), history.events()


def _read_device(pairing):
    from inspector.link.client import DeviceClient

    return DeviceClient.from_pairing(pairing).models()


def _activate_on_device(pairing, model_id: str, history: ModelHistory):
    from inspector.link.client import DeviceClient

    listing = DeviceClient.from_pairing(pairing).activate(model_id)
    history.record_event("device", f"{model_id} made active on {pairing.agent_name}",
                         device=pairing.agent_name, version=listing.active)
    return listing


def _rollback_device(pairing, history: ModelHistory):
    from inspector.link.client import DeviceClient

    listing = DeviceClient.from_pairing(pairing).rollback()
    history.record_event("device", f"{pairing.agent_name} rolled back to {listing.active}",
                         device=pairing.agent_name, version=listing.active)
    return listing
