"""The demo device (``inspector --demo``): a real agent on loopback, paired with the code it wrote
to its data folder, streaming verdicts; stopped without leaving a process behind; failures told.

No Qt first (:class:`inspector.link.demo.DemoDevice`), then the window (offscreen) started with the demo.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from inspector.link.demo import PID_FILE, DemoDevice, DemoError, agent_program, demo_data_dir
from inspector.link.client import DeviceClient
from inspector.link.pairing import PairingStore, client_name
from inspector.live.flagging import Flagger, FlagPolicy
from inspector.paths import sample_video
from inspector.capture.sources import parse_source
from inspector.store.database import FlagStore
from agent_support import signed_variant
from support import SHIPPED_ID, SHIPPED_VERSION, engine  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def user_dirs(tmp_path, monkeypatch):
    """The per-user folders in tmp: nothing here touches the real pairings or demo data."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))


def agents_on(data: Path) -> list[psutil.Process]:
    """Running agent processes (any parent) on the data folder ``data``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if "inspector.agent" in cmd and str(data) in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# ---------------------------------------------------------------------------- no Qt

def test_demo_device_starts_pairs_streams_and_stops_without_a_trace(tmp_path):
    data, pairings = tmp_path / "demo", PairingStore(tmp_path / "app-config")
    t0 = time.perf_counter()
    with DemoDevice(pairings, data=data, threads=1) as demo:
        pairing = demo.pairing
        status = demo.wait_live(60)
        with DeviceClient.from_pairing(pairing).stream() as stream:
            header, jpeg, heat = next(stream)
        first_frame_s = time.perf_counter() - t0
        pid = demo.pid
        assert agents_on(data)[0].pid == pid
        # a real pairing: pinned TLS on loopback, saved, and the agent knows this app by name
        assert (pairing.host, pairing.tls, pairing.agent_name) == ("127.0.0.1", True, "demo-device")
        assert pairing.cert_sha256 == demo.ready.cert_sha256 and pairings.all() == [pairing]
        clients = json.loads((data / "identity" / "clients.json").read_text())["clients"]
        assert [c["name"] for c in clients] == [client_name()]
        # the code was used: the agent made a new one, and the old one no longer pairs
        assert (data / "pairing-code.txt").read_text().strip() != demo.ready.pairing_code
        # the shipped model in service, frames flowing, verdicts in the stream
        assert status.model["id"] == SHIPPED_ID and status.fps > 0
        assert header.tiles and 0.0 <= header.crack_prob_max <= 1.0 and header.model_id == SHIPPED_ID
        assert "sample_inspection.avi" in status.camera["source"]
        assert (data / PID_FILE).read_text().split() == [str(pid), str(os.getpid())]
        # the app's key was paired: a model it signs and pushes is accepted and goes live
        client = DeviceClient.from_pairing(pairing)
        info = client.push(signed_variant(tmp_path / "v.crackpkg", None, version="1.5.0-int8"), pairings.signing_key())
        client.activate(info.id)
        assert client.status().model["version"] == "1.5.0-int8"
        # while a model update trains on this laptop the demo device yields: every thread at nice 19
        assert demo.lower_priority()
        tids = [t.id for t in psutil.Process(pid).threads()]
        assert len(tids) > 1 and {os.getpriority(os.PRIO_PROCESS, tid) for tid in tids} == {19}
        assert client.status().fps >= 0      # and it still serves
    assert not demo.running and gone(pid) and agents_on(data) == []
    assert not demo.lower_priority()         # no agent, nothing to lower
    assert not (data / PID_FILE).exists() and demo.failure() is None
    log = (data / "agent.log").read_text()
    assert "Traceback" not in log and "stopped" in log
    print(f"demo device: start to first frame {first_frame_s:.2f} s")

    again = DemoDevice(pairings, data=data, threads=1)      # the same folder: the same device, one pairing
    try:
        second = again.start()
        assert second.agent_id == pairing.agent_id and second.cert_sha256 == pairing.cert_sha256
        assert pairings.all() == [second] and second.token != pairing.token
        status = again.wait_live(60)
        assert status.agent_id == pairing.agent_id and status.model["version"] == "1.5.0-int8"   # still active
    finally:
        assert again.stop() == 0


def test_the_default_data_folder_is_per_user_and_the_agent_runs_on_loopback(tmp_path):
    assert demo_data_dir() == tmp_path / "share" / "crack-inspector" / "demo-device"
    cmd = DemoDevice(PairingStore(tmp_path / "c")).command()
    assert cmd[:3] == [sys.executable, "-m", "inspector.agent"] and "--no-mdns" in cmd
    args = [a for a in cmd[3:] if a != "--no-mdns"]
    opts = dict(zip(args[::2], args[1::2]))
    assert opts["--host"] == "127.0.0.1" and opts["--port"] == "0" and opts["--name"] == "demo-device"
    assert opts["--data"] == str(demo_data_dir()) and opts["--source"] == str(sample_video())
    assert opts["--model"].endswith("-int8.crackpkg")


def test_a_frozen_app_runs_the_agent_executable_beside_it(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bundle" / "inspector"))
    assert agent_program() == [str(tmp_path / "bundle" / "inspector-agent")]


def test_an_agent_that_exits_at_start_is_reported_with_its_log(tmp_path):
    program = [sys.executable, "-c", "import sys; print('no usable model here', file=sys.stderr); sys.exit(3)"]
    demo = DemoDevice(PairingStore(tmp_path / "c"), data=tmp_path / "demo", program=program)
    with pytest.raises(DemoError, match=r"did not start \(exit status 3\)[\s\S]*no usable model here"):
        demo.start()
    assert not demo.running and PairingStore(tmp_path / "c").all() == []


def test_an_agent_that_never_gets_ready_is_stopped_and_reported(tmp_path):
    program = [sys.executable, "-c", "import sys, time; print('loading…', file=sys.stderr, flush=True); "
                                     "time.sleep(60)"]
    demo = DemoDevice(PairingStore(tmp_path / "c"), data=tmp_path / "demo", program=program, start_timeout=2)
    t0 = time.monotonic()
    with pytest.raises(DemoError, match=r"did not start within 2 s[\s\S]*loading…"):
        demo.start()
    assert time.monotonic() - t0 < 20 and not demo.running and gone(demo.pid)


def test_a_crashed_demo_device_says_so(tmp_path):
    demo = DemoDevice(PairingStore(tmp_path / "c"), data=tmp_path / "demo", threads=1)
    demo.start()
    try:
        assert demo.failure() is None
        os.kill(demo.pid, signal.SIGKILL)
        wait_for(lambda: demo.failure() is not None, 10, "the crash to show")
        assert "stopped unexpectedly (killed by SIGKILL)" in demo.failure() and str(demo.log_path) in demo.failure()
        with pytest.raises(DemoError, match="stopped unexpectedly"):
            demo.wait_live(5)
    finally:
        demo.stop()
    assert demo.failure() is None          # stopped by us now: no longer a crash to report


ORPHAN_MAKER = """
import sys
from inspector.link.demo import DemoDevice
from inspector.link.pairing import PairingStore
demo = DemoDevice(PairingStore(sys.argv[1]), data=sys.argv[2], threads=1)
demo.start()
print(demo.pid, flush=True)
sys.stdin.read()
"""


def test_a_demo_agent_left_behind_by_a_killed_app_is_stopped_by_the_next_start(tmp_path):
    data = tmp_path / "demo"
    app = subprocess.Popen([sys.executable, "-c", ORPHAN_MAKER, str(tmp_path / "c1"), str(data)], cwd=REPO,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        orphan = int(app.stdout.readline())
    finally:
        app.kill()                          # SIGKILL: no atexit, the agent is left running
        app.wait()
    assert not gone(orphan) and agents_on(data)
    with DemoDevice(PairingStore(tmp_path / "c2"), data=data, threads=1) as demo:
        assert demo.pid != orphan and gone(orphan)
        assert [p.pid for p in agents_on(data)] == [demo.pid]
    assert agents_on(data) == []


def test_a_running_demo_of_a_live_app_is_not_touched(tmp_path):
    data = tmp_path / "demo"
    with DemoDevice(PairingStore(tmp_path / "c1"), data=data, threads=1) as first:
        second = DemoDevice(PairingStore(tmp_path / "c2"), data=data, threads=1)
        with pytest.raises(DemoError, match="another agent is running on the data folder"):
            second.start()
        assert first.running and first.failure() is None


# ---------------------------------------------------------------------------- the window (offscreen)

def demo_window(qtbot, engine, tmp_path, store: FlagStore | None = None, **options):
    """The window every test here starts the demo device from: the sample video, no automatic
    flags, its own pairings in ``tmp_path``, shown and started. ``store``: its flag store (default:
    an empty one in ``tmp_path``); ``options``: more MainWindow options. Returns (window, store);
    the caller shuts the window down and closes the store."""
    from inspector.qt.window import MainWindow

    store = FlagStore(tmp_path / "flags") if store is None else store
    w = MainWindow(engine, store, Flagger(FlagPolicy(auto=False)), parse_source(sample_video()),
                   pairings=PairingStore(tmp_path / "app-config"), browse=lambda timeout: [], **options)
    qtbot.addWidget(w)
    w.show()
    w.start()
    return w, store


@pytest.fixture
def window(qtbot, engine, tmp_path):  # noqa: F811 - the fixture from support
    w, store = demo_window(qtbot, engine, tmp_path)
    yield w
    w.shutdown()
    store.close()


def wait_demo_on_screen(w, qtbot, timeout_ms: int = 120000) -> None:
    """Until the window shows results from the demo device; on a timeout, what the window says."""
    def on_screen():
        return w.device is not None and w.view.live is not None and w.view.live.link is not None
    try:
        qtbot.waitUntil(on_screen, timeout=timeout_ms)
    except Exception:
        raise AssertionError(f"no demo frames: demo {w.demo.state}, device {w.device}, errors {w.errors}, "
                             f"banner {w.error_banner.text.text()!r}, notice {w.notice.text.text()!r}") from None


def test_the_window_with_the_demo_shows_its_verdicts_and_stops_it(window, qtbot, tmp_path):
    from PySide6.QtCore import Qt

    w, data = window, tmp_path / "demo"
    w.start_demo(data=data, threads=1)                              # what ``inspector --demo`` does
    assert w.device_panel.demo_button.text() == "Starting the demo device…"
    wait_demo_on_screen(w, qtbot)
    shown = w.frames_shown
    qtbot.waitUntil(lambda: w.frames_shown >= shown + 3, timeout=20000)
    assert w.device.agent_name == "demo-device" and w.source.kind == "device"
    assert w.device_panel.pairings.all() == [w.device]
    live = w.view.live
    assert live.model.version == SHIPPED_VERSION and live.result.tiles and live.link.agent_name == "demo-device"
    assert w.hud.source.value.text().startswith("device demo-device")
    assert "Demo device" in w.notice.text.text() and str(data) in w.notice.text.text()
    assert w.device_panel.demo_button.text() == "■ Stop demo device"
    assert w.device_panel.devices.currentText().startswith("✓ demo-device")

    w.view.setFocus()
    with qtbot.waitSignal(w.flagShown, timeout=10000) as blocker:   # flags carry the device's verdict
        qtbot.keyClick(w.view, Qt.Key_Space)
    assert blocker.args[0].model.version == SHIPPED_VERSION and blocker.args[0].source.startswith("device demo-device")

    pid = w.demo.device.pid
    w.device_panel.demo_button.click()                              # stop: back to the local video first
    qtbot.waitUntil(lambda: w.demo.state == "off" and gone(pid), timeout=20000)
    assert w.device is None and w.device_panel.demo_button.text() == "▶ Start demo device"
    qtbot.waitUntil(lambda: w.view.live is not None and w.view.live.link is None, timeout=20000)
    assert w.errors == [] and agents_on(data) == []


def test_the_window_reports_a_crashed_demo_device(window, qtbot, tmp_path):
    w, data = window, tmp_path / "demo"
    w.start_demo(data=data, threads=1)
    wait_demo_on_screen(w, qtbot)
    w.device_panel.disconnect_button.click()                         # off screen, still running: says so
    assert w.device is None and "keeps running" in w.notice.text.text() and w.demo.state == "on"
    os.kill(w.demo.device.pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: w.error_banner.isVisible() and "stopped unexpectedly" in w.error_banner.text.text(),
                    timeout=10000)
    assert "killed by SIGKILL" in w.error_banner.text.text() and str(data / "agent.log") in w.error_banner.text.text()
    assert w.demo.state == "off" and w.device_panel.demo_button.isEnabled()


def test_the_window_shutdown_stops_the_demo_device(qtbot, engine, tmp_path):  # noqa: F811
    w, store = demo_window(qtbot, engine, tmp_path)
    w.start_demo(data=tmp_path / "demo", threads=1)
    qtbot.waitUntil(lambda: w.device is not None, timeout=60000)
    pid = w.demo.device.pid
    w.close()                                                        # closeEvent -> shutdown
    store.close()
    assert gone(pid) and agents_on(tmp_path / "demo") == []


def test_demo_and_device_are_one_or_the_other(capsys):
    from inspector.qt.main import build_parser, main

    assert build_parser().parse_args(["--demo"]).demo
    with pytest.raises(SystemExit) as exc:
        main(["--demo", "--device", "127.0.0.1:8443"])
    assert exc.value.code == 2 and "--demo and --device" in capsys.readouterr().err


def test_update_model_goes_live_on_the_demo_device(qtbot, engine, tmp_path, monkeypatch):  # noqa: F811
    """Update model… (the fake job of test_update_view in place of ``distill update``): the gate
    passes, the new model is signed, pushed and activated on the demo device, the view follows."""
    from update_support import FAKE, NEW_VERSION, RUN_MS, one_thread_engine, reviewed_store

    from inspector.update.history import ModelHistory
    from support import sample_video_results

    monkeypatch.setenv("FAKE_UPDATE_MODE", "pass")
    store = reviewed_store(tmp_path / "flags", sample_video_results(engine, 36, 15), engine)
    w, store = demo_window(qtbot, engine, tmp_path, store, history=ModelHistory(tmp_path / "user-data"))
    w.update_options = {"program": FAKE, "make_engine": one_thread_engine}   # read when the dialog opens
    try:
        w.start_demo(data=tmp_path / "demo", threads=1)
        wait_demo_on_screen(w, qtbot)
        w.workspaces.setCurrentIndex(1)
        w.review.filters.update_model.click()
        d = w.update_dialog
        notices = []     # what the window said when the job started: the demo device yields its cores
        d.runningChanged.connect(lambda running: running and notices.append(w.notice.text.text()))
        qtbot.waitUntil(lambda: d.start_button.isEnabled(), timeout=30000)
        with qtbot.waitSignal(d.deployed, timeout=RUN_MS) as deployed:
            d.start_button.click()
        assert notices and "the demo device on this laptop runs at the lowest priority" in notices[0], notices
        assert os.getpriority(os.PRIO_PROCESS, w.demo.device.pid) == 19
        assert deployed.args[0] == f"crack-student {NEW_VERSION} live on demo-device"
        assert w.engine.manifest.version == SHIPPED_VERSION                 # the device was updated, not the laptop
        status = DeviceClient.from_pairing(w.device).status()
        assert status.model["version"] == f"{NEW_VERSION}-int8" and status.model["signed_by"]
        qtbot.waitUntil(lambda: w.view.live is not None and w.view.live.model.version == f"{NEW_VERSION}-int8",
                        timeout=30000)
        d.close()
    finally:
        w.shutdown()
        store.close()
