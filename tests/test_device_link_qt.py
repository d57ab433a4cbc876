"""The app ↔ device link in the Qt window (offscreen) against a real agent process on loopback:
the device panel pairs, connects and shows the device; ``--device`` start-up; push and roll back
from the panel; the window on a device at field-laptop size; Push model… with the expert
override of a refused candidate. No Qt: ``test_device_link.py``."""
from pathlib import Path

import pytest

from device_link_support import agent, key, paired, private_home  # noqa: F401  (fixtures)
from device_link_support import shipped_model_ref, variant
from inspector.capture.sources import parse_source
from inspector.edge.numerics import int8_isa
from inspector.qt import confirm
from inspector.edge.package import load_package, write_package
from inspector.link.client import DeviceClient
from inspector.link.connection import DeviceError, format_fingerprint
from inspector.link.pairing import PairingStore
from inspector.live.flagging import Flagger, FlagPolicy
from inspector.paths import sample_video
from inspector.store.database import FlagStore
from layout_check import field_layout_problems, themed  # noqa: F401  (fixture)
from support import SHIPPED_ID, SHIPPED_VERSION, engine  # noqa: F401  (fixtures)

NO_AUTO = FlagPolicy(auto=False)


@pytest.fixture
def window(qtbot, engine, tmp_path):
    from inspector.qt.window import MainWindow

    made = []

    def make(**kw):
        store = FlagStore(tmp_path / f"flags{len(made)}")
        w = MainWindow(engine, store, Flagger(NO_AUTO), parse_source(sample_video()),
                       pairings=PairingStore(tmp_path / "config"), browse=lambda timeout: [], **kw)
        qtbot.addWidget(w)
        made.append((w, store))
        w.show()
        w.start()
        return w

    yield make
    for w, store in made:
        w.shutdown()
        store.close()


def test_device_panel_pairs_connects_and_the_view_shows_the_device(window, qtbot, agent):
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QDialogButtonBox

    w = window()
    panel = w.device_panel
    qtbot.waitUntil(lambda: "No device found" in panel.info.text(), timeout=5000)   # discovery ran (stubbed)
    assert panel.devices.count() == 0 and panel.devices.currentText() == ""    # the placeholder: none found
    assert not panel.pair_button.isEnabled() and not panel.connect_button.isEnabled()   # no address yet
    panel.address.setText(f"127.0.0.1:{agent.port}")
    assert panel.pair_button.isEnabled() and panel.pair_button.objectName() == "primary"   # the next step
    assert not panel.connect_button.isEnabled() and panel.connect_button.objectName() != "primary"
    qtbot.keyClick(panel.address, Qt.Key_Return)                      # Enter: not paired yet, says so
    qtbot.waitUntil(lambda: w.error_banner.isVisible() and "Not paired" in w.error_banner.text.text(), timeout=2000)

    panel.pair_button.click()
    qtbot.waitUntil(lambda: panel.pair_dialog is not None and panel.pair_dialog.isVisible(), timeout=15000)
    dialog = panel.pair_dialog
    assert dialog.fingerprint.text() == format_fingerprint(agent.cert_sha256)
    dialog.code.setText(agent.code())
    with qtbot.waitSignal(panel.paired, timeout=20000) as blocker:
        dialog.buttons.button(QDialogButtonBox.Ok).click()
    pairing = blocker.args[0]
    assert panel.pairings.get(pairing.agent_id) == pairing and pairing.cert_sha256 == agent.cert_sha256
    assert panel.devices.currentIndex() == 0 and panel.devices.currentText() == f"✓ test-agent  ({pairing.address})"
    assert panel.connect_button.isEnabled() and panel.connect_button.objectName() == "primary"
    assert panel.pair_button.objectName() != "primary"

    panel.connect_button.click()
    qtbot.waitUntil(lambda: w.view.live is not None and w.view.live.link is not None, timeout=40000)
    shown = w.frames_shown
    qtbot.waitUntil(lambda: w.frames_shown >= shown + 2, timeout=20000)
    assert w.device == pairing and w.inspector.grabber is panel.feed
    # the states say the truth: connected (not "no device found"), the title names the device's model
    assert panel.info.text() == f"Connected to test-agent at {pairing.address}."
    ref = shipped_model_ref()
    assert w.windowTitle() == f"Crack Inspector — {ref.name} {ref.version} on test-agent"
    w.hud.refresh()
    assert w.hud.model.value.text() == f"{ref.name} {ref.version}"
    assert w.hud.link.isVisible() and w.hud.link.value.text().endswith("ms")
    assert w.hud.source.value.text().startswith("device test-agent")
    qtbot.waitUntil(lambda: panel.fields["provider"].text() == f"CPU · {int8_isa()}" and panel.fields["link"].text().endswith("ms"),
                    timeout=10000)
    assert "sample_inspection.avi" in panel.fields["camera"].text() and ref.version in panel.fields["model"].text()
    assert panel.push_button.isEnabled() and panel.rollback_button.isEnabled()
    assert not panel.connect_button.isEnabled() and panel.disconnect_button.isEnabled()   # it is on screen

    w.raise_()
    w.activateWindow()                                   # the pair dialog had it
    qtbot.waitUntil(w.isActiveWindow, timeout=5000)
    w.view.setFocus()
    with qtbot.waitSignal(w.flagShown, timeout=10000) as blocker:
        qtbot.keyClick(w.view, Qt.Key_Space)
    assert blocker.args[0].model == ref and blocker.args[0].source.startswith("device test-agent")

    panel.disconnect_button.click()                                   # back to the local sample video
    qtbot.waitUntil(lambda: w.view.live is not None and w.view.live.link is None, timeout=20000)
    assert w.device is None and not w.hud.link.isVisible() and not panel.push_button.isEnabled()
    assert panel.info.text().startswith("Not connected") and " on " not in w.windowTitle()
    assert panel.connect_button.isEnabled() and not panel.rollback_button.isEnabled()
    assert w.errors == []


def test_window_opens_on_a_paired_device_and_pushes_and_rolls_back(window, qtbot, paired, key, tmp_path, monkeypatch):
    from inspector.qt.startup import resolve_device

    PairingStore().save(paired)
    w = window(device=resolve_device(paired.address))         # what ``inspector --device HOST:PORT`` does
    qtbot.waitUntil(lambda: w.frames_shown >= 2 and w.view.live.link is not None, timeout=40000)
    assert w.device == paired and w.source.kind == "device"
    assert w.view.live.model == shipped_model_ref()
    panel = w.device_panel
    panel.pairings.signing_key_path.parent.mkdir(parents=True, exist_ok=True)
    panel.pairings.signing_key_path.write_bytes(key.private_pem())   # the key this app paired with

    progress = []
    panel.progress.valueChanged.connect(progress.append)
    with qtbot.waitSignal(panel.message, timeout=40000,
                          check_params_cb=lambda text, level: "is now active" in text or level == "error") as msg:
        panel.push(str(variant(tmp_path, "1.1.2-int8")))
        assert not panel.rollback_button.isEnabled() and not panel.push_button.isEnabled()   # one model job at a time
    assert panel.rollback_button.isEnabled() and panel.push_button.isEnabled()
    assert msg.args == [f"crack-student 1.1.2-int8 is now active on {paired.agent_name}.", "info"]
    assert progress and progress[-1] == 100 and not panel.progress.isVisible()
    qtbot.waitUntil(lambda: w.hud.model.value.text() == "crack-student 1.1.2-int8", timeout=20000)
    qtbot.waitUntil(lambda: "1.1.2-int8" in panel.fields["model"].text(), timeout=10000)

    monkeypatch.setattr(confirm, "ask", lambda *a: True)
    with qtbot.waitSignal(panel.message, timeout=30000) as msg:
        panel.rollback_button.click()
        assert not panel.push_button.isEnabled() and not panel.rollback_button.isEnabled()
    assert msg.args[1] == "info" and f"rolled back to {SHIPPED_ID}" in msg.args[0]
    qtbot.waitUntil(lambda: w.hud.model.value.text() == f"crack-student {SHIPPED_VERSION}", timeout=20000)
    assert w.errors == []


def test_a_saved_device_is_listed_and_selected_on_start_and_connect_needs_a_pairing(qtbot, tmp_path, paired):
    """The next start after pairing: the paired device is the selected entry (not the "no device
    found" placeholder over a list that holds it), Connect is the next step; found devices do not
    displace it."""
    from inspector.qt.device.panel import DevicePanel

    store = PairingStore(tmp_path / "config")
    store.save(paired)
    panel = DevicePanel(store, browse=lambda timeout: [])
    qtbot.addWidget(panel)
    assert panel.devices.currentIndex() == 0 and panel.devices.currentText().startswith("✓ test-agent")
    assert panel.address.text() == paired.address
    assert panel.connect_button.isEnabled() and panel.connect_button.objectName() == "primary"
    assert panel.pair_button.isEnabled() and panel.pair_button.objectName() != "primary"
    assert not panel.push_button.isEnabled() and not panel.rollback_button.isEnabled()   # nothing connected

    panel._set_discovered([("other", "10.0.0.9", 8443, {"agent_id": "x"})], None)
    assert panel.devices.count() == 2 and panel.devices.currentText().startswith("✓ test-agent")
    panel.address.clear()
    qtbot.keyClicks(panel.address, "10.0.0.9:8443")                    # typing another address
    assert panel.devices.currentText().startswith("other") and not panel.connect_button.isEnabled()
    assert panel.pair_button.objectName() == "primary"
    panel.address.clear()
    qtbot.keyClicks(panel.address, "10.0.0.7:8443")                    # not in the list: no entry claims it
    assert panel.devices.currentIndex() == -1 and panel.devices.placeholderText() != "no device found"

    empty = DevicePanel(PairingStore(tmp_path / "empty"), browse=lambda timeout: [])
    qtbot.addWidget(empty)
    assert empty.devices.count() == 0 and empty.devices.placeholderText() == "no device found"
    assert not empty.connect_button.isEnabled() and empty.connect_button.objectName() != "primary"
    panel.shutdown()
    empty.shutdown()


def test_the_window_on_a_device_fits_a_field_laptop_and_every_control_is_reachable(window, qtbot, paired, themed):
    """Connected to a real agent (its HUD fields, the link, the device's status in the panel)."""
    from inspector.qt.startup import resolve_device

    PairingStore().save(paired)
    w = window(device=resolve_device(paired.address))
    qtbot.waitUntil(lambda: w.frames_shown >= 2 and w.view.live.link is not None, timeout=40000)
    qtbot.waitUntil(lambda: w.device_panel.fields["provider"].text() == f"CPU · {int8_isa()}", timeout=10000)
    with qtbot.waitSignal(w.flagShown, timeout=10000):      # the flags list shows (it is hidden while empty)
        w.flag_now()
    w.hud.refresh()
    assert w.hud.link.isVisible()
    problems = field_layout_problems(w, themed)
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------- one path to the device

def with_lineage(folder: Path, version: str, *, promoted: bool) -> Path:
    """A ``variant`` whose manifest carries an update's lineage: promoted by its gate, or refused."""
    path = variant(folder, version)
    p = load_package(path, verify_reference=False)
    m = p.manifest.to_dict()
    failed = [] if promoted else ["golden_mcc"]
    m["extra"] = {**m.get("extra", {}), "lineage": {
        "parent": {"name": m["name"], "version": "1.1.1", "model_sha256": p.manifest.model_sha256},
        "gate": {"passed": promoted, "failed": failed, "rules": []}, "promoted": promoted, "override": None,
        "pushed_by": "ana", "created_by": "distill update"}}
    return write_package(path, m, p.onnx_bytes, p.reference, verify=False)


def test_push_model_sends_a_refused_candidate_only_with_the_expert_override_in_its_signed_lineage(
        qtbot, paired, key, tmp_path, engine):
    from inspector.update.history import ModelHistory
    from inspector.qt.device.panel import DevicePanel
    from inspector.qt.update.history_view import ModelHistoryDialog

    store = PairingStore(tmp_path / "config")
    store.save(paired)
    store.signing_key_path.parent.mkdir(parents=True, exist_ok=True)
    store.signing_key_path.write_bytes(key.private_pem())
    history = ModelHistory(tmp_path / "user-data")
    panel = DevicePanel(store, browse=lambda timeout: [], history=history)
    qtbot.addWidget(panel)
    panel.connected = paired
    client = DeviceClient.from_pairing(paired)
    ids = lambda: {i.id: i for i in client.models().infos()}   # noqa: E731

    refused = with_lineage(tmp_path, "1.6.0-int8", promoted=False)
    sha = load_package(refused, verify_reference=False).manifest.model_sha256
    with pytest.raises(DeviceError, match="refused by its gate") as exc:       # the device refuses it too
        client.push(refused, key)
    assert (exc.value.api.status, exc.value.api.code) == (422, "not_promoted")

    with qtbot.waitSignal(panel.message) as msg:                              # Push model…: refused, asks
        panel.push(str(refused), activate=False)
    assert msg.args[1] == "warning" and "refused by its gate" in msg.args[0] and "golden_mcc" in msg.args[0]
    dialog = panel.override_dialog
    assert dialog.isVisible() and not dialog.ok.isEnabled()
    dialog.reason.setText("site set mislabelled, checked by hand")
    dialog.by.setText("")
    dialog.confirm.setChecked(True)
    assert not dialog.ok.isEnabled()                                           # who decides is required
    with qtbot.waitSignal(panel.message) as msg:
        dialog.reject()
    assert "not pushed" in msg.args[0]
    qtbot.wait(300)
    assert "crack-student-1.6.0-int8" not in ids() and "model" not in panel._busy

    panel.push(str(refused), activate=False)
    dialog = panel.override_dialog
    dialog.reason.setText("site set mislabelled, checked by hand")
    dialog.by.setText("ana")
    dialog.confirm.setChecked(True)
    with qtbot.waitSignal(panel.message, timeout=40000,
                          check_params_cb=lambda text, level: "is stored" in text or level == "error") as msg:
        dialog.ok.click()
    assert msg.args[1] == "info" and "gate overridden by ana" in msg.args[0]
    info = ids()["crack-student-1.6.0-int8"]
    assert info.promoted is True and info.sha256 == sha
    assert info.override["by"] == "ana" and info.override["reason"] == "site set mislabelled, checked by hand"
    assert info.override["failed"] == ["golden_mcc"] and info.override["at"]
    lineage = load_package(refused, verify_reference=False).manifest.extra["lineage"]   # the package says so
    assert lineage["override"] == info.override and lineage["promoted"] is True
    assert [e["kind"] for e in history.events()] == ["override"] and "ana" in history.events()[0]["message"]

    promoted = with_lineage(tmp_path, "1.7.0-int8", promoted=True)          # promoted: pushed as today
    with qtbot.waitSignal(panel.message, timeout=40000,
                          check_params_cb=lambda text, level: "is stored" in text or level == "error") as msg:
        panel.push(str(promoted), activate=False)
    assert msg.args[1] == "info" and "overridden" not in msg.args[0] and panel.override_dialog is dialog
    assert ids()["crack-student-1.7.0-int8"].promoted is True and ids()["crack-student-1.7.0-int8"].override is None
    assert ids()[SHIPPED_ID].promoted is None                                   # no lineage

    h = ModelHistoryDialog(history, engine=lambda: engine, swap_engine=lambda e: None,
                           device=lambda: (paired, store))
    qtbot.addWidget(h)
    qtbot.waitUntil(lambda: h.device_table.rowCount() >= 3, timeout=30000)
    gate = {h.device_table.item(r, 0).text(): h.device_table.item(r, 5).text() for r in range(h.device_table.rowCount())}
    assert gate["crack-student 1.6.0-int8"] == "overridden by ana: site set mislabelled, checked by hand"
    assert gate["crack-student 1.7.0-int8"] == "promoted" and gate[f"crack-student {SHIPPED_VERSION}"] == "—"
