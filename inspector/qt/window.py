"""The main window: live view + HUD on the left, source / display / flag panels on the right.

Two workspaces in tabs: **Live** (the above) and **Review** (:mod:`inspector.qt.review.view`,
the store's flags to label; Ctrl+1 / Ctrl+2). The live pipeline runs whichever is shown; each
workspace's keys are active only while it is shown.

It owns one :class:`~inspector.live.loop.LiveInspector` (the work) and one
:class:`~inspector.qt.bridge.LiveBridge` (its callbacks as signals) and only wires widgets to
them. Closing the window stops the inspector, which writes every queued flag first.

Viewing a device (:meth:`MainWindow.use_device`) swaps the inspector's source for a
:class:`~inspector.link.remote.DeviceFeed`: the same view, verdicts, flagging and flag store; the HUD
then shows the device's model, provider and the link latency.

**Update model…** in the review workspace opens :class:`~inspector.qt.update.view.UpdateDialog`
(``distill update`` in its own process; the new model goes live on the device on screen, or in
this window through :meth:`MainWindow.set_engine`); **Models…** the model history.

**Start demo device** in the Device panel (``inspector --demo``: :meth:`MainWindow.start_demo`)
runs the device agent on this laptop (:class:`~inspector.qt.device.demo_control.DemoControl`), pairs
with it and views it; it is stopped with the window.
"""
from __future__ import annotations

import logging
from typing import Callable

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QMainWindow, QTabWidget, QWidget

from inspector.edge.reuse import ReusePolicy
from inspector.live.memory import StoreMemory
from inspector.live.loop import LiveInspector
from inspector.capture.sources import SourceSpec
from inspector.qt import theme
from inspector.qt.screen_fit import fitted_size
from inspector.qt.banner import Banner, SourceBanner
from inspector.qt.bridge import LiveBridge, RenderSettings
from inspector.qt.live.controls import DisplayControls, FlagFields
from inspector.qt.device.demo_control import DemoControl
from inspector.qt.device.panel import DevicePanel
from inspector.qt.live.flags_panel import FlagsPanel
from inspector.qt.live.hud import Hud
from inspector.qt.live.page import LivePage
from inspector.qt.review.view import ReviewWorkspace
from inspector.qt.live.source_panel import SourceChooser
from inspector.qt.live.view import LiveView

log = logging.getLogger(__name__)

FIRST_SIZE = (1500, 920)
HISTORY = 50          # flags loaded from the store at start
UPDATE_PACE_S = 0.5   # while a model update trains: one local inference every half second at most
ERROR_SHOWN_MS = 8000


def default_grabber(spec):
    from inspector.capture.sources import FrameGrabber

    return FrameGrabber(spec, loop=True, realtime=True)


def default_feed(pairing):
    from inspector.link.remote import DeviceFeed

    return DeviceFeed(pairing)


class MainWindow(QMainWindow):
    """``MainWindow(engine, store, flagger, source)``; then ``show()`` and ``start()``.

    ``grabber``: use this grabber for the first source instead of ``make_grabber(source)``
    (tests inject failing ones). ``notice``: a message for the notice banner at start (e.g.
    "No camera found — playing the sample video"), with a "Choose source…" action.
    ``pairings``: the saved devices (default: the per-user :class:`~inspector.link.pairing.PairingStore`);
    ``device``: open on this paired device instead of ``source`` (``source`` is then where
    "Disconnect" goes); ``make_feed(pairing)`` makes its DeviceFeed; ``browse``: mDNS discovery
    for the device panel (default: :func:`inspector.agent.discovery.browse`).
    ``scorer``: a :class:`~inspector.review.teacher_scorer.TeacherScorer`, started and stopped with the
    window and woken by every stored flag (None: flags are not scored).
    ``reuse``: temporal tile reuse for local sources (:mod:`inspector.edge.reuse`; None: every tile
    of every frame).
    Signals for tests and the self-test: ``resultShown(LiveResult)``, ``flagShown(FlagRecord)``.
    """

    resultShown = Signal(object)
    flagShown = Signal(object)

    def __init__(self, engine, store, flagger, source, *, grabber=None,
                 make_grabber: Callable = default_grabber, notice: str | None = None, threshold: float = 0.5,
                 overlay: bool = True, opacity: float = 0.45, pairings=None, device=None,
                 make_feed: Callable = default_feed, browse: Callable | None = None,
                 scorer=None, history=None, reuse: ReusePolicy | None = ReusePolicy(),
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.engine, self.store, self.flagger = engine, store, flagger
        self.scorer = scorer              # a TeacherScorer scoring stored flags in the background, or None
        self.flag_memory = StoreMemory(flagger, store)   # the store's flags, remembered by the flagger
        self.history = history            # the ModelHistory (None: the per-user one, made when first needed)
        self.update_dialog = None         # the UpdateDialog, made on first use
        self.update_options: dict = {}    # extra UpdateDialog options (tests: program=, fast=)
        self.make_grabber = make_grabber
        self.make_feed = make_feed
        self.source = source
        self.local_source = source        # where "Disconnect" from a device goes back to
        self.device = None                # the Pairing on screen, None for a local source
        self.errors: list = []
        self.flags: list = []             # records stored during this window's life
        self.frames_shown = 0
        self._stopped = False
        policy = getattr(flagger, "policy", None)
        uncertain_low = float(policy.uncertain_band[0]) if policy is not None else 0.40
        m = engine.manifest
        self.setWindowTitle(f"Crack Inspector — {m.name} {m.version}")

        self.bridge = LiveBridge(store, self)
        feed = None
        if device is not None:
            feed = grabber = make_feed(device)
        self.inspector = LiveInspector(engine, grabber if grabber is not None else make_grabber(source), store,
                                       flagger, on_result=self.bridge.on_result, on_status=self.bridge.on_status,
                                       on_flag_stored=self.bridge.on_flag_stored, on_error=self.bridge.on_error,
                                       threshold=threshold, reuse=reuse)

        self.view = LiveView(uncertain_low=uncertain_low)
        self.view.settings = RenderSettings(overlay, opacity)
        self.view.threshold = threshold
        self.hud = Hud()
        self._hud_model = self._hud_provider = None
        self._show_local_model()
        self.hud.capture_fps = lambda: float(getattr(self.inspector.grabber, "fps", 0.0))
        self.hud.flag_stats = lambda: getattr(self.flagger, "stats", None)
        self.notice = Banner(closable=True)
        self.status_banner = SourceBanner()
        self.error_banner = Banner(closable=True)
        self._error_timer = QTimer(self, singleShot=True, interval=ERROR_SHOWN_MS,
                                   timeout=self.error_banner.dismiss)
        self._error_repeat = 0

        self.chooser = SourceChooser()
        if pairings is None:
            from inspector.link.pairing import PairingStore

            pairings = PairingStore()
        self.device_panel = DevicePanel(pairings, browse=browse)
        self.demo = DemoControl(pairings, self)    # a device agent on loopback (inspector --demo)
        self.display = DisplayControls(overlay=overlay, opacity=opacity, threshold=threshold,
                                       uncertain_low=uncertain_low)
        self.fields = FlagFields()
        self.flags_panel = FlagsPanel()
        # the second workspace: review and relabel the store's flags while the live view runs on
        self.review = ReviewWorkspace(store, threshold=threshold, show_message=self.show_message)
        if scorer is not None and scorer.on_scored is None:   # new teacher scores repaint their thumbnails
            scorer.on_scored = self.review.flagScored.emit
        self._layout()
        self._connect()
        self.fields.flag.setEnabled(False)             # until a frame is on screen (Space says so)
        self._set_source_label(source.label)
        if feed is not None:
            self._enter_device(device, feed)
        elif notice:
            self.notice.show_message(notice, "info", action="Choose source…")

    # ---------------------------------------------------------------- layout

    def _layout(self) -> None:
        self.live_page = LivePage(banners=(self.notice, self.status_banner, self.error_banner), view=self.view,
                                  hud=self.hud, chooser=self.chooser, device_panel=self.device_panel,
                                  controls=(self.display, self.fields), flags_panel=self.flags_panel)
        self.source_tabs = self.live_page.source_tabs   # Camera | Device
        self.workspaces = QTabWidget(documentMode=True)
        self.workspaces.addTab(self.live_page, "Live  (Ctrl+1)")
        self.workspaces.addTab(self.review, "Review  (Ctrl+2)")
        self.workspaces.tabBar().setFocusPolicy(Qt.NoFocus)
        self.workspaces.currentChanged.connect(self._on_workspace)
        self.setCentralWidget(self.workspaces)
        self.resize(self._first_size())
        self.view.setFocus()

    def _first_size(self) -> QSize:
        """1500×920, or the screen's free area if smaller (a 1366×768 laptop), less the window frame."""
        return fitted_size(self, FIRST_SIZE)

    def _on_workspace(self, index: int) -> None:
        (self.view if index == 0 else self.review.grid).setFocus()

    def _connect(self) -> None:
        b = self.bridge
        b.resultReady.connect(self._on_result_ready)
        b.statusChanged.connect(self._on_status)
        b.flagStored.connect(self._on_flag_stored)
        b.errorRaised.connect(self._on_error)
        b.historyLoaded.connect(self.flags_panel.set_history)
        self.view.framePainted.connect(self.hud.on_frame_painted)
        self.view.framePainted.connect(self._on_painted)
        self.display.overlayToggled.connect(self.set_overlay)
        self.display.opacityChanged.connect(self.set_opacity)
        self.display.thresholdChanged.connect(self.set_threshold)
        self.fields.flagRequested.connect(self.flag_now)
        self.fields.fieldsChanged.connect(self._on_fields)
        self.chooser.sourceChosen.connect(self.set_source)
        self.notice.actionTriggered.connect(self.focus_source_chooser)
        self.device_panel.connectRequested.connect(self.use_device)
        self.device_panel.disconnectRequested.connect(self.disconnect_device)
        self.device_panel.message.connect(self.show_message)
        self.device_panel.demoRequested.connect(self.toggle_demo)
        self.device_panel.disconnectRequested.connect(self._remind_demo_running)
        self.demo.stateChanged.connect(self.device_panel.set_demo_state)
        self.demo.started.connect(self._on_demo_started)
        self.demo.failed.connect(self._on_demo_failed)
        self.review.updateRequested.connect(self.open_update)
        self.review.historyRequested.connect(self.open_model_history)
        self.status_banner.actionTriggered.connect(self.focus_source_chooser)
        # on the live page: active only while it is shown (the review workspace has its own Space and H)
        QShortcut(QKeySequence(Qt.Key_Space), self.live_page, activated=self.flag_now)
        QShortcut(QKeySequence(Qt.Key_H), self.live_page, activated=self.display.overlay.toggle)
        QShortcut(QKeySequence("Ctrl+1"), self, activated=lambda: self.workspaces.setCurrentIndex(0))
        QShortcut(QKeySequence("Ctrl+2"), self, activated=lambda: self.workspaces.setCurrentIndex(1))

    # ---------------------------------------------------------------- control

    def start(self) -> None:
        """Start the live pipeline, load the recent flags, look for cameras (all off the GUI thread)."""
        self.flag_memory.start()     # the store's flagged views, so they are not flagged again
        self.inspector.start()
        if self.scorer is not None:
            self.scorer.start()
        self.bridge.load_history(HISTORY)
        self.chooser.find_cameras()
        self.device_panel.find_devices()

    def shutdown(self) -> None:
        """Stop the pipeline; every queued flag is written before this returns. Idempotent."""
        if not self._stopped:
            self._stopped = True
            if self.update_dialog is not None:
                self.update_dialog.shutdown()   # a running update job is cancelled (SIGTERM, then SIGKILL)
            self.device_panel.shutdown()
            if self.scorer is not None:
                self.scorer.stop()  # first: the flag it is on; it must not compete with the drain below
            self.flag_memory.stop()
            self.inspector.stop()
            self.demo.shutdown()    # after the feed: it must not see its device vanish
            self.review.shutdown()  # deleted flags are removed for good now

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.shutdown()
        super().closeEvent(event)

    def set_source(self, spec) -> None:
        """Switch the live pipeline to ``spec`` (a SourceSpec; local inference)."""
        self.source = self.local_source = spec
        self.inspector.set_grabber(self.make_grabber(spec))
        self.notice.dismiss()
        self.status_banner.dismiss()
        self.view.clear(f"Connecting to {spec.label}…")
        self.fields.flag.setEnabled(False)
        self._set_source_label(spec.label)
        if self.device is not None:
            self.device = None
            self.device_panel.set_feed(None)
            self.hud.set_link_visible(False)
            self._show_local_model()

    def use_device(self, pairing) -> None:
        """View the paired device ``pairing`` (a :class:`~inspector.link.client.Pairing`): its stream
        replaces the local source; flags go to the same store with the device's model."""
        feed = self.make_feed(pairing)
        self.inspector.set_grabber(feed)
        self.notice.dismiss()
        self.status_banner.dismiss()
        self._enter_device(pairing, feed)

    def start_demo(self, **options) -> None:
        """Start the demo device on a job thread, then pair with it and view it (``options`` go to
        :class:`~inspector.link.demo.DemoDevice`, e.g. ``data=``)."""
        self.source_tabs.setCurrentIndex(1)
        self.notice.show_message("Starting the demo device on this laptop…", "info")
        self.demo.start(**options)

    def toggle_demo(self) -> None:
        """The Device panel's demo button: start the demo device, or leave and stop it."""
        if self.demo.state == "off":
            self.start_demo()
        elif self.demo.state == "on":
            if self.device is not None and self.demo.device is not None and self.device == self.demo.device.pairing:
                self.disconnect_device()
            self.demo.stop()

    def _on_demo_started(self, pairing) -> None:
        self.device_panel.reload_devices()
        self.use_device(pairing)
        self.notice.show_message(f"Demo device: the device agent runs on this laptop ({pairing.address}) on the sample "
                                 f"video, paired with the code it wrote to {self.demo.device.data}.", "info")

    def _remind_demo_running(self) -> None:
        if self.demo.state == "on":     # it infers on this laptop's cores all the time
            self.notice.show_message("The demo device keeps running on this laptop; ■ Stop demo device in the Device "
                                     "panel stops it.", "info")

    def _on_demo_failed(self, text: str) -> None:
        self.notice.dismiss()
        self.show_message(text, "error")

    def disconnect_device(self) -> None:
        """Back to the local source that was on screen before the device."""
        if self.device is not None:
            self.set_source(self.local_source)

    def _enter_device(self, pairing, feed) -> None:
        self.device = pairing
        self.source = SourceSpec("device", pairing.address, feed.label)
        self.source_tabs.setCurrentIndex(1)
        self.view.clear(f"Connecting to {pairing.agent_name} at {pairing.address}…")
        self.fields.flag.setEnabled(False)
        self._set_source_label(feed.label)
        self.hud.set_link_visible(True)
        self.device_panel.set_feed(feed, pairing)

    def set_engine(self, engine) -> None:
        """Run ``engine`` on this laptop from the next frame on (a new or an older model); the
        HUD and the title follow unless a device is on screen."""
        self.engine = engine
        self.inspector.set_engine(engine)
        if self.device is None:
            self._show_local_model()

    def _model_history(self):
        if self.history is None:
            from inspector.update.history import ModelHistory

            self.history = ModelHistory()
        return self.history

    def _device_for_update(self):
        """(Pairing, PairingStore) of the device on screen, or None."""
        return (self.device, self.device_panel.pairings) if self.device is not None else None

    def open_update(self):
        """Update model…: the update dialog (one per window; shown again if open)."""
        if self.update_dialog is None:
            from inspector.qt.update.view import UpdateDialog

            self.update_dialog = UpdateDialog(self.store, engine=lambda: self.engine, swap_engine=self.set_engine,
                                              device=self._device_for_update, history=self._model_history(),
                                              on_device_changed=self.device_panel.refresh_status, parent=self,
                                              **self.update_options)
            self.update_dialog.message.connect(self.show_message)
            self.update_dialog.runningChanged.connect(self.yield_to_update)
        dialog = self.update_dialog
        if not dialog.isVisible():
            if not dialog.process.running and dialog.pages.currentIndex() == 1 and dialog.state is not None \
                    and dialog.state.finished:
                dialog.pages.setCurrentIndex(0)     # a finished run: start from the plan again
            dialog.show()
        dialog.raise_()
        dialog.activateWindow()
        return dialog

    def yield_to_update(self, running: bool) -> None:
        """While a model update trains, this laptop's own inference gives it the cores: the local
        live view infers at most every :data:`UPDATE_PACE_S` s (frames still show, verdicts
        lag) and the demo device, an agent on this laptop, drops to the lowest priority. The
        notice says so; full speed again when the job ends."""
        was_yielding = self.inspector.pace is not None    # only this method sets a pace
        self.inspector.pace = UPDATE_PACE_S if running else None
        if not running:
            if was_yielding:
                self.notice.dismiss()
            return
        yielded = []
        if self.device is None:
            yielded.append(f"live inference here runs at most {1 / UPDATE_PACE_S:.0f} times a second")
        demo = self.demo.device
        if demo is not None and demo.lower_priority():
            yielded.append("the demo device on this laptop runs at the lowest priority")
        if yielded:
            self.notice.show_message(f"Update model is training: {' and '.join(yielded)}, so the update gets "
                                     "the cores. Full speed again when it ends.", "info")

    def open_model_history(self):
        """Models…: versions on this laptop and the device; roll back."""
        from inspector.qt.update.history_view import ModelHistoryDialog

        dialog = ModelHistoryDialog(self._model_history(), engine=lambda: self.engine, swap_engine=self.set_engine,
                                    device=self._device_for_update, on_device_changed=self.device_panel.refresh_status,
                                    parent=self, **{k: v for k, v in self.update_options.items() if k == "make_engine"})
        dialog.message.connect(self.show_message)
        dialog.setAttribute(Qt.WA_DeleteOnClose)
        dialog.show()
        return dialog

    def flag_now(self) -> bool:
        """Manual flag of the newest result (Space). False if there is nothing to flag yet."""
        live = self.inspector.flag_current()
        if live is None:
            self.view.toast("Nothing to flag yet — waiting for a frame", theme.UNCERTAIN)
            return False
        self.view.toast("⚑ Flagging this frame…")
        return True

    def set_overlay(self, on: bool) -> None:
        self.view.set_overlay(on)

    def set_opacity(self, opacity: float) -> None:
        self.view.set_opacity(opacity)

    def set_threshold(self, threshold: float) -> None:
        self.inspector.threshold = threshold
        self.view.set_threshold(threshold)
        self.review.set_threshold(threshold)

    def show_message(self, text: str, level: str = "info") -> None:
        """A message from a background operation: errors and warnings in the error banner (for a
        while), information in the notice banner; in the review workspace's banner while it is shown."""
        if self.workspaces.currentWidget() is self.review:
            self.review.show_message(text, level)
        elif level == "info":
            self.notice.show_message(text, "info")
        else:
            self.error_banner.show_message(text, level)
            self._error_timer.start()

    def focus_source_chooser(self) -> None:
        self.notice.dismiss()
        self.source_tabs.setCurrentIndex(0)
        self.chooser.url.setFocus()
        self.chooser.setStyleSheet(f"QFrame#panel {{ border-color: {theme.ACCENT}; }}")
        QTimer.singleShot(1500, lambda: self.chooser.setStyleSheet(""))

    # ---------------------------------------------------------------- signals from the pipeline

    def _on_result_ready(self) -> None:
        live = self.bridge.take()
        if live is not None:
            self._follow_model(live)
            self.view.show_result(live)
            self.fields.flag.setEnabled(True)
            self.resultShown.emit(live)

    def _on_painted(self, live, t_painted: float) -> None:
        self.frames_shown += 1

    def _on_status(self, status) -> None:
        self.status_banner.set_status(status)
        self.view.set_stale(status.state in ("reconnecting", "ended"))
        self.chooser.set_current(f"{self.source.label}  ·  {status.state}")
        if self.view.live is None and status.state in ("reconnecting", "connecting"):
            label = self.source.label
            self.view.placeholder = (f"Connecting to {label}…" if status.state == "connecting"
                                     else f"No picture from {label} — see the message above")
            self.view.update()

    def _on_flag_stored(self, record, thumb) -> None:
        self.flags.append(record)
        if self.scorer is not None:
            self.scorer.notify()
        self.flags_panel.add(record, thumb)
        self.review.flag_stored(record)
        colour = theme.REASON_COLOURS.get(record.reason, theme.ACCENT)
        if record.reason == "manual":
            self.view.toast(f"⚑ Flag #{record.id} saved", colour)
        else:
            self.view.toast(f"Auto-flag #{record.id}: {record.reason}  p {record.crack_prob_max:.2f}", colour,
                            verdict=record.reason if record.reason in ("crack", "uncertain") else None)
        self.flagShown.emit(record)

    def _on_error(self, error) -> None:
        self.errors.append(error)
        same = self.error_banner.isVisible() and self.error_banner.text.text().startswith(str(error)[:60])
        self._error_repeat = self._error_repeat + 1 if same else 1
        text = str(error) if self._error_repeat == 1 else f"{error}  (×{self._error_repeat})"
        self.error_banner.show_message(text, "error")
        self._error_timer.start()

    def _on_fields(self, location: str, note: str) -> None:
        self.inspector.location = location or None
        self.inspector.note = note or None

    def _show_local_model(self) -> None:
        m = self.engine.manifest
        self.setWindowTitle(f"Crack Inspector — {m.name} {m.version}")
        self.hud.set_model(m.name, m.version, m.model_sha256)
        verification = getattr(self.engine, "verification", None)
        self.hud.set_provider(list(self.engine.providers), getattr(self.engine, "provider_fallback", None),
                              isa=getattr(self.engine, "isa", ""), precision=m.quantization.type.split("-")[0].upper(),
                              notes=[getattr(self.engine, "variant_reason", None),
                                     verification.summary() if verification is not None else None])
        self._hud_model = self._hud_provider = None

    def _follow_model(self, live) -> None:
        """Viewing a device: the HUD follows the model and provider its results came from
        (a model activated or rolled back on the device shows up with its first frame)."""
        if live.link is None:
            return
        if live.model is not None and live.model != self._hud_model:
            self._hud_model = live.model
            self.hud.set_model(live.model.name, live.model.version, live.model.sha256)
            # the title names the model on screen: the device's (after a push or a rollback, the new one)
            self.setWindowTitle(f"Crack Inspector — {live.model.name} {live.model.version} "
                                f"on {live.link.agent_name}")
        provider = live.link.provider
        isa = getattr(live.link, "isa", "") or ""
        if provider and (provider, isa) != self._hud_provider:
            self._hud_provider = (provider, isa)
            self.hud.set_provider([provider], f"on {live.link.agent_name}", isa=isa)
        if live.frame.source != self.hud.source.value.toolTip():
            self._set_source_label(live.frame.source)

    def _set_source_label(self, label: str) -> None:
        self.hud.set_source(label)
        self.chooser.set_current(label)


def make_window(engine, store, source, notice, flagger=None, device=None, scorer=None,
                tile_reuse: bool = True) -> MainWindow:
    """The main window as the ``inspector`` command opens it (default flagging rules unless given)."""
    from inspector.live.flagging import Flagger

    return MainWindow(engine, store, flagger or Flagger(), source, notice=notice, device=device, scorer=scorer,
                      reuse=ReusePolicy() if tile_reuse else None)
