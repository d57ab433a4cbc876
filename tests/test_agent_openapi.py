"""The OpenAPI document says what the live agent does: schemathesis, every check, zero failures.

schemathesis (``st run``, a subprocess: its CLI is its stable interface) tests a real agent on
loopback twice, with a paired client's token and without one. What it is told, and why:

* ``unexpected-methods`` = the methods the agent implements (:data:`protocol.METHODS`). Its
  ``unsupported_method`` check wants 405 for every undeclared method, TRACE and QUERY too; the
  agent answers 501 to a method it implements on no path (RFC 9110 15.6.2, before auth) and
  405 with ``Allow`` to one of its methods on a path without it. The 501s are tested here below.
* ``GET /stream`` runs with ``max_frames`` set: without it the stream is endless by design (the
  document says so) and any generic client would hang on it.
* ``POST /models``: any bytes match ``format: binary``, but only a signed .crackpkg is a package;
  its 422 (``invalid_package``) is what a schema-valid body that is no package gets. JSON Schema
  cannot describe a zip with hashes and a signature, so the positive-data check accepts 422 there.
* With the token, ``DELETE /pairing`` and ``POST /pairing/token`` are left out: each ends the
  token the rest of the run uses (the agent's own tests cover them); the run without a token
  covers their 401s.

Nothing else is excluded. ``--max-examples`` keeps the two runs near two minutes on two busy cores.
"""
from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path

import pytest

from agent_support import Agent, error_code, pair_token, stopped_cleanly
from inspector.link import framing, openapi, protocol
from inspector.link.protocol import API

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 5                       # per operation (fuzzing; the coverage phase's cases come on top)
STREAM_FRAMES = 2
TOKEN_ENDING = ("DELETE", f"{API}/pairing"), ("POST", f"{API}/pairing/token")   # each ends the run's token


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    a = Agent(tmp_path_factory.mktemp("openapi") / "data", tls=False)
    yield a
    stopped_cleanly(a)


@pytest.fixture(scope="module")
def token(agent):
    return pair_token(agent)


def _config(path: Path) -> Path:
    methods = ", ".join(f'"{m.lower()}"' for m in sorted(protocol.METHODS))
    path.write_text(f"""
[phases.coverage]
unexpected-methods = [{methods}]

[[operations]]
include-path = "{API}/stream"
parameters = {{ "query.max_frames" = {STREAM_FRAMES} }}

[[operations]]
include-operation-id = "{_operation_id("POST", f"{API}/models")}"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "409", "422", "429"]
""")
    return path


def _operation_id(method: str, path: str) -> str:
    return openapi.document()["paths"][path][method.lower()]["operationId"]


def _schemathesis(agent: Agent, tmp_path: Path, *extra: str) -> str:
    import subprocess

    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(_config(tmp_path / "st.toml")), "run",
           f"http://127.0.0.1:{agent.port}{API}/openapi.json", "--checks", "all",
           "--max-examples", str(MAX_EXAMPLES), "--request-timeout", "20", "--seed", "13",
           "--generation-database", "none", "--no-color", "--workers", "1", *extra]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    print(" | ".join(m[0] for m in re.finditer(r"Tested: +\d+|\d+ generated.*|=+ .* in [\d.]+s =+", out)))
    assert run.returncode == 0, out[-6000:]
    assert re.search(r"Tested: +\d+", out), out[-2000:]
    return out


def test_schemathesis_with_a_paired_token(agent, token, tmp_path):
    exclude = [a for m, p in TOKEN_ENDING if (m, p) in protocol.ENDPOINTS
               for a in ("--exclude-operation-id", _operation_id(m, p))]
    out = _schemathesis(agent, tmp_path, "--header", f"Authorization: Bearer {token}", *exclude)
    assert "Authentication failed" not in out, out[-3000:]
    assert agent.request("GET", f"{API}/status", token=token)[0] == 200   # the run left the agent usable


def test_schemathesis_without_credentials(agent, tmp_path):
    # fuzzing only: the coverage phase's boundary values would all meet the same 401 (and the
    # run with the token already strips it from each operation: the ignored_auth check)
    _schemathesis(agent, tmp_path, "--max-examples", "4", "--phases", "fuzzing")


# ---------------------------------------------------------------------------- what schemathesis is not asked


def _raw(agent: Agent, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PUT", "PATCH", "OPTIONS", "QUERY", "BREW"])
def test_methods_the_agent_does_not_implement_are_501_before_auth(agent, method):
    assert method not in protocol.METHODS
    for path in (f"{API}/status", f"{API}/pair", "/nowhere"):
        status, body = _raw(agent, f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
        assert (status, error_code(body)) == (501, "http_501"), (method, path, body)


def test_its_methods_on_a_path_without_them_are_405_after_auth(agent, token):
    assert agent.request("POST", f"{API}/status")[0] == 401
    status, headers, body = agent.request("POST", f"{API}/status", token=token)
    assert (status, error_code(body), headers["Allow"]) == (405, "method_not_allowed", "GET")


def test_the_stream_ends_after_max_frames_and_refuses_a_bad_one(agent, token):
    conn = agent.connection(timeout=30)
    try:
        conn.request("GET", f"{API}/stream?max_frames=3", headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type") == protocol.STREAM_CONTENT_TYPE
        headers = [framing.read_frame(resp)[0] for _ in range(3)]
        assert [h.seq for h in headers] == sorted({h.seq for h in headers})
        with pytest.raises(EOFError):
            framing.read_frame(resp)
    finally:
        conn.close()
    # the last: an Arabic-Indic 1 (int() would take it)
    for bad in ("0", "-1", "x", "1.5", "", f"{protocol.MAX_STREAM_FRAMES + 1}", "1&max_frames=2", "%D9%A1"):
        status, _, body = agent.request("GET", f"{API}/stream?max_frames={bad}", token=token)
        assert (status, error_code(body)) == (400, "bad_request"), bad


def test_every_status_the_agent_answers_is_in_the_document(agent, token):
    doc = json.loads(agent.request("GET", f"{API}/openapi.json")[2])
    listed = lambda m, p: set(doc["paths"][p][m.lower()]["responses"])  # noqa: E731
    cases = [("POST", f"{API}/models/activate", {"id": "nope"}, 404), ("POST", f"{API}/models/rollback", None, 409),
             ("POST", f"{API}/models", b"not a zip", 422), ("GET", f"{API}/models", None, 200),
             ("POST", f"{API}/pair", {"code": "000000", "client_name": "x", "public_key": "eA=="}, 400)]
    for method, path, body, expected in cases:
        status, _, _ = agent.request(method, path, body, token=token)
        assert status == expected and str(status) in listed(method, path), (method, path, status)
    assert "401" in listed("GET", f"{API}/status") and "401" not in listed("POST", f"{API}/pair")
