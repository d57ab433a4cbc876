"""The app ↔ device link against real agent processes on loopback (TLS): pairing, pinning,
status, the stream through DeviceFeed and LiveInspector into a flag store, reconnecting after
the agent is killed, pushing / activating / rolling back a signed model, and the Qt device
panel and ``--device`` start-up (offscreen)."""
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inspector.edge.numerics import int8_isa

from inspector.link.client import (DeviceClient, DeviceError, DeviceFeed, FingerprintMismatch, Pairing, PairingStore,
                              format_fingerprint, parse_address)
from inspector.live.flagging import Flagger, FlagPolicy
from inspector.live.loop import LiveInspector
from inspector.edge.package import load_package, write_package
from inspector.paths import default_model, sample_video
from inspector.link.signing import SigningKey
from inspector.capture.sources import parse_source
from inspector.store.database import FlagStore, ModelRef
from layout_check import field_layout_problems, themed  # noqa: F401  (fixture)
from support import SHIPPED_ID, SHIPPED_VERSION, engine  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
NO_AUTO = FlagPolicy(auto=False)
READY_S = 60.0


class Agent:
    """``python -m inspector.agent`` on 127.0.0.1 with TLS, one inference thread, no mDNS;
    output in files (a full pipe would stall it). ``start()`` again after ``kill()`` reuses
    the port and the data folder."""

    def __init__(self, root: Path):
        self.root, self.data = root, root / "data"
        self.port, self.proc, self.runs = 0, None, 0
        self.cert_sha256 = ""

    def start(self) -> "Agent":
        self.runs += 1
        out, err = self.root / f"out{self.runs}.txt", self.root / f"err{self.runs}.txt"
        env = {**os.environ, "HOME": str(self.root), "XDG_CONFIG_HOME": str(self.root / "config"),
               "XDG_DATA_HOME": str(self.root / "share")}
        with open(out, "wb") as fo, open(err, "wb") as fe:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "inspector.agent", "--source", str(sample_video()), "--model",
                 str(default_model()), "--port", str(self.port), "--data", str(self.data), "--host", "127.0.0.1",
                 "--no-mdns", "--threads", "1", "--name", "test-agent"],
                cwd=REPO, env=env, stdout=fo, stderr=fe)
        deadline = time.monotonic() + READY_S
        while True:
            line = out.read_text().splitlines()[:1]
            if line and line[0].startswith("AGENT READY"):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"agent did not start: {err.read_text()[-3000:]}")
            time.sleep(0.1)
        fields = dict(re.findall(r"(\w+)=(\S+)", line[0]))
        assert fields["tls"] == "1"
        self.port, self.cert_sha256 = int(fields["port"]), fields["cert_sha256"]
        return self

    def code(self) -> str:
        return (self.data / "pairing-code.txt").read_text().strip()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for(pred, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    """No test touches the real user's config or data folders."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    a = Agent(tmp_path_factory.mktemp("agent")).start()
    yield a
    a.stop()


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return SigningKey.load_or_create(tmp_path_factory.mktemp("app") / "signing-key.pem")


@pytest.fixture(scope="module")
def paired(agent, key) -> Pairing:
    client = DeviceClient("127.0.0.1", agent.port)
    return DeviceClient("127.0.0.1", agent.port, cert_sha256=client.fetch_fingerprint()).pair(
        agent.code(), "test app", key)


def variant(folder: Path, version: str) -> Path:
    """The shipped model re-versioned (same graph), unsigned."""
    base = load_package(default_model(), verify_reference=False)
    manifest = {**base.manifest.to_dict(), "version": version, "parent_version": base.manifest.version,
                "signature": None}
    return write_package(folder / f"crack-student-{version}.crackpkg", manifest, base.onnx_bytes, base.reference,
                         verify=False)


def shipped_model_ref() -> ModelRef:
    m = load_package(default_model(), verify_reference=False).manifest
    return ModelRef(m.name, m.version, m.model_sha256)


# ---------------------------------------------------------------------------- client, no Qt

def test_pairing_refuses_a_wrong_code_then_pairs_and_is_saved_privately(agent, key, tmp_path):
    client = DeviceClient("127.0.0.1", agent.port)
    fp = client.fetch_fingerprint()
    assert fp == agent.cert_sha256                      # what the user compares with the agent's output
    pinned = DeviceClient("127.0.0.1", agent.port, cert_sha256=format_fingerprint(fp))   # "ab12 cd34 …" accepted
    code = agent.code()
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    with pytest.raises(DeviceError, match="wrong pairing code") as exc:
        pinned.pair(wrong, "test app", key)
    assert exc.value.api is not None and exc.value.api.status in (401, 403)
    with pytest.raises(DeviceError, match="digits"):
        pinned.pair("12ab", "test app", key)             # refused here, never sent
    pairing = pinned.pair(code, "test app", key)
    assert pairing.cert_sha256 == fp and pairing.tls and pairing.token
    assert pairing.agent_name == "test-agent" and pairing.port == agent.port

    store = PairingStore()                               # the default location, under XDG_CONFIG_HOME
    assert store.root == tmp_path / "config" / "crack-inspector"
    assert store.signing_key_path == store.root / "signing-key.pem"
    store.save(pairing)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.get(pairing.agent_id) == pairing and store.find("127.0.0.1", agent.port) == pairing
    assert PairingStore(store.root).all() == [pairing]
    store.save(Pairing(**{**pairing.to_dict(), "token": "renewed"}))   # same agent: replaced, not added
    assert [p.token for p in store.all()] == ["renewed"]
    assert store.forget(pairing.agent_id) and store.all() == [] and not store.forget(pairing.agent_id)
    assert [p.name for p in store.root.iterdir()] == ["devices.json"]   # no temporary files left

    with pytest.raises(DeviceError) as exc:
        DeviceClient("127.0.0.1", agent.port, cert_sha256=fp, token="not-a-token").status()
    assert exc.value.api.status == 401


def test_a_wrong_certificate_fingerprint_is_refused(agent, paired):
    wrong = "0" * 64
    impostor = DeviceClient("127.0.0.1", agent.port, cert_sha256=wrong, token=paired.token)
    with pytest.raises(FingerprintMismatch, match="different TLS certificate"):
        impostor.status()
    with pytest.raises(FingerprintMismatch):
        impostor.stream()
    feed = DeviceFeed(Pairing(**{**paired.to_dict(), "cert_sha256": wrong}), backoff=(0.1, 0.2))
    feed.start()
    try:
        wait_for(lambda: feed.status.state == "ended", 15, "the feed to give up")
        assert "different TLS certificate" in feed.status.message and feed.latest(timeout=0.1) is None
    finally:
        feed.stop()


def test_nothing_is_sent_before_the_certificate_is_checked(agent, paired):
    """A TLS server with the agent's own certificate, recording what arrives: with the right pin
    the request (and its token) arrives; with a wrong pin not a single byte does."""
    import socket
    import ssl
    import threading

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(agent.data / "identity" / "cert.pem", agent.data / "identity" / "key.pem")
    received = []

    def serve(srv):
        for _ in range(2):
            conn, _ = srv.accept()
            data = b""
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(5)
                    while b"\r\n\r\n" not in data and (chunk := tls.recv(4096)):
                        data += chunk
            except OSError:
                pass
            received.append(data)

    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        thread = threading.Thread(target=serve, args=(srv,), daemon=True)
        thread.start()
        with pytest.raises(DeviceError):                 # the pin matches; this server just hangs up
            DeviceClient("127.0.0.1", port, cert_sha256=paired.cert_sha256, token=paired.token).status()
        with pytest.raises(FingerprintMismatch):
            DeviceClient("127.0.0.1", port, cert_sha256="ab" * 32, token=paired.token).status()
        thread.join(10)
    assert received[0].startswith(b"GET /api/v1/status") and paired.token.encode() in received[0]
    assert received[1] == b""


def test_status_and_stream_through_live_inspector_into_the_flag_store(agent, paired, tmp_path):
    client = DeviceClient.from_pairing(paired)
    deadline = time.monotonic() + 60
    while (status := client.status()).model is None and time.monotonic() < deadline:
        time.sleep(0.2)   # the agent reports its model and provider once the model passed its first frames
    assert status.agent_id == paired.agent_id and status.camera["source"] == "sample_inspection.avi"
    assert status.provider == "CPUExecutionProvider"
    models = client.models()
    assert models.active == status.model["id"]

    results, statuses, stored, errors = [], [], [], []
    with FlagStore(tmp_path / "flags") as store:
        live = LiveInspector(None, DeviceFeed(paired), store, Flagger(NO_AUTO), on_result=results.append,
                             on_status=statuses.append, on_flag_stored=stored.append, on_error=errors.append)
        live.start()
        try:
            wait_for(lambda: len(results) >= 3, 40, "results from the device")
            assert live.flag_current(location="pier 3") is not None
        finally:
            live.stop()                                  # drains the flag write
    r = results[-1]
    assert r.frame.rgb.shape == (480, 640, 3) and r.result.heatmap.shape == (480, 640)
    assert len(r.result.tiles) == 12 and 0.0 <= r.result.crack_prob_max <= 1.0
    assert r.result.heatmap.max() <= 1.0 and r.result.timings["total"] > 0
    assert r.link is not None and r.link.link_ms >= 0 and r.link.capture_ms >= r.link.link_ms
    assert r.link.provider == "CPUExecutionProvider"
    assert r.frame.t_capture <= r.t_inferred
    assert r.frame.source == "device test-agent / sample_inspection.avi"
    seqs = [x.frame.seq for x in results]
    assert seqs == sorted(set(seqs))
    device_model = ModelRef(status.model["name"], status.model["version"], status.model["sha256"])
    assert r.model == device_model == shipped_model_ref()
    assert [s.state for s in statuses][:2] in (["connecting", "live"], ["live"])
    assert errors == [] and len(stored) == 1
    rec = stored[0]
    assert rec.reason == "manual" and rec.location == "pier 3" and rec.model == device_model
    assert rec.source.startswith("device test-agent") and (rec.width, rec.height) == (640, 480)


def test_push_a_signed_model_activate_and_roll_back(agent, paired, key, tmp_path):
    base = load_package(default_model(), verify_reference=False)
    package = variant(tmp_path, "1.5.0-int8")
    client = DeviceClient.from_pairing(paired)

    with pytest.raises(DeviceError, match="does not trust") as exc:   # a key the device never paired with
        client.push(package, SigningKey.generate())
    assert exc.value.api is not None and exc.value.api.status == 403

    progress = []
    info = client.push(package, key, lambda sent, total: progress.append((sent, total)))
    size = progress[-1][1]
    assert progress[-1] == (size, size) and len(progress) >= 2
    assert [s for s, _ in progress] == sorted(s for s, _ in progress)
    assert info.id == "crack-student-1.5.0-int8" and info.version == "1.5.0-int8"
    assert info.signed_by == key.key_id and info.sha256 == base.manifest.model_sha256
    before = client.models()
    assert info.id in {m["id"] for m in before.models} and before.active != info.id   # stored, not active

    feed = DeviceFeed(paired)
    feed.start()
    try:
        assert client.activate(info.id).active == info.id
        wait_for(lambda: (feed.latest() is not None and feed.latest().model.version == "1.5.0-int8"), 30,
                 "frames from the activated model")
        assert client.status().model["id"] == info.id
        assert client.rollback().active == before.active
        wait_for(lambda: feed.latest().model.version == base.manifest.version, 30, "frames after the rollback")
    finally:
        feed.stop()
    with pytest.raises(DeviceError) as exc:
        client.activate("no-such-model-1.0")
    assert exc.value.api.status == 404
    assert client.install(package, key, activate=False) == (info, False)   # same version, same model: no upload


def test_the_feed_reconnects_by_itself_after_the_agent_is_killed(agent, paired):
    states = []
    feed = DeviceFeed(paired, backoff=(0.2, 1.0), on_status=lambda s: states.append(s.state))
    feed.start()
    try:
        first = feed.latest(timeout=30)
        assert first is not None and feed.status.state == "live"
        agent.kill()
        wait_for(lambda: feed.status.state == "reconnecting", 15, "reconnecting")
        assert "attempt" in feed.status.message and feed.status.retry_in is not None
        last = feed.latest().seq
        agent.start()                                    # same port, same data folder: same certificate, token
        wait_for(lambda: feed.latest(after_seq=last) is not None, 60, "frames after the restart")
        assert feed.status.state == "live"
    finally:
        feed.stop()
    assert states[:2] == ["connecting", "live"] and states[-1] == "stopped"
    assert states.index("reconnecting") < len(states) - 2 and "live" in states[states.index("reconnecting"):]


def test_resolve_device_needs_a_saved_pairing(paired):
    from inspector.qt.main import StartupError, resolve_device

    store = PairingStore()
    with pytest.raises(StartupError, match="not paired"):
        resolve_device(paired.address, store)
    with pytest.raises(StartupError, match="port"):
        resolve_device("127.0.0.1:http", store)
    store.save(paired)
    assert resolve_device(paired.address) == paired
    assert parse_address("[::1]:8443") == ("::1", 8443) and parse_address("jetson.local") == ("jetson.local", 8443)


# ---------------------------------------------------------------------------- Qt (offscreen)

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
    ref = shipped_model_ref()
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
    assert panel.connect_button.isEnabled() and not panel.rollback_button.isEnabled()
    assert w.errors == []


def test_window_opens_on_a_paired_device_and_pushes_and_rolls_back(window, qtbot, paired, key, tmp_path):
    from inspector.qt.main import resolve_device

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
    from inspector.qt.main import resolve_device

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
