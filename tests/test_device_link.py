"""The app ↔ device link against a real agent process on loopback (TLS), no Qt: pairing,
pinning, status, the stream through DeviceFeed and LiveInspector into a flag store, reconnecting
after the agent is killed, pushing / activating / rolling back a signed model, and resolving
``--device HOST:PORT`` to a saved pairing. The Qt side: ``test_device_link_qt.py``."""
import stat
import time

import pytest

from device_link_support import agent, key, paired, private_home  # noqa: F401  (fixtures)
from device_link_support import shipped_model_ref, variant, wait_for
from inspector.edge.package import load_package
from inspector.link.client import DeviceClient, Pairing
from inspector.link.connection import DeviceError, FingerprintMismatch, format_fingerprint, parse_address
from inspector.link.pairing import PairingStore
from inspector.link.remote import DeviceFeed
from inspector.link.signing import SigningKey
from inspector.live.flagging import Flagger, FlagPolicy
from inspector.live.loop import LiveInspector
from inspector.paths import default_model
from inspector.store.database import FlagStore, ModelRef

NO_AUTO = FlagPolicy(auto=False)


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
    from inspector.qt.startup import StartupError, resolve_device

    store = PairingStore()
    with pytest.raises(StartupError, match="not paired"):
        resolve_device(paired.address, store)
    with pytest.raises(StartupError, match="port"):
        resolve_device("127.0.0.1:http", store)
    store.save(paired)
    assert resolve_device(paired.address) == paired
    assert parse_address("[::1]:8443") == ("::1", 8443) and parse_address("jetson.local") == ("jetson.local", 8443)
