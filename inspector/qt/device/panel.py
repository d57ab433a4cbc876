"""The device panel: find, pair with and connect to a device agent; its status; push / roll back models.

Every network call runs on :class:`DeviceJobs` (a small QThreadPool); results and failures come
back on the GUI thread as callbacks, so the window never freezes on a slow or dead device.
Failures go to the window's error banner (``message(text, level)``), never a modal dialog.
The panel does not own the live pipeline: it asks the window to view a device
(``connectRequested(Pairing)``) or to go back to the local source (``disconnectRequested``); the
window tells it which feed is on screen (:meth:`DevicePanel.set_feed`).

**Push model…** is the same path to the device as an update's **Push anyway…**: a package whose
lineage says the gate refused it (``extra.lineage.promoted`` false) is pushed only after the
expert override (:class:`~inspector.qt.device.override_dialog.ExpertOverrideDialog`: reason, who,
confirmation), which :func:`inspector.update.history.override_package` writes into the package's
lineage, so into the manifest the push signs, and into the model history. A promoted package,
or one without lineage (the shipped one), is pushed as it is.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from PySide6.QtCore import QObject, Qt, QThreadPool, QTimer, Signal, Slot
from PySide6.QtGui import QRegularExpressionValidator
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QFrame,
                               QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton, QVBoxLayout, QWidget)

from inspector.link import protocol as P
from inspector.link.client import (
    DeviceClient,
    DeviceError,
    Pairing,
    PairingStore,
    client_name,
    format_address,
    format_fingerprint,
    parse_address,
)
from inspector.update.history import HistoryError, ModelHistory, gate_refused, override_package

log = logging.getLogger(__name__)

DISCOVERY_TIMEOUT_S = 3.0
STATUS_POLL_MS = 2000
PACKAGE_FILTER = "Model packages (*.crackpkg);;All files (*)"


class JobCancelled(Exception):
    """Raised inside a job's ``progress`` once the panel is closing: a long upload stops at the
    next chunk instead of keeping the application from exiting."""


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, DeviceError) else f"{type(exc).__name__}: {exc}"


def _set_primary(button: QPushButton, on: bool) -> None:
    """The highlighted (primary) style of the theme, on or off."""
    if (button.objectName() == "primary") != on:
        button.setObjectName("primary" if on else "")
        button.style().unpolish(button)
        button.style().polish(button)


class _Relay(QObject):
    """Carries one job's outcome from a pool thread to the GUI thread: its slots are methods of
    a QObject living on the GUI thread, so the connections are queued."""

    _succeeded = Signal(object)
    _failed = Signal(object)
    _progressed = Signal(object, object)

    def __init__(self, success, failure, progress, done, state: dict):
        super().__init__()
        self._success, self._failure, self._progress, self._done = success, failure, progress, done
        self._state = state           # {"closed": bool}: after DeviceJobs.close() no callback runs
        self._succeeded.connect(self._on_success)
        self._failed.connect(self._on_failure)
        self._progressed.connect(self._on_progress)

    @Slot(object)
    def _on_success(self, value) -> None:
        try:
            if self._success is not None and not self._state["closed"]:
                self._success(value)
        finally:
            self._done(self)

    @Slot(object)
    def _on_failure(self, exc) -> None:
        try:
            if self._failure is not None and not self._state["closed"]:
                self._failure(exc)
        finally:
            self._done(self)

    @Slot(object, object)
    def _on_progress(self, sent, total) -> None:
        if self._progress is not None and not self._state["closed"]:
            self._progress(sent, total)


class DeviceJobs(QObject):
    """``run(fn, success=, failure=, progress=)``: ``fn`` on a pool thread (given a
    ``progress(sent, total)`` callable if ``progress`` is set); ``success(result)`` or
    ``failure(exception)`` later on the GUI thread. ``busy`` counts jobs in flight. After
    :meth:`close` (the widgets are going away) outcomes still arriving are dropped."""

    def __init__(self, parent: QObject | None = None, threads: int = 2):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(threads)
        self._relays: set[_Relay] = set()
        self._state = {"closed": False}

    @property
    def busy(self) -> int:
        return len(self._relays)

    def run(self, fn: Callable, *, success: Callable | None = None, failure: Callable | None = None,
            progress: Callable | None = None) -> None:
        state = self._state
        if state["closed"]:
            return
        relay = _Relay(success, failure, progress, self._relays.discard, state)
        self._relays.add(relay)

        def report(sent, total):
            if state["closed"]:
                raise JobCancelled("the window is closing")
            relay._progressed.emit(sent, total)

        def task():
            try:
                result = fn(report) if progress is not None else fn()
            except Exception as exc:  # noqa: BLE001 - every failure is shown to the user
                log.info("device job failed: %s", _describe(exc))
                relay._failed.emit(exc)
            else:
                relay._succeeded.emit(result)

        self.pool.start(task)

    def close(self, msecs: int = 5000) -> bool:
        """No new jobs, no more callbacks; wait up to ``msecs`` for the jobs in flight."""
        self._state["closed"] = True
        return self.pool.waitForDone(msecs)


class PairDialog(QDialog):
    """Shows the device's certificate fingerprint for comparison and asks for the pairing code."""

    def __init__(self, address: str, fingerprint: str | None, parent: QWidget | None = None, *,
                 advertised: str | None = None):
        super().__init__(parent)
        self.setWindowTitle(f"Pair with {address}")
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel(f"Pair with the device at <b>{address}</b>.", wordWrap=True))
        if fingerprint:
            lay.addWidget(QLabel("Check that the device shows this certificate fingerprint "
                                 "(its console or log, line “AGENT READY … cert_sha256=…”):", wordWrap=True))
        else:
            lay.addWidget(QLabel("⚠ This device uses plain HTTP: the link is not encrypted and its identity "
                                 "cannot be checked. Use only for tests.", objectName="error", wordWrap=True))
        self.fingerprint = QLabel(format_fingerprint(fingerprint), objectName="value", wordWrap=True)
        self.fingerprint.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.fingerprint)
        if fingerprint and advertised:
            # mDNS can be spoofed as easily as anything else on the LAN: a hint, not a proof
            if fingerprint.startswith(advertised.lower()):
                lay.addWidget(QLabel("✓ It also matches the start of the fingerprint the device advertises on the "
                                     "network.", objectName="dim", wordWrap=True))
            else:
                lay.addWidget(QLabel(f"⚠ It does NOT match the fingerprint advertised on the network "
                                     f"({advertised}…): check the device before pairing.", objectName="error",
                                     wordWrap=True))
        form = QFormLayout()
        self.code = QLineEdit(placeholderText="6 digits")
        self.code.setValidator(QRegularExpressionValidator(rf"^[0-9]{{{P.PAIRING_CODE_DIGITS}}}$"))
        form.addRow("Pairing code shown by the device", self.code)
        lay.addLayout(form)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.buttons.button(QDialogButtonBox.Ok).setText("Pair")
        self.buttons.button(QDialogButtonBox.Ok).setEnabled(False)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self.code.textChanged.connect(
            lambda t: self.buttons.button(QDialogButtonBox.Ok).setEnabled(len(t) == P.PAIRING_CODE_DIGITS))
        lay.addWidget(self.buttons)


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
    _devicesFound = Signal(object, object)        # list of (name, host, port, properties), error text

    def __init__(self, pairings: PairingStore, parent: QWidget | None = None, *,
                 browse: Callable[[float], list] | None = None,
                 history: ModelHistory | Callable[[], ModelHistory] | None = None):
        super().__init__(parent, objectName="panel")
        self.pairings = pairings
        self._history = history                    # where overrides are recorded (None: the per-user one)
        self.override_dialog = None
        self.jobs = DeviceJobs(self)
        self._browse = browse
        self.feed = None                           # the DeviceFeed on screen, set by the window
        self.connected: Pairing | None = None
        self.pair_dialog: PairDialog | None = None
        self.discovered: list[tuple[str, str, int, dict]] = []
        self._polling = False
        self._busy: set[str] = set()               # jobs in flight: "pair", "model" (a push or a roll-back)
        self._poll = QTimer(self, interval=STATUS_POLL_MS, timeout=self.refresh_status)
        self._build()
        self._devicesFound.connect(self._set_discovered)
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
        self.push_button.clicked.connect(self.choose_package)
        self.rollback_button.clicked.connect(self.rollback)
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

    def _begin(self, job: str) -> None:
        self._busy.add(job)
        self._update_buttons()

    def _end(self, job: str) -> None:
        self._busy.discard(job)
        self._update_buttons()

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

        def run():
            try:
                fn = browse
                if fn is None:
                    from inspector.agent.discovery import browse as fn
                found = list(fn(DISCOVERY_TIMEOUT_S))
            except Exception as exc:  # noqa: BLE001 - no discovery is a normal, explained answer
                found, error = [], f"{type(exc).__name__}: {exc}"
            else:
                error = None
            try:
                self._devicesFound.emit(found, error)
            except RuntimeError:      # the panel was closed meanwhile
                pass
        threading.Thread(target=run, name="device-discovery", daemon=True).start()

    def _set_discovered(self, found, error) -> None:
        self.find.setEnabled(True)
        if error is not None:
            self.info.setText(f"Looking for devices failed ({error}); enter host:port.")
        else:
            self.discovered = [(str(n), str(h), int(p), dict(props or {})) for n, h, p, props in found]
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
        self._begin("pair")

        def done(fingerprint):
            self._end("pair")
            self.info.setText("")
            self._ask_code(host, port, tls, fingerprint)

        self.jobs.run(lambda: DeviceClient(host, port, tls=tls).fetch_fingerprint(), success=done,
                      failure=self._failed(f"Cannot pair with {format_address(host, port)}", "pair"))

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
        self._begin("pair")

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

        self.jobs.run(job, success=done,
                      failure=self._failed(f"Pairing with {format_address(host, port)} failed", "pair"))

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

        self.jobs.run(lambda: self.pairings.unpair(pairing), success=done,
                      failure=self._failed(f"Forgetting {pairing.agent_name} failed"))

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
            return
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
                self.fields["link"].setText(_describe(exc))

        self.jobs.run(DeviceClient.from_pairing(pairing).status, success=done, failure=failed)

    def show_status(self, status: P.Status) -> None:
        cam = status.camera if isinstance(status.camera, dict) else {}
        cam_fps = cam.get("fps")
        self.fields["device"].setText(f"{status.agent_name}" + (f" ({self.connected.address})" if self.connected else ""))
        self.fields["camera"].setText(" · ".join(str(x) for x in (cam.get("source"), cam.get("state"),
                                                                   f"{cam_fps:.1f} fps" if isinstance(cam_fps, (int, float)) else None)
                                                 if x) or "—")
        self.fields["camera"].setToolTip(str(cam.get("message") or ""))
        model = status.model or {}
        self.fields["model"].setText((f"{model.get('name', '?')} {model.get('version', '')}".strip()
                                      + (f" · {gate_text(model)}" if gate_text(model) != "—" else ""))
                                     if model else "none")
        self.fields["model"].setToolTip((f"sha256 {model.get('sha256', '')}\n{gate_text(model, long=True)}")
                                        if model else "")
        provider = status.provider.replace("ExecutionProvider", "")
        self.fields["provider"].setText(f"{provider} · {status.isa}" if status.isa else provider)
        v = status.verification
        self.fields["provider"].setToolTip(
            "" if v is None else f"reference check: rule {v.get('rule')}, {'passed' if v.get('passed') else 'FAILED'}; "
                                 f"max |Δp| {v.get('probs_max_abs', 0):.2g}, heat-map r {v.get('cam_corr', 0):.6f}, "
                                 f"peak Δ {v.get('cam_peak', 0):.2g} on {v.get('n_images')} images")
        received = f", {self.feed.fps:.1f} received" if self.feed is not None else ""
        self.fields["fps"].setText(f"{status.fps:.1f} inferred{received}")
        link = self.feed.link_ms if self.feed is not None else None
        self.fields["link"].setText("—" if link is None else f"{link:.0f} ms")
        self.fields["link"].setToolTip("agent sent → received here (median); between two machines as exact as "
                                       "their clocks agree")
        self.statusShown.emit(status)

    # ---------------------------------------------------------------- models

    def choose_package(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Push a model package to the device", "", PACKAGE_FILTER)
        if path:
            self.push(path)

    def history(self) -> ModelHistory:
        h = self._history
        if h is None:
            h = self._history = ModelHistory()
        return h() if callable(h) and not isinstance(h, ModelHistory) else h

    def push(self, path: str, activate: bool = True, *, override: tuple[str, str] | None = None) -> None:
        """Sign, upload (with progress; skipped if the device already has this very version) and,
        by default, activate the package at ``path``. A package the gate refused (its lineage:
        ``promoted`` false) is not pushed: the expert override dialog opens instead, and only
        ``override`` = (reason, by) -- what the dialog gives -- pushes it, written into its lineage
        first (:func:`~inspector.update.history.override_package`) and recorded in the history."""
        pairing = self.connected
        if pairing is None:
            self.message.emit("Connect to a device first.", "warning")
            return
        if "model" in self._busy:
            self.message.emit("A model is being pushed or rolled back: wait until it is done.", "warning")
            return
        if override is None:
            try:
                refused = gate_refused(path)
            except HistoryError as exc:
                self.message.emit(f"Pushing the model failed: {exc}", "error")
                return
            if refused is not None:
                self.ask_override(path, refused, activate)
                return
        self._begin("model")                      # no roll-back (nor a second push) during a push
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setFormat("signing…")
        self.progress.show()

        history = self.history() if override is not None else None

        def job(progress):
            if override is not None:
                override_package(path, reason=override[0], by=override[1], history=history)
            client = DeviceClient.from_pairing(pairing)
            return client.install(path, self.pairings.signing_key(), progress, activate=activate,
                                  activation_progress=lambda act: progress(act, None))

        def on_progress(sent, total):
            if total is None:   # sent is an Activation: the device loads it (a TensorRT build takes minutes)
                self.progress.setRange(0, 0)
                self.progress.setFormat(f"{sent.state} on the device… ({sent.elapsed_s:.0f} s)")
                self.progress.setToolTip(sent.message)
                return
            self.progress.setValue(int(100 * sent / max(total, 1)))
            self.progress.setFormat(f"uploading… {sent / 2**20:.1f} / {total / 2**20:.1f} MB")

        def done(outcome):
            info, uploaded = outcome
            self.progress.hide()
            self._end("model")
            verb = "is now active" if activate else "is stored"
            already = "" if uploaded else " (it was already on the device: not uploaded again)"
            how = f" (gate overridden by {override[1]}: {override[0]})" if override is not None else ""
            self.message.emit(f"{info.name} {info.version} {verb} on {pairing.agent_name}{already}{how}.", "info")
            self.refresh_status()

        def failed(exc):
            self.progress.hide()
            self._failed("Pushing the model failed", "model")(exc)

        self.jobs.run(job, success=done, failure=failed, progress=on_progress)

    def ask_override(self, path: str, failed: list[str], activate: bool = True) -> None:
        """The expert override for a package the gate refused; pushed only if it is completed."""
        from pathlib import Path

        from inspector.qt.device.override_dialog import ExpertOverrideDialog

        name = Path(path).name
        self.message.emit(f"{name} was refused by its gate (not promoted"
                          f"{': ' + ', '.join(failed) if failed else ''}); it is pushed only with an expert "
                          f"override.", "warning")
        dialog = self.override_dialog = ExpertOverrideDialog(failed, name, self)
        dialog.accepted.connect(lambda: self.push(path, activate, override=dialog.values()))
        dialog.rejected.connect(lambda: self.message.emit(f"{name} not pushed: the override was cancelled.", "info"))
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()

    def rollback(self) -> None:
        pairing = self.connected
        if pairing is None or "model" in self._busy:
            return
        self._begin("model")

        def done(models: P.ModelList):
            self._end("model")
            self.message.emit(f"{pairing.agent_name} rolled back to {models.active}.", "info")
            self.refresh_status()

        def failed(exc):
            self._failed("Rolling back failed", "model")(exc)

        self.jobs.run(DeviceClient.from_pairing(pairing).rollback, success=done, failure=failed)

    # ---------------------------------------------------------------- helpers

    def _failed(self, what: str, job: str | None = None) -> Callable[[BaseException], None]:
        def report(exc: BaseException) -> None:
            if job is not None:
                self._end(job)
            self.info.setText("")
            self.message.emit(f"{what}: {_describe(exc)}", "error")
        return report

    def shutdown(self, msecs: int = 5000) -> None:
        """Stop polling, wait (briefly) for jobs in flight, drop their outcomes (window closing)."""
        self._poll.stop()
        self.jobs.close(msecs)


def gate_text(info, *, long: bool = False) -> str:
    """What a device's model list says of a version's gate (ModelInfo or its dict): "promoted",
    "overridden by X: reason", "NOT promoted", or "—" for a package without lineage."""
    d = info if isinstance(info, dict) else info.to_dict()
    override, promoted = d.get("override"), d.get("promoted")
    if isinstance(override, dict):
        text = f"overridden by {override.get('by') or '?'}: {override.get('reason') or ''}".strip()
        if long:
            failed = ", ".join(override.get("failed") or []) or "none listed"
            text = f"gate refused it (failed: {failed}); {text} ({override.get('at') or '?'})"
        return text
    if promoted is True:
        return "promoted" + (" by its gate" if long else "")
    if promoted is False:
        return "NOT promoted" + (" (the gate refused it; no override)" if long else "")
    return "—" if not long else "no lineage (not made by an update)"
