"""The device panel: find, pair with and connect to a device agent; its status; its model actions.

Every network call runs on the panel's own :class:`~inspector.qt.jobs.JobRunner` (two threads: a
status poll runs beside a push that can take minutes), apart from the window's shared one, so a
slow or dead device never holds the threads the store's work needs; results and failures come back
on the GUI thread, so the window never freezes. Failures go to the window's error banner
(``message(text, level)``), never a modal dialog. The panel does not own the live pipeline: it asks
the window to view a device (``connectRequested(Pairing)``) or to go back to the local source
(``disconnectRequested``); the window tells it which feed is on screen (:meth:`DevicePanel.set_feed`).

Beside it: the pairing dialog (:mod:`.pair_dialog`), what a status says as text (:mod:`.status_text`)
and **Push model…** / **Roll back** (:mod:`.model_actions`).
"""
from __future__ import annotations

import logging
from typing import Callable

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QFrame, QHBoxLayout, QLabel, QLineEdit,
                               QProgressBar, QPushButton, QVBoxLayout, QWidget)

from inspector.link import protocol as P
from inspector.link.client import DeviceClient, Pairing
from inspector.link.connection import DeviceError, format_address, parse_address
from inspector.link.pairing import PairingStore, client_name
from inspector.qt.device.model_actions import ModelActions
from inspector.qt.device.pair_dialog import PairDialog
from inspector.qt.device.status_text import describe, status_fields
from inspector.qt.jobs import Job, JobRunner
from inspector.update.history import ModelHistory

log = logging.getLogger(__name__)

DISCOVERY_TIMEOUT_S = 3.0
STATUS_POLL_MS = 2000
NETWORK_THREADS = 2          # a status poll must not wait for a push (minutes, with a TensorRT build)


def _set_primary(button: QPushButton, on: bool) -> None:
    """The highlighted (primary) style of the theme, on or off."""
    if (button.objectName() == "primary") != on:
        button.setObjectName("primary" if on else "")
        button.style().unpolish(button)
        button.style().polish(button)


class DevicePanel(QFrame):
    """Signals: ``connectRequested(Pairing)``, ``disconnectRequested()``, ``paired(Pairing)``,
    ``message(text, level)`` (level "info" | "warning" | "error"), ``statusShown(Status)``,
    ``demoRequested()`` (start or stop the demo device; the window says which with :meth:`set_demo_state`)."""

    connectRequested = Signal(object)
    disconnectRequested = Signal()
    demoRequested = Signal()
    paired = Signal(object)
    message = Signal(str, str)
    statusShown = Signal(object)

    def __init__(self, pairings: PairingStore, parent: QWidget | None = None, *,
                 browse: Callable[[float], list] | None = None,
                 history: ModelHistory | Callable[[], ModelHistory] | None = None):
        super().__init__(parent, objectName="panel")
        self.pairings = pairings
        self.jobs = JobRunner(self, threads=NETWORK_THREADS)
        self.models = ModelActions(self, history)  # Push model… and Roll back
        self._browse = browse
        self.feed = None                           # the DeviceFeed on screen, set by the window
        self.connected: Pairing | None = None
        self.pair_dialog: PairDialog | None = None
        self.discovered: list[tuple[str, str, int, dict]] = []
        self._polling = False
        self._busy: set[str] = set()               # jobs in flight: "pair", "model" (a push or a roll-back)
        self._poll = QTimer(self, interval=STATUS_POLL_MS, timeout=self.refresh_status)
        self._build()
        self.reload_devices()

    # ---------------------------------------------------------------- layout

    def _build(self) -> None:
        lay = QVBoxLayout(self)
        lay.setContentsMargins(12, 10, 12, 12)
        lay.setSpacing(8)
        lay.addWidget(QLabel("DEVICE", objectName="sectionTitle"))

        row = QHBoxLayout()
        self.devices = QComboBox()
        self.devices.setFocusPolicy(Qt.ClickFocus)
        self.devices.setPlaceholderText("no device found")
        self.find = QPushButton("↻", toolTip="Look for devices on the network (mDNS)")
        self.find.setFixedWidth(36)
        row.addWidget(self.devices, 1)
        row.addWidget(self.find)
        lay.addLayout(row)

        row = QHBoxLayout()
        self.address = QLineEdit(placeholderText="host:port", clearButtonEnabled=True)
        self.insecure = QCheckBox("HTTP", toolTip="The agent runs with --insecure-http (tests only: "
                                                  "not encrypted, identity not checked)")
        row.addWidget(self.address, 1)
        row.addWidget(self.insecure)
        lay.addLayout(row)

        row = QHBoxLayout()
        self.pair_button = QPushButton("Pair…")
        self.connect_button = QPushButton("Connect")
        self.disconnect_button = QPushButton("Disconnect")
        for b in (self.pair_button, self.connect_button, self.disconnect_button):
            row.addWidget(b, 1)
        self.forget_button = QPushButton("Forget", toolTip="Forget device: unpair this computer on the device "
                                         "(its token stops working there) and delete the saved pairing here")
        row.addWidget(self.forget_button)
        lay.addLayout(row)

        grid = QFormLayout()
        grid.setHorizontalSpacing(10)
        grid.setVerticalSpacing(2)
        self.fields: dict[str, QLabel] = {}
        for key, caption in (("device", "Device"), ("camera", "Camera"), ("model", "Model"),
                             ("provider", "Provider"), ("fps", "FPS"), ("link", "Link latency")):
            value = QLabel("—", objectName="value", wordWrap=True)
            value.setTextInteractionFlags(Qt.TextSelectableByMouse)
            self.fields[key] = value
            grid.addRow(QLabel(caption, objectName="dim"), value)
        lay.addLayout(grid)

        row = QHBoxLayout()
        self.push_button = QPushButton("Push model…")
        self.rollback_button = QPushButton("Roll back")
        row.addWidget(self.push_button, 1)
        row.addWidget(self.rollback_button, 1)
        lay.addLayout(row)
        self.progress = QProgressBar(textVisible=True)
        self.progress.hide()
        lay.addWidget(self.progress)
        self.info = QLabel(objectName="dim", wordWrap=True)
        lay.addWidget(self.info)
        self.demo_button = QPushButton("▶ Start demo device",
                                       toolTip="No device at hand? Run a device agent on this laptop (loopback) on "
                                               "the sample video with the shipped model, pair with it and view it")
        lay.addWidget(self.demo_button)

        for b in (self.demo_button, self.find, self.pair_button, self.connect_button, self.disconnect_button,
                  self.push_button, self.rollback_button):
            b.setFocusPolicy(Qt.NoFocus)
        self.find.clicked.connect(self.find_devices)
        self.devices.activated.connect(self._on_device_chosen)
        self.pair_button.clicked.connect(self.start_pairing)
        self.connect_button.clicked.connect(self.connect_selected)
        self.address.returnPressed.connect(self.connect_selected)
        self.address.textChanged.connect(lambda _text: self._update_buttons())
        self.address.textEdited.connect(self._select_listed)
        self.disconnect_button.clicked.connect(self.disconnectRequested)
        self.push_button.clicked.connect(self.models.choose_package)
        self.rollback_button.clicked.connect(self.models.rollback)
        self.demo_button.clicked.connect(self.demoRequested)
        self.forget_button.clicked.connect(self.forget_selected)
        self._update_buttons()

    def set_demo_state(self, state: str) -> None:
        """The demo device is "off", "starting", "on" or "stopping": the button says what it will do."""
        text = {"off": "▶ Start demo device", "starting": "Starting the demo device…", "on": "■ Stop demo device",
                "stopping": "Stopping the demo device…"}.get(state, state)
        self.demo_button.setText(text)
        self.demo_button.setEnabled(state in ("off", "on"))

    def _update_buttons(self) -> None:
        """Each button enabled only when its action can run now; the next step (Pair… for a new
        address, Connect for a paired one not on screen) is the highlighted one."""
        on = self.connected is not None
        self.disconnect_button.setEnabled(on)
        self.push_button.setEnabled(on and "model" not in self._busy)
        self.rollback_button.setEnabled(on and "model" not in self._busy)
        addr = self._typed_address()
        paired = addr is not None and self._paired_with(*addr)
        on_screen = on and addr == (self.connected.host, self.connected.port)
        self.pair_button.setEnabled(addr is not None and "pair" not in self._busy)
        self.connect_button.setEnabled(paired and not on_screen)
        self.connect_button.setToolTip("" if paired or addr is None else "Not paired with this address: Pair… first")
        _set_primary(self.connect_button, self.connect_button.isEnabled())
        _set_primary(self.pair_button, self.pair_button.isEnabled() and not paired)

    def _typed_address(self) -> tuple[str, int] | None:
        try:
            return parse_address(self.address.text()) if self.address.text().strip() else None
        except ValueError:
            return None

    def _paired_with(self, host: str, port: int) -> bool:
        """Is there a saved pairing for this address (or for the listed agent said to live there)?"""
        try:
            if self.pairings.find(host, port) is not None:
                return True
            data = self.devices.currentData()
            listed = (isinstance(data, dict) and bool(data.get("agent_id"))
                      and (data["host"], data["port"]) == (host, port))
            return listed and self.pairings.get(data["agent_id"]) is not None
        except DeviceError:
            return False

    def begin(self, job: str) -> None:
        """``job`` ("pair" or "model") is in flight: its buttons are disabled until :meth:`end`."""
        self._busy.add(job)
        self._update_buttons()

    def end(self, job: str) -> None:
        self._busy.discard(job)
        self._update_buttons()

    def in_progress(self, job: str) -> bool:
        return job in self._busy

    # ---------------------------------------------------------------- devices: saved + discovered

    def reload_devices(self) -> None:
        """Fill the list with the saved pairings and the devices found on the network."""
        try:
            saved = self.pairings.all()
        except DeviceError as exc:
            saved = []
            self.message.emit(str(exc), "error")
        current = self.address.text()
        self.devices.clear()
        seen = set()
        for p in saved:
            self.devices.addItem(f"✓ {p.agent_name}  ({p.address})", {"host": p.host, "port": p.port, "tls": p.tls,
                                                                        "agent_id": p.agent_id})
            seen.add(p.agent_id)
        for name, host, port, props in self.discovered:
            agent_id = str(props.get("agent_id", "")) if isinstance(props, dict) else ""
            if agent_id and agent_id in seen:
                continue
            tls = str(props.get("tls", "1")) != "0" if isinstance(props, dict) else True
            self.devices.addItem(f"{name}  ({format_address(host, port)})",
                                 {"host": host, "port": port, "tls": tls, "agent_id": agent_id,
                                  "cert_prefix": str(props.get("cert_sha256", "")) if isinstance(props, dict) else ""})
        # a listed device is always the selected one: the one on screen, else the typed address's,
        # else the first (a saved pairing first); "no device found" only when the list is empty
        index = self._listed_index(self.connected.address if self.connected is not None else current)
        if index < 0 and not current:
            index = 0 if self.devices.count() else -1
        self.devices.setCurrentIndex(index)
        self.devices.setPlaceholderText("another address: see below" if self.devices.count() else "no device found")
        if current:
            self.address.setText(current)
        elif index >= 0:
            self._on_device_chosen(index)
        self._update_buttons()

    def _listed_index(self, address: str) -> int:
        """The row of the list for ``address`` (host:port), or -1."""
        try:
            wanted = parse_address(address) if address.strip() else None
        except ValueError:
            wanted = None
        for i in range(self.devices.count() if wanted is not None else 0):
            data = self.devices.itemData(i)
            if isinstance(data, dict) and (data["host"], data["port"]) == wanted:
                return i
        return -1

    def _select_listed(self, text: str) -> None:
        """Typing an address selects its device in the list (none: another address)."""
        self.devices.setCurrentIndex(self._listed_index(text))
        self._update_buttons()

    def find_devices(self) -> None:
        """Browse mDNS on a helper thread (a few seconds); say so if it cannot."""
        self.find.setEnabled(False)
        self.info.setText("Looking for devices on the network…")
        browse = self._browse

        def look():
            fn = browse
            if fn is None:
                from inspector.agent.discovery import browse as fn
            return list(fn(DISCOVERY_TIMEOUT_S))

        # detached: a window closed meanwhile does not wait for the browse; failing is a normal, explained answer
        self.jobs.run(look, on_success=lambda found: self._set_discovered(found, None),
                      on_failure=lambda exc: self._set_discovered([], f"{type(exc).__name__}: {exc}"), detached=True)

    def _set_discovered(self, found, error: str | None) -> None:
        """``found``: (name, host, port, properties) per device; ``error``: why looking failed."""
        self.find.setEnabled(True)
        if error is not None:
            self.info.setText(f"Looking for devices failed ({error}); enter host:port.")
        else:
            self.discovered = [(str(n), str(h), int(p), dict(props or {})) for n, h, p, props in found]
            if self.connected is not None:          # a browse that ends after connecting: the link is the news
                self.info.setText(f"Connected to {self.connected.agent_name} at {self.connected.address}; "
                                  f"{len(self.discovered)} device(s) found on the network.")
            else:
                self.info.setText(f"{len(self.discovered)} device(s) found on the network" if self.discovered
                                  else "No device found on the network; enter host:port.")
        self.reload_devices()

    def _on_device_chosen(self, index: int) -> None:
        data = self.devices.itemData(index)
        if isinstance(data, dict):
            self.address.setText(format_address(data["host"], data["port"]))
            self.insecure.setChecked(not data.get("tls", True))
        self._update_buttons()

    def _selected(self) -> tuple[str, int] | None:
        try:
            return parse_address(self.address.text())
        except ValueError as exc:
            self.message.emit(str(exc), "warning")
            return None

    def pairing_for(self, host: str, port: int) -> Pairing | None:
        """The saved pairing for this address, or for the agent the list says lives there (its
        address may have changed since pairing: the saved entry is then updated)."""
        p = self.pairings.find(host, port)
        if p is not None:
            return p
        data = self.devices.currentData()
        agent_id = data.get("agent_id") if isinstance(data, dict) else None
        if agent_id and (data["host"], data["port"]) == (host, port):
            old = self.pairings.get(agent_id)
            if old is not None:
                p = Pairing(**{**old.to_dict(), "host": host, "port": port})
                self.pairings.save(p)
                return p
        return None

    # ---------------------------------------------------------------- pairing

    def start_pairing(self) -> None:
        """Read the device's certificate fingerprint, then ask for the code (PairDialog)."""
        addr = self._selected()
        if addr is None:
            return
        host, port = addr
        tls = not self.insecure.isChecked()
        self.info.setText(f"Contacting {format_address(host, port)}…")
        self.begin("pair")

        def done(fingerprint):
            self.end("pair")
            self.info.setText("")
            self._ask_code(host, port, tls, fingerprint)

        self.run_job(lambda: DeviceClient(host, port, tls=tls).fetch_fingerprint(), on_success=done,
                     on_failure=self.failure(f"Cannot pair with {format_address(host, port)}", "pair"))

    def _ask_code(self, host: str, port: int, tls: bool, fingerprint: str | None) -> None:
        data = self.devices.currentData()
        advertised = (data.get("cert_prefix") or None if isinstance(data, dict)
                      and (data.get("host"), data.get("port")) == (host, port) else None)
        dialog = self.pair_dialog = PairDialog(format_address(host, port), fingerprint, self, advertised=advertised)
        dialog.accepted.connect(lambda: self.pair(host, port, tls, fingerprint, dialog.code.text()))
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()                     # window-modal, but the event loop runs on

    def pair(self, host: str, port: int, tls: bool, fingerprint: str | None, code: str) -> None:
        """Pair pinned to ``fingerprint`` with ``code``; saved and ``paired`` emitted on success."""
        self.info.setText(f"Pairing with {format_address(host, port)}…")
        self.begin("pair")

        def job():
            key = self.pairings.signing_key()
            pairing = DeviceClient(host, port, tls=tls, cert_sha256=fingerprint).pair(code, client_name(), key)
            self.pairings.save(pairing)
            return pairing

        def done(pairing):
            self._busy.discard("pair")
            self.info.setText(f"Paired with {pairing.agent_name}.")
            self.address.setText(pairing.address)
            self.reload_devices()                     # selects it: the address is its own
            self.message.emit(f"Paired with {pairing.agent_name} ({pairing.address}). Connect to view it.", "info")
            self.paired.emit(pairing)

        self.run_job(job, on_success=done,
                     on_failure=self.failure(f"Pairing with {format_address(host, port)} failed", "pair"))

    def forget_selected(self) -> None:
        """Forget device: unpaired on the device (its token dies there), then forgotten here. A
        device that cannot be reached is forgotten here and the message says how to revoke it."""
        addr = self._selected()
        pairing = self.pairings.find(*addr) if addr is not None else None
        if pairing is None:
            self.message.emit("Not paired with this address: nothing to forget.", "warning")
            return
        if self.connected is not None and self.connected.agent_id == pairing.agent_id:
            self.disconnectRequested.emit()

        def done(note):
            self.reload_devices()
            if note:
                self.message.emit(f"Forgot {pairing.agent_name} here, but: {note}", "warning")
            else:
                self.message.emit(f"Forgot {pairing.agent_name}; it no longer accepts this computer.", "info")

        self.run_job(lambda: self.pairings.unpair(pairing), on_success=done,
                     on_failure=self.failure(f"Forgetting {pairing.agent_name} failed"))

    # ---------------------------------------------------------------- connection

    def connect_selected(self) -> None:
        addr = self._selected()
        if addr is None:
            return
        pairing = self.pairing_for(*addr)
        if pairing is None:
            self.message.emit(f"Not paired with {format_address(*addr)} yet: press Pair… first.", "warning")
            return
        self.connectRequested.emit(pairing)

    def set_feed(self, feed, pairing: Pairing | None = None) -> None:
        """The window reports which device is on screen (None: a local source)."""
        self.feed = feed
        self.connected = pairing if feed is not None else None
        self._update_buttons()
        if feed is None:
            self._poll.stop()
            for v in self.fields.values():
                v.setText("—")
            self.info.setText("Not connected: the view shows this laptop's source.")
            return
        self.info.setText(f"Connected to {pairing.agent_name} at {pairing.address}.")
        for v in self.fields.values():                # until its first status answers
            v.setText("waiting for the device…")
        self.address.setText(pairing.address)
        for i in range(self.devices.count()):         # the list shows which saved device is on screen
            if (self.devices.itemData(i) or {}).get("agent_id") == pairing.agent_id:
                self.devices.setCurrentIndex(i)
        self.fields["device"].setText(f"{pairing.agent_name} ({pairing.address})")
        self._poll.start()
        self.refresh_status()

    def refresh_status(self) -> None:
        """Read the connected device's status (one request at a time) and show it."""
        pairing = self.connected
        if pairing is None or self._polling:
            return
        self._polling = True

        def done(status):
            self._polling = False
            if self.connected is pairing:
                self.show_status(status)

        def failed(exc):
            self._polling = False
            if self.connected is pairing:
                self.fields["fps"].setText("— (no answer)")
                self.fields["link"].setText(describe(exc))

        self.run_job(DeviceClient.from_pairing(pairing).status, on_success=done, on_failure=failed)

    def show_status(self, status: P.Status) -> None:
        address = self.connected.address if self.connected is not None else None
        for key, (text, tooltip) in status_fields(status, address, self.feed).items():
            self.fields[key].setText(text)
            if tooltip is not None:
                self.fields[key].setToolTip(tooltip)
        self.statusShown.emit(status)

    # ---------------------------------------------------------------- models (see model_actions)

    def push(self, path: str, activate: bool = True, *, override: tuple[str, str] | None = None) -> None:
        """:meth:`ModelActions.push <inspector.qt.device.model_actions.ModelActions.push>`."""
        self.models.push(path, activate, override=override)

    @property
    def override_dialog(self):
        """The expert override dialog last opened for a refused package (None before)."""
        return self.models.override_dialog

    # ---------------------------------------------------------------- helpers

    def run_job(self, fn: Callable, *, on_success: Callable, on_failure: Callable,
                on_progress: Callable | None = None) -> Job:
        """``fn`` on the panel's network runner; a failure is logged, then given to ``on_failure``."""
        def failed(exc: BaseException) -> None:
            log.info("device job failed: %s", describe(exc))
            on_failure(exc)
        return self.jobs.run(fn, on_success=on_success, on_failure=failed, on_progress=on_progress)

    def failure(self, what: str, job: str | None = None) -> Callable[[BaseException], None]:
        """A failure handler: ends ``job``, clears the info line, says "what: why" in the banner."""
        def report(exc: BaseException) -> None:
            if job is not None:
                self.end(job)
            self.info.setText("")
            self.message.emit(f"{what}: {describe(exc)}", "error")
        return report

    def shutdown(self, msecs: int = 5000) -> None:
        """Stop polling, wait (briefly) for jobs in flight, drop their outcomes (window closing)."""
        self._poll.stop()
        self.jobs.close(msecs)
