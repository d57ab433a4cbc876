"""The device panel's model actions: **Push model…** (sign, upload with progress, activate) and
**Roll back**, on the connected device.

**Push model…** is the same path to the device as an update's **Push anyway…**: a package whose
lineage says the gate refused it (``extra.lineage.promoted`` false) is pushed only after the
expert override (:class:`~inspector.qt.device.override_dialog.ExpertOverrideDialog`: reason, who,
confirmation), which :func:`inspector.update.history.override_package` writes into the package's
lineage, so into the manifest the push signs, and into the model history. A promoted package,
or one without lineage (the shipped one), is pushed as it is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from PySide6.QtWidgets import QFileDialog

from inspector.link import protocol as P
from inspector.link.client import DeviceClient
from inspector.qt import confirm, folders
from inspector.qt.device.override_dialog import ExpertOverrideDialog
from inspector.update.history import HistoryError, ModelHistory, gate_refused, override_package

PACKAGE_FILTER = "Model packages (*.crackpkg);;All files (*)"


class ModelActions:
    """Push and roll back for ``panel`` (the DevicePanel: its connected device, network jobs,
    progress bar, "model" busy state and messages). One model job at a time: no roll-back, nor
    a second push, while a push runs. ``history``: where overrides are recorded (None: the
    per-user one; a callable is asked each time)."""

    def __init__(self, panel, history: ModelHistory | Callable[[], ModelHistory] | None = None):
        self.panel = panel
        self._history = history
        self.override_dialog: ExpertOverrideDialog | None = None

    def choose_package(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.panel, "Push a model package to the device",
                                              str(folders.start_folder("package")), PACKAGE_FILTER)
        if path:
            folders.remember("package", path)
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
        panel = self.panel
        pairing = panel.connected
        if pairing is None:
            panel.message.emit("Connect to a device first.", "warning")
            return
        if panel.in_progress("model"):
            panel.message.emit("A model is being pushed or rolled back: wait until it is done.", "warning")
            return
        if override is None:
            try:
                refused = gate_refused(path)
            except HistoryError as exc:
                panel.message.emit(f"Pushing the model failed: {exc}", "error")
                return
            if refused is not None:
                self.ask_override(path, refused, activate)
                return
        panel.begin("model")
        progress = panel.progress
        progress.setRange(0, 100)
        progress.setValue(0)
        progress.setFormat("signing…")
        progress.show()

        history = self.history() if override is not None else None
        signing_key = panel.pairings.signing_key

        def job(progress):
            if override is not None:
                override_package(path, reason=override[0], by=override[1], history=history)
            client = DeviceClient.from_pairing(pairing)
            return client.install(path, signing_key(), progress, activate=activate,
                                  activation_progress=lambda act: progress(act, None))

        def on_progress(sent, total):
            if total is None:   # sent is an Activation: the device loads it (a TensorRT build takes minutes)
                progress.setRange(0, 0)
                progress.setFormat(f"{sent.state} on the device… ({sent.elapsed_s:.0f} s)")
                progress.setToolTip(sent.message)
                return
            progress.setValue(int(100 * sent / max(total, 1)))
            progress.setFormat(f"uploading… {sent / 2**20:.1f} / {total / 2**20:.1f} MB")

        def done(outcome):
            info, uploaded = outcome
            progress.hide()
            panel.end("model")
            verb = "is now active" if activate else "is stored"
            already = "" if uploaded else " (it was already on the device: not uploaded again)"
            how = f" (gate overridden by {override[1]}: {override[0]})" if override is not None else ""
            panel.message.emit(f"{info.name} {info.version} {verb} on {pairing.agent_name}{already}{how}.", "info")
            panel.refresh_status()

        def failed(exc):
            progress.hide()
            panel.failure("Pushing the model failed", "model")(exc)

        panel.run_job(job, on_success=done, on_failure=failed, on_progress=on_progress)

    def ask_override(self, path: str, failed: list[str], activate: bool = True) -> None:
        """The expert override for a package the gate refused; pushed only if it is completed."""
        panel = self.panel
        name = Path(path).name
        panel.message.emit(f"{name} was refused by its gate (not promoted"
                           f"{': ' + ', '.join(failed) if failed else ''}); it is pushed only with an expert "
                           f"override.", "warning")
        dialog = self.override_dialog = ExpertOverrideDialog(failed, name, panel)
        dialog.accepted.connect(lambda: self.push(path, activate, override=dialog.values()))
        dialog.rejected.connect(lambda: panel.message.emit(f"{name} not pushed: the override was cancelled.", "info"))
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()

    def rollback(self) -> None:
        panel = self.panel
        pairing = panel.connected
        if pairing is None or panel.in_progress("model"):
            return
        if not confirm.ask(panel, "Roll back the device",
                           f"Roll {pairing.agent_name} back to the model it ran before?\n\nThe model active now stays "
                           f"stored on the device and can be made active again from Models…", "Roll back"):
            return
        panel.begin("model")

        def done(models: P.ModelList):
            panel.end("model")
            panel.message.emit(f"{pairing.agent_name} rolled back to {models.active}.", "info")
            panel.refresh_status()

        panel.run_job(DeviceClient.from_pairing(pairing).rollback, on_success=done,
                      on_failure=panel.failure("Rolling back failed", "model"))
