"""The device agent end to end: the real ``python -m inspector.agent`` on loopback, spoken to with
plain ``http.client`` (the app's client library is tested elsewhere).

One agent over plain HTTP (``--insecure-http``) and one over TLS, each started once per test
class and stopped with SIGTERM at its end (which must exit 0, also with a stream open). Both
run the shipped model on the sample video with one inference thread.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import ssl
import threading
import time

import pytest
from agent_support import (PROTECTED, REPO, Agent, PinnedHTTPSConnection, check_frame, error_code, open_stream,
                           pair, signed_variant, stopped_cleanly, wait_status)

from inspector.link import framing, openapi, protocol
from inspector.link.protocol import API
from support import SHIPPED_ID

# ---------------------------------------------------------------------------- plain HTTP


@pytest.fixture(scope="class")
def agent(tmp_path_factory):
    a = Agent(tmp_path_factory.mktemp("agent") / "data", tls=False)
    yield a
    if a.proc.poll() is None:
        a.stop()


@pytest.fixture(scope="class")
def token(agent):
    status, _, body = pair(agent)
    assert status == 200, body
    resp = protocol.PairResponse.from_json(body)
    assert resp.cert_sha256 is None  # plain HTTP: nothing to pin
    return resp.token


class TestPlainHTTP:
    def test_ready_line_and_open_openapi(self, agent):
        assert not agent.tls and agent.port > 0
        assert agent.code == agent.pairing_code_file()
        status, headers, body = agent.request("GET", f"{API}/openapi.json")
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        assert json.loads(body) == json.loads(json.dumps(openapi.document()))

    def test_status(self, agent, token):
        st = wait_status(agent, token, lambda s: s.fps > 0 and any(e["kind"] == "in-service" for e in s.events))
        assert st.model["id"] == SHIPPED_ID and st.model["signed_by"] is None
        assert st.camera["state"] == "live" and st.camera["source"] == "sample_inspection.avi"
        assert st.provider == "CPUExecutionProvider" and st.fps > 0 and st.uptime_s > 0
        assert any(e["kind"] == "in-service" for e in st.events)
        status, _, body = agent.request("GET", f"{API}/models", token=token)
        assert status == 200 and protocol.ModelList.from_json(body).active == st.model["id"]

    def test_stream_delivers_frames(self, agent, token):
        conn, resp = open_stream(agent, token)
        try:
            assert resp.status == 200 and resp.getheader("Content-Type") == protocol.STREAM_CONTENT_TYPE
            assert resp.getheader("Content-Length") is None
            seqs = []
            for _ in range(4):
                header, jpeg, heat = framing.read_frame(resp)
                check_frame(header, jpeg, heat)
                assert header.model_id == SHIPPED_ID and (header.width, header.height) == (640, 480)
                seqs.append(header.seq)
            assert seqs == sorted(set(seqs))
            st = wait_status(agent, token, lambda s: s.clients == 1)
            assert st.clients == 1
        finally:
            resp.close()
            conn.close()
        assert wait_status(agent, token, lambda s: s.clients == 0).clients == 0

    def test_every_endpoint_refuses_missing_or_wrong_token(self, agent, token):
        wrong = ["x" * 43, token[:-1] + ("A" if token[-1] != "A" else "B"), token + "A", token[:20]]
        # an Authorization header that does not carry this token as a bearer token, in any form
        malformed = [f"Basic {token}", f"bearer{token}", f"Token {token}", "Bearer", "Bearer ", "Bearer  \t ",
                     f"Bearer {token} {token}", f"Bearer {token},x", f"{token}", f"Bearer\t{token}",
                     f"Bearer {token[:10]}\u00e9{token[11:]}", "Bearer %00", ""]
        assert set(PROTECTED) == set(protocol.ENDPOINTS) - protocol.OPEN_ENDPOINTS and PROTECTED
        for method, path in protocol.ENDPOINTS:
            body = b"{}" if method == "POST" else None
            if (method, path) in protocol.OPEN_ENDPOINTS:
                # open: no credentials needed, and wrong ones do not make it refuse either
                for t in (None, "x" * 43):
                    status, _, data = agent.request(method, path, body, token=t)
                    assert status != 401 and status < 500, (method, path, t, data)
                    if status >= 400:
                        assert error_code(data) == "bad_request"
                continue
            for t in [None, *wrong]:
                status, headers, data = agent.request(method, path, body, token=t)
                assert status == 401, (method, path, t, data)
                assert error_code(data) == "unauthorized" and headers["WWW-Authenticate"].startswith("Bearer")
            for value in malformed:
                status, headers, data = agent.request(method, path, body,
                                                      headers={"Authorization": value.encode("utf-8")})
                assert status == 401, (method, path, value, data)
                assert error_code(data) == "unauthorized"
            # the right token works on the same connection settings (the 401s were about the token)
            if method == "GET" and path != f"{API}/stream":
                assert agent.request(method, path, token=token)[0] == 200
        # auth comes first: without a token nothing tells what exists
        for method, path in [("GET", f"{API}/nope"), ("GET", "/"), ("DELETE", f"{API}/models"),
                             ("POST", f"{API}/status")]:
            status, _, body = agent.request(method, path)
            assert status == 401 and error_code(body) == "unauthorized", (method, path)
        # but the path of an open endpoint is public; a method the agent implements nowhere is 501
        status, headers, body = agent.request("GET", f"{API}/pair")
        assert (status, error_code(body), headers["Allow"]) == (405, "method_not_allowed", "POST")
        status, _, body = agent.request("PUT", f"{API}/status")
        assert (status, error_code(body)) == (501, "http_501")
        # an upload too large to accept is refused before the body is sent
        status, _, body = agent.request("POST", f"{API}/models", headers={"Content-Length": str(10**9)})
        assert status == 401
        # a client that sends a whole (8 MB) package before reading gets the 401, not a reset
        status, _, body = agent.request("POST", f"{API}/models", os.urandom(8 << 20))
        assert status == 401 and error_code(body) == "unauthorized"

    def test_routing_and_body_errors(self, agent, token):
        def req(method, path, body=None, headers=None):
            status, hdrs, data = agent.request(method, path, body, token=token, headers=headers)
            return status, error_code(data), hdrs

        assert req("GET", f"{API}/nope")[:2] == (404, "not_found")
        status, code, hdrs = req("DELETE", f"{API}/models")
        assert (status, code, hdrs["Allow"]) == (405, "method_not_allowed", "GET, POST")
        assert req("POST", f"{API}/models/activate", b"{", {"Content-Type": "application/json"})[:2] == (400, "bad_request")
        assert req("POST", f"{API}/models/activate", {"id": "../etc"})[:2] == (400, "bad_request")
        assert req("POST", f"{API}/models/activate", {"id": "x", "extra": 1})[:2] == (400, "bad_request")
        assert req("POST", f"{API}/models/activate", {"id": "no-such-model"})[:2] == (404, "unknown_model")
        assert req("POST", f"{API}/models/activate", headers={"Transfer-Encoding": "chunked"})[0] == 411
        big = b"{" + b" " * protocol.MAX_JSON_BYTES + b"}"
        assert req("POST", f"{API}/models/activate", big)[:2] == (413, "too_large")
        assert req("POST", f"{API}/models", headers={"Content-Length": str(protocol.MAX_PACKAGE_BYTES + 1)})[:2] == \
            (413, "too_large")
        assert req("POST", f"{API}/models", b"not a zip")[:2] == (422, "invalid_package")
        assert req("POST", f"{API}/models/rollback")[:2] == (409, "no_previous")
        # what the stdlib parser refuses (here an unknown method) still gets the JSON error shape
        with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as sock:
            sock.sendall(b"BOGUS /api/v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 501 ") and error_code(body) == "http_501"

    def test_keep_alive(self, agent, token):
        conn = agent.connection()
        try:
            for _ in range(3):
                conn.request("GET", f"{API}/models", headers={"Authorization": f"Bearer {token}"})
                with conn.getresponse() as resp:
                    assert resp.status == 200 and not resp.will_close
                    resp.read()
        finally:
            conn.close()

    def test_upload_activate_rollback_while_streaming(self, agent, tmp_path):
        from inspector.link.signing import SigningKey

        key = SigningKey.generate()
        status, _, body = pair(agent, name="pusher", key=key.public_b64())
        assert status == 200
        tok = protocol.PairResponse.from_json(body).token
        path = signed_variant(tmp_path / "new.crackpkg", key, version="1.1.1-test")

        status, _, body = agent.request("POST", f"{API}/models", path.read_bytes(), token=tok,
                                        headers={"Content-Type": protocol.PACKAGE_CONTENT_TYPE})
        assert status == 200, body
        info = protocol.ModelInfo.from_json(body)
        assert info.id == "crack-student-1.1.1-test" and info.signed_by == key.key_id

        conn, resp = open_stream(agent, tok)
        seen: list[str] = []
        failures: list[BaseException] = []

        def read() -> None:
            try:
                while True:
                    seen.append(framing.read_frame(resp)[0].model_id)
            except (EOFError, OSError, ValueError) as exc:  # ends when the test closes the connection
                if not stop.is_set():
                    failures.append(exc)

        stop = threading.Event()
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            status, _, body = agent.request("POST", f"{API}/models/activate", {"id": info.id}, token=tok)
            assert status == 200, body
            assert protocol.ModelList.from_json(body).active == info.id
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (not seen or seen[-1] != info.id):
                time.sleep(0.05)
            status, _, body = agent.request("POST", f"{API}/models/rollback", token=tok)
            assert status == 200, body
            listing = protocol.ModelList.from_json(body)
            assert listing.active == SHIPPED_ID and info.id in [m["id"] for m in listing.models]
            n = len(seen)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (len(seen) < n + 3 or seen[-1] != listing.active):
                time.sleep(0.05)
        finally:
            stop.set()
            resp.close()
            conn.close()
            reader.join(5)
        assert not failures, failures
        # one connection saw old → new → old: the stream did not stop for the swaps
        changes = [m for i, m in enumerate(seen) if i == 0 or seen[i - 1] != m]
        assert changes == [SHIPPED_ID, info.id, SHIPPED_ID], changes
        st = wait_status(agent, tok, lambda s: True)
        kinds = [e["kind"] for e in st.events]
        assert {"stored", "activated", "rollback"} <= set(kinds)

    def test_wrong_codes_are_throttled_and_never_replace_the_code(self, agent, token):
        from inspector.agent import throttle

        first = agent.pairing_code_file()
        wrong = f"{(int(first) + 1) % 10**6:06d}"
        status, _, body = pair(agent, code=first, key="bm90IGEga2V5")
        assert (status, error_code(body)) == (400, "bad_public_key")
        assert agent.pairing_code_file() == first  # a bad key is not a guess
        for i in range(throttle.FREE_FAILURES):
            status, _, body = pair(agent, code=wrong)
            assert (status, error_code(body)) == (403, "wrong_pairing_code"), i
        # the third wrong code costs a second: the next try is refused at once, not slept on
        t0 = time.monotonic()
        status, headers, body = pair(agent, code=first)
        assert (status, error_code(body)) == (429, "too_many_attempts")
        assert int(headers["Retry-After"]) >= 1 and time.monotonic() - t0 < 5.0
        assert agent.pairing_code_file() == first  # strangers cannot rotate the code a person reads
        time.sleep(int(headers["Retry-After"]) + 0.2)
        status, _, body = pair(agent, code=first, name="second laptop")
        assert status == 200, body
        new_token = protocol.PairResponse.from_json(body).token
        second = agent.pairing_code_file()
        assert new_token != token and second != first  # a used code is replaced
        status, _, body = pair(agent, code=first)
        assert (status, error_code(body)) == (403, "wrong_pairing_code")  # the old code is dead
        assert agent.request("GET", f"{API}/status", token=new_token)[0] == 200
        assert agent.request("GET", f"{API}/status", token=token)[0] == 200  # the first client still works
        clients = json.loads((agent.data / "identity" / "clients.json").read_text())["clients"]
        assert token not in json.dumps(clients) and new_token not in json.dumps(clients)
        assert hashlib.sha256(new_token.encode()).hexdigest() in {c["token_sha256"] for c in clients}

    def test_sigterm_with_open_stream_stops_cleanly(self, agent, token):
        conn, resp = open_stream(agent, token)
        try:
            framing.read_frame(resp)
            t0 = time.monotonic()
            agent.proc.send_signal(signal.SIGTERM)
            with pytest.raises((EOFError, ConnectionError)):
                while True:
                    framing.read_frame(resp)
            assert time.monotonic() - t0 < 5.0
        finally:
            resp.close()
            conn.close()
        stopped_cleanly(agent)


# ---------------------------------------------------------------------------- TLS


@pytest.fixture(scope="class")
def tls_agent(tmp_path_factory):
    a = Agent(tmp_path_factory.mktemp("tls-agent") / "data", "--name", "jetson test", tls=True)
    yield a
    if a.proc.poll() is None:
        a.stop()


class TestTLS:
    def test_pinned_fingerprint_matches_served_cert(self, tls_agent):
        a = tls_agent
        assert a.tls
        pem = (a.data / "identity" / "cert.pem").read_text()
        assert hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest() == a.cert_sha256
        conn = a.connection()
        try:
            conn.request("GET", f"{API}/openapi.json")
            with conn.getresponse() as resp:
                assert resp.status == 200
                resp.read()
            assert conn.served_sha256 == a.cert_sha256
            assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        finally:
            conn.close()
        wrong = PinnedHTTPSConnection("127.0.0.1", a.port, "0" * 64)
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                wrong.connect()
        finally:
            wrong.close()

    def test_certificate_verifies_as_its_own_anchor(self, tls_agent):
        """Besides pinning, a standard verifying context that trusts just this certificate works
        (SAN 127.0.0.1 / localhost), so a client may use either."""
        ctx = ssl.create_default_context(cadata=(tls_agent.data / "identity" / "cert.pem").read_text())
        for host in ("127.0.0.1", "localhost"):
            conn = http.client.HTTPSConnection(host, tls_agent.port, timeout=10, context=ctx)
            try:
                conn.request("GET", f"{API}/openapi.json")
                with conn.getresponse() as resp:
                    assert resp.status == 200
                    resp.read()
            finally:
                conn.close()

    def test_pair_status_stream_over_tls(self, tls_agent):
        a = tls_agent
        status, _, body = pair(a)
        assert status == 200, body
        resp_msg = protocol.PairResponse.from_json(body)
        assert resp_msg.cert_sha256 == a.cert_sha256 and resp_msg.agent_name == "jetson test"
        tok = resp_msg.token
        st = wait_status(a, tok, lambda s: s.model is not None)
        assert st.agent_name == "jetson test" and st.agent_id == resp_msg.agent_id
        for method, path in PROTECTED:
            assert a.request(method, path)[0] == 401
        conn, resp = open_stream(a, tok)
        try:
            assert resp.status == 200
            for _ in range(2):
                check_frame(*framing.read_frame(resp))
        finally:
            resp.close()
            conn.close()

    def test_plain_http_and_silent_clients_do_not_hurt(self, tls_agent):
        a = tls_agent
        # plain HTTP to the TLS port gets no API answer
        conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=10)
        try:
            with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
                conn.request("GET", f"{API}/openapi.json")
                conn.getresponse().read()
        finally:
            conn.close()
        # a client that connects and never handshakes does not block the others
        with socket.create_connection(("127.0.0.1", a.port), timeout=10):
            assert a.request("GET", f"{API}/openapi.json")[0] == 200

    def test_sigterm(self, tls_agent):
        stopped_cleanly(tls_agent)


# ---------------------------------------------------------------------------- config


def test_config_file_and_command_line(tmp_path):
    from inspector.agent.main import AgentConfigError, main, resolve_options

    cfg = tmp_path / "agent.yaml"
    cfg.write_text("port: 9000\nno-mdns: true\ninsecure_http: true\nsource: 0\nname: from file\n")
    opts = resolve_options(["--config", str(cfg), "--port", "9100", "--data", str(tmp_path)])
    assert opts["port"] == 9100 and opts["no-mdns"] and opts["insecure-http"] and opts["source"] == "0"
    assert opts["name"] == "from file" and opts["data"] == str(tmp_path)
    # plain HTTP defaults to loopback (tokens travel in clear); TLS to every interface
    assert opts["model"].endswith(".crackpkg") and opts["host"] == "127.0.0.1"
    assert resolve_options(["--port", "9100", "--data", str(tmp_path)])["host"] == "0.0.0.0"
    # tile reuse is on unless switched off, on the command line or in the file
    assert resolve_options(["--data", str(tmp_path)])["no-tile-reuse"] is False
    assert resolve_options(["--data", str(tmp_path), "--no-tile-reuse"])["no-tile-reuse"] is True

    (tmp_path / "bad.json").write_text(json.dumps({"port": 1, "colour": "red"}))
    with pytest.raises(AgentConfigError, match="unknown key 'colour'"):
        resolve_options(["--config", str(tmp_path / "bad.json")])
    (tmp_path / "bad.yaml").write_text("port: lots\n")
    with pytest.raises(AgentConfigError, match="port must be int"):
        resolve_options(["--config", str(tmp_path / "bad.yaml")])
    assert main(["--config", str(tmp_path / "bad.json")]) == 2


@pytest.mark.parametrize("host,ok", [("127.0.0.1", True), ("127.0.0.53", True), ("::1", True),
                                     ("localhost", True), ("0.0.0.0", False), ("::", False),
                                     ("192.168.1.20", False), ("jetson.local", False)])
def test_plain_http_only_on_loopback(tmp_path, capsys, host, ok):
    from inspector.agent.main import AgentConfigError, main, resolve_options

    argv = ["--insecure-http", "--host", host, "--data", str(tmp_path)]
    if ok:
        assert resolve_options(argv)["host"] == host
        return
    with pytest.raises(AgentConfigError, match="loopback"):
        resolve_options(argv)
    assert main(argv) == 2
    assert "--insecure-http" in capsys.readouterr().err and not (tmp_path / "identity").exists()


def test_example_config_and_unit_file():
    from inspector.agent.main import OPTIONS, load_config

    opts = load_config(REPO / "resources" / "agent.example.yaml")
    assert set(opts) <= set(OPTIONS) and " ! appsink" in opts["source"]
    unit = (REPO / "resources" / "inspector-agent.service").read_text()
    assert "ExecStart=" in unit and "Restart=on-failure" in unit and "nvarguscamerasrc" in unit


# ---------------------------------------------------------------------------- discovery


def test_mdns_advertise_and_browse():
    import uuid

    from inspector.agent.discovery import DiscoveryError, browse, start_advertising

    name = f"agent-test-{uuid.uuid4().hex[:8]}"
    adv = start_advertising(name=name, port=12345, agent_id="id-1", tls=True, cert_sha256="ab" * 32)
    try:
        found = []
        for _ in range(3):
            try:
                found = [f for f in browse(1.5) if f[0] == name]
            except DiscoveryError as exc:
                pytest.skip(f"mDNS cannot browse here: {exc}")
            if found:
                break
    finally:
        adv.stop()
    if not found:
        pytest.skip("no multicast on this machine: the agent runs without discovery (logged), not tested here")
    (_, host, port, props), = found
    assert port == 12345 and host.count(".") == 3
    assert props == {"agent_id": "id-1", "name": name, "tls": "1", "cert_sha256": "ab" * 8, "api": API}


def test_browse_says_why_it_cannot_work_instead_of_finding_nothing(monkeypatch):
    """No multicast (a locked-down laptop, a phone hotspot): browse raises DiscoveryError with
    the reason, so the app says "enter host:port" and why, instead of "no device found"."""
    import zeroconf

    from inspector.agent.discovery import DiscoveryError, browse

    def no_multicast(*args, **kwargs):
        raise OSError(19, "No such device")

    monkeypatch.setattr(zeroconf, "Zeroconf", no_multicast)
    with pytest.raises(DiscoveryError, match="does not work on this network.*No such device"):
        browse(0.1)
