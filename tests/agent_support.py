"""Helpers for tests that run the real device agent (``python -m inspector.agent``) on loopback
and speak plain ``http.client`` to it (imported as ``from agent_support import ...``).

:class:`Agent` starts the agent as a subprocess and parses its READY line; it can be killed
(SIGKILL) and started again on the same data folder and port (:meth:`Agent.restart`).
:func:`signed_variant` and :func:`rewrite_zip` build package variants from the shipped model.
For the fault tests (push faults, bad packages, fuzzing): :class:`Device` (an agent paired with
the module's signing key, fixtures ``key`` and ``pkgs``), :func:`check_device` (the device is
whole after a fault), :func:`device_fixture` and raw-socket helpers (:func:`request_head`,
:func:`read_all`, :func:`parse_response`, :func:`close_abortively`).
"""
from __future__ import annotations

import base64
import collections
import hashlib
import http.client
import io
import json
import math
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inspector.link import framing, protocol
from inspector.link.protocol import API
from inspector.agent.repository_state import INCOMING_DIR, PACKAGES_DIR, STATE_FILE
from inspector.link.signing import SigningKey
from support import SHIPPED_ID

REPO = Path(__file__).resolve().parents[1]
READY_RE = re.compile(r"^AGENT READY port=(\d+) tls=([01]) cert_sha256=([0-9a-f]{64}) pairing_code=(\d{6}) data=(.+)$")
START_TIMEOUT_S = 60.0
PROTECTED = sorted(k for k in protocol.ENDPOINTS if k not in protocol.OPEN_ENDPOINTS)


class Agent:
    """A running agent subprocess and what its READY line said.

    ``port=0`` picks a free port at the first start; :meth:`restart` starts a new process on
    the same data folder and the same port. The log (stderr) of every start goes to one file;
    :meth:`log` is all of it, :meth:`run_log` only the current process's part.
    """

    def __init__(self, data: Path, *extra: str, tls: bool, port: int = 0):
        self.data = data
        self.extra = extra
        self.tls_wanted = tls
        self.port = port
        self.log_path = data.parent / f"{data.name}.log"
        self.starts = 0
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._log_offset = 0
        self._start()

    def _start(self) -> None:
        self._log = open(self.log_path, "ab")
        self._log_offset = self._log.tell()
        cmd = [sys.executable, "-m", "inspector.agent", "--port", str(self.port), "--host", "127.0.0.1",
               "--data", str(self.data), "--no-mdns", "--threads", "1", *self.extra]
        if not self.tls_wanted:
            cmd.append("--insecure-http")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.starts += 1
        line = self._read_line(START_TIMEOUT_S)
        m = READY_RE.match(line.strip())
        if not m:
            self.stop()
            raise AssertionError(f"no READY line, got {line!r}; log:\n{self.run_log()}")
        port = int(m[1])
        assert self.port in (0, port), f"asked for port {self.port}, READY says {port}"
        self.port, self.tls, self.cert_sha256, self.code = port, m[2] == "1", m[3], m[4]
        assert Path(m[5]) == self.data.resolve()

    def _read_line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def run_log(self) -> str:
        """The log of the current (or last) process only."""
        with open(self.log_path, "rb") as fh:
            fh.seek(self._log_offset)
            return fh.read().decode(errors="replace")

    def connection(self, timeout: float = 10.0, fingerprint: str | None = None) -> http.client.HTTPConnection:
        if self.tls:
            return PinnedHTTPSConnection("127.0.0.1", self.port, fingerprint or self.cert_sha256, timeout=timeout)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | dict | None = None, *, token: str | None = None,
                headers: dict | None = None, timeout: float = 30.0) -> tuple[int, dict, bytes]:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        conn = self.connection(timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            with conn.getresponse() as resp:
                return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def pairing_code_file(self) -> str:
        return (self.data / "pairing-code.txt").read_text().strip()

    def _reap(self, rc: int) -> int:
        self.proc.stdout.close()
        self._log.close()
        return rc

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait (SIGKILL after ``timeout``); the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        return self._reap(rc)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind in the agent (a power cut, the OOM killer)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self._reap(self.proc.wait(15))

    def restart(self) -> "Agent":
        """Start a new agent process on the same data folder and port (the old one must be gone)."""
        assert not self.alive, "restart() needs the previous process stopped or killed"
        if not self._log.closed:
            self._reap(self.proc.wait())
        self._start()
        return self


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS that trusts exactly one certificate: the one whose DER SHA-256 is ``fingerprint``
    (what the app learns at pairing); no CA, no host name (the agent's certificate is self-signed)."""

    def __init__(self, host: str, port: int, fingerprint: str, timeout: float = 10.0):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # replaced by the pin below
        super().__init__(host, port, timeout=timeout, context=ctx)
        self.fingerprint = fingerprint
        self.served_sha256: str | None = None

    def connect(self) -> None:
        super().connect()
        self.served_sha256 = hashlib.sha256(self.sock.getpeercert(binary_form=True)).hexdigest()
        if self.served_sha256 != self.fingerprint:
            self.close()
            raise ssl.SSLCertVerificationError(f"certificate {self.served_sha256} is not the pinned {self.fingerprint}")


def new_public_key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw,
                                                                 serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def pair(agent: Agent, code: str | None = None, name: str = "test laptop", key: str | None = None):
    return agent.request("POST", f"{API}/pair", {"code": code or agent.pairing_code_file(), "client_name": name,
                                                 "public_key": key or new_public_key()})


def pair_token(agent: Agent, key: str | None = None, name: str = "test laptop") -> str:
    """Pair (with the public key ``key``, base64) and return the bearer token."""
    status, _, body = pair(agent, name=name, key=key)
    assert status == 200, body
    return protocol.PairResponse.from_json(body).token


def error_code(body: bytes) -> str:
    err = json.loads(body)["error"]
    assert set(err) == {"code", "message"} and err["message"]
    return err["code"]


def wait_status(agent: Agent, token: str, cond, timeout: float = 20.0) -> protocol.Status:
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = agent.request("GET", f"{API}/status", token=token)
        assert status == 200, body
        st = protocol.Status.from_json(body)
        if cond(st) or time.monotonic() > deadline:
            return st
        time.sleep(0.2)


def open_stream(agent: Agent, token: str):
    conn = agent.connection()
    conn.request("GET", f"{API}/stream", headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    return conn, resp


def stream_frames(agent: Agent, token: str, n: int) -> list[protocol.StreamHeader]:
    """Open the stream, read ``n`` frames (each checked with :func:`check_frame`), close it."""
    conn, resp = open_stream(agent, token)
    try:
        assert resp.status == 200, resp.read()
        headers = []
        for _ in range(n):
            header, jpeg, heat = framing.read_frame(resp)
            check_frame(header, jpeg, heat)
            headers.append(header)
        return headers
    finally:
        resp.close()
        conn.close()


def check_frame(header: protocol.StreamHeader, jpeg: bytes, heat: np.ndarray) -> None:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (header.height, header.width, 3)
    s = header.heat_scale
    assert s == protocol.HEAT_SCALE and heat.shape == (math.ceil(header.height / s), math.ceil(header.width / s))
    assert heat.dtype == np.uint8
    assert header.tiles and all(0.0 <= t["crack_prob"] <= 1.0 and len(t["box"]) == 4 for t in header.tiles)
    assert 0.0 <= header.crack_prob_max <= 1.0
    assert header.crack_prob_max == pytest.approx(max(t["crack_prob"] for t in header.tiles))
    assert {"capture_to_start", "infer", "encode"} <= set(header.timings_ms)
    assert header.t_capture <= header.t_sent <= time.time() + 1.0


def stopped_cleanly(agent: Agent) -> None:
    rc = agent.stop()
    log = agent.log()
    assert rc == 0, log
    assert "Traceback" not in log, log


# ---------------------------------------------------------------------------- packages


def signed_variant(dst: Path, key: Any | None, *, version: str = "1.5.0-int8",
                   edit: Callable[[dict], None] | None = None, src: Path | None = None) -> Path:
    """A copy of the package ``src`` (default: the shipped model) under a new ``version``,
    its manifest dict changed by ``edit`` (before signing), signed by ``key`` (an
    :class:`inspector.link.signing.SigningKey`; None: unsigned). Verified as a device would
    (:func:`inspector.edge.package.write_package`), so only valid packages come out of here."""
    from inspector.edge import package as pkg
    from inspector.paths import default_model

    p = pkg.load_package(src or default_model(), verify_reference=False)
    manifest = p.manifest.to_dict()
    manifest["version"] = version
    manifest["signature"] = None
    if edit is not None:
        edit(manifest)
    if key is not None:
        manifest = key.sign_manifest(manifest)
    return pkg.write_package(dst, manifest, p.onnx_bytes, p.reference)


def rewrite_zip(src: Path, dst: Path, replace: Mapping[str, bytes | dict]) -> Path:
    """Copy the zip ``src`` to ``dst`` with the members in ``replace`` swapped for new contents
    (a dict is written as JSON): packages no writer of ours would produce. Other members are
    copied as they are."""
    out = io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = replace.get(item.filename, None)
            if data is None:
                data = zin.read(item.filename)
            elif isinstance(data, dict):
                data = json.dumps(data, indent=2).encode()
            zout.writestr(item, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
    dst.write_bytes(out.getvalue())
    return dst


# ---------------------------------------------------------------------------- devices under faults
#
# Shared by test_agent_push_faults.py, test_agent_bad_packages.py and test_agent_fuzz.py: an agent
# with the shipped model (OLD_ID), paired with the module's signing key, checked whole by check_device.

OLD_ID = SHIPPED_ID                           # the shipped model, given on the agent's command line
NEW_VERSION = "1.5.0-int8"
NEW_ID = f"crack-student-{NEW_VERSION}"
SEED = 20261122
UPLOAD = f"{API}/models"


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def request_head(method: str, path: str, token: str | None, length: int | None, extra: str = "") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the peer sends until it closes (or resets) the connection."""
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return out


def parse_response(raw: bytes) -> tuple[int, bytes] | None:
    """(status, body) of the first non-1xx response in ``raw``, None if there is none."""
    while raw.startswith(b"HTTP/1.1 1"):
        raw = raw.partition(b"\r\n\r\n")[2]
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", raw)
    if not m or b"\r\n\r\n" not in raw:
        return None
    return int(m[1]), raw.partition(b"\r\n\r\n")[2]


def close_abortively(sock: socket.socket) -> None:
    """Close with RST instead of FIN (what a crashed router or a pulled cable looks like)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass
class Device:
    """The agent under test and what the test knows about it."""

    agent: Agent
    token: str
    expected: str = OLD_ID                   # the last completed activation
    log: list[str] = field(default_factory=list)
    fuzzed: int = 0                          # fuzzing: requests sent, operations fuzzed, answers by status
    fuzzed_ops: set = field(default_factory=set)
    outcomes: collections.Counter = field(default_factory=collections.Counter)

    @property
    def models_dir(self) -> Path:
        return self.agent.data / "models"

    @property
    def incoming(self) -> Path:
        return self.models_dir / INCOMING_DIR

    def state_bytes(self) -> bytes:
        return (self.models_dir / STATE_FILE).read_bytes()

    def listing(self) -> protocol.ModelList:
        status, _, body = self.agent.request("GET", UPLOAD, token=self.token)
        assert status == 200, body
        return protocol.ModelList.from_json(body)

    def note(self, text: str) -> None:
        self.log.append(text)
        print(text)


def check_device(dev: Device, *, allowed: set[str], expected: str | None, before: protocol.ModelList | None = None,
                 restarted: bool = False) -> str:
    """The device is whole: it serves one of ``allowed`` (``expected`` if given) and the
    stream says so; the models list is ``before`` (if given), has no half entry, every stored
    file is intact and referenced; nothing is left in incoming/; the agent (re)started without
    an error. Returns the active model id."""
    agent = dev.agent
    assert agent.alive, agent.run_log()
    if restarted:  # the repository repairs before the agent serves: nothing left from before the kill
        assert not any(dev.incoming.iterdir()) and not list(dev.models_dir.glob(f".{STATE_FILE}.*.tmp"))
    st_ = wait_status(agent, dev.token, lambda s: s.model is not None
                      and (not restarted or any(e["kind"] == "in-service" for e in s.events)))
    assert st_.model is not None, f"no model in service; events {st_.events}\n{agent.run_log()}"
    active = st_.model["id"]
    assert active in allowed, (active, allowed)
    if expected is not None:
        assert active == expected, f"serving {active}, the last completed activation was {expected}"
    # the model verifies: it runs, and what the stream says matches the status
    frames = stream_frames(agent, dev.token, 3)
    assert [h.model_id for h in frames] == [active] * 3
    bad_events = [e for e in st_.events if e["kind"] in ("error", "auto-rollback", "failed")]
    assert not bad_events, bad_events

    listing = dev.listing()
    assert listing.active == active
    infos = listing.infos()
    ids = [i.id for i in infos]
    assert len(ids) == len(set(ids)) and OLD_ID in ids and set(ids) <= {OLD_ID, NEW_ID}, ids
    if before is not None:
        assert listing.models == before.models, "the models list changed although nothing was stored"
    state = json.loads(dev.state_bytes())
    assert state["active"] == active and state["failed"] == {} and set(state["models"]) == set(ids)
    packages = dev.models_dir / PACKAGES_DIR
    files = {e["file"] for e in state["models"].values()}
    assert {p.name for p in packages.iterdir()} == files, "a package file no stored model refers to"
    for info in infos:
        entry = state["models"][info.id]
        path = packages / entry["file"]
        assert sha256_file(path) == entry["file"].removesuffix(".crackpkg") and path.stat().st_size == info.size
    wait_for(lambda: not any(dev.incoming.iterdir()), 10.0, f"{dev.incoming} to be empty")
    assert not list(dev.models_dir.glob(f".{STATE_FILE}.*.tmp"))

    log = agent.run_log()
    assert "Traceback" not in log and " ERROR " not in log and " CRITICAL " not in log, log
    for line in log.splitlines():
        if "model repository:" in line:  # what a restart repaired: only the traces of an interrupted write
            assert re.search(r"removed an unfinished upload|removed an unfinished state write|"
                             r"removed packages/\w+\.crackpkg: no stored model refers to it", line), line
    return active


@pytest.fixture(scope="module")
def key() -> SigningKey:
    """The app's signing key; its public half is given at pairing."""
    return SigningKey.generate()


@pytest.fixture(scope="module")
def pkgs(tmp_path_factory, key) -> Path:
    """The package folder: ``new.crackpkg`` (NEW_ID, signed by ``key``) and the bad variants."""
    d = tmp_path_factory.mktemp("packages")
    signed_variant(d / "new.crackpkg", key, version=NEW_VERSION)
    return d


def paired_device(tmp_path_factory, key, name: str) -> Device:
    agent = Agent(tmp_path_factory.mktemp(name) / "data", tls=False)
    dev = Device(agent, pair_token(agent, key.public_b64(), name="fault tester"))
    check_device(dev, allowed={OLD_ID}, expected=OLD_ID)
    return dev


def device_fixture(name: str):
    """A class-scoped fixture ``{name}_device``: a paired agent of its own, stopped afterwards."""
    @pytest.fixture(scope="class", name=f"{name}_device")
    def fixture(tmp_path_factory, key):
        dev = paired_device(tmp_path_factory, key, name)
        yield dev
        if dev.agent.alive:
            dev.agent.stop()
    return fixture
