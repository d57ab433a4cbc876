"""The device agent under faults and hostile input: real ``python -m inspector.agent`` processes
on loopback (plain HTTP for speed), SIGKILLed and restarted on the same data folder and port.

* :class:`TestPushFaults` -- a model push interrupted at random points (fixed seed): the
  uploading client SIGKILLed, the agent SIGKILLed mid-body and right after
  ``POST /models/activate``, the connection cut mid-body (FIN or RST). After every run the
  device serves the old or the new model and nothing else, the stream says the same model as
  the status, a restarted agent serves the last completed activation, and nothing is left
  half-done (``models/incoming`` empty, no unreferenced package file, no half entry).
* :class:`TestBadPackages` -- packages a device must refuse, each with a clear error code,
  leaving the device exactly as it was.
* :class:`TestFuzz` -- requests generated from the OpenAPI description (hypothesis): never a
  5xx, every error is ApiError JSON, and the agent still serves afterwards.

Missing or wrong credentials on every endpoint are covered in ``test_agent_server.py``.
"""
from __future__ import annotations

import base64
import collections
import hashlib
import http.client
import io
import json
import random
import re
import select
import socket
import string
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlsplit

import numpy as np
import pytest
from agent_support import (Agent, check_frame, error_code, pair_token, rewrite_zip, signed_variant,
                           stream_frames, wait_status)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspector.link import framing, openapi, protocol
from inspector.agent.repository_state import INCOMING_DIR, PACKAGES_DIR, STATE_FILE
from inspector.paths import default_model
from inspector.link.protocol import API
from inspector.link.signing import SigningKey
from support import SHIPPED_ID, SHIPPED_PARENT, SHIPPED_VERSION, read_manifest

OLD_ID = SHIPPED_ID                           # the shipped model, given on the agent's command line
NEW_VERSION = "1.5.0-int8"
NEW_ID = f"crack-student-{NEW_VERSION}"
SEED = 20261122
UPLOAD = f"{API}/models"


# ---------------------------------------------------------------------------- helpers


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


# ---------------------------------------------------------------------------- packages


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


# ---------------------------------------------------------------------------- push faults

# A client that streams the upload slowly and says how far it got (one line per chunk).
SLOW_CLIENT = r"""
import socket, sys, time
port, token, path, chunk, pause = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
body = open(path, "rb").read()
s = socket.create_connection(("127.0.0.1", port))
s.sendall((f"POST /api/v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
           f"Content-Type: application/x-crackpkg\r\nContent-Length: {len(body)}\r\n\r\n").encode())
print(0, flush=True)
sent = 0
while sent < len(body):
    sent += s.send(body[sent:sent + chunk])
    print(sent, flush=True)
    time.sleep(pause)
print("done", flush=True)
print(s.recv(100), flush=True)
"""


class PushFaults:
    """One fault per call; each returns (what happened, whether the whole body got out)."""

    def __init__(self, dev: Device, package: Path, rng: random.Random):
        self.dev, self.package, self.rng = dev, package, rng
        self.body = package.read_bytes()
        self.leftovers_seen = 0      # runs where a killed agent left a partial upload behind

    def kill_client(self) -> tuple[str, bool]:
        """SIGKILL a slow uploading child process at a random byte count, or after the whole
        body while the agent verifies it."""
        total = len(self.body)
        after_body = self.rng.random() < 0.25
        target = total if after_body else self.rng.randrange(0, total)
        child = subprocess.Popen([sys.executable, "-c", SLOW_CLIENT, str(self.dev.agent.port), self.dev.token,
                                  str(self.package), str(256 << 10), "0.004"], stdout=subprocess.PIPE, text=True)
        sent = -1
        try:
            while True:
                ready, _, _ = select.select([child.stdout], [], [], 20)
                line = child.stdout.readline().strip() if ready else ""
                assert line, "the upload child went silent"
                if line == "done":
                    time.sleep(self.rng.uniform(0.0, 0.3))
                    break
                sent = int(line)
                if sent >= target and not after_body:
                    break
        finally:
            child.kill()
            child.wait(10)
            child.stdout.close()
        return f"client killed after {sent}/{total} bytes{' (whole body, agent verifying)' if after_body else ''}", \
            sent == total

    def cut(self) -> tuple[str, bool]:
        """Send the headers and part of the body, then close the connection (FIN or RST)."""
        n = self.rng.randrange(0, len(self.body))
        rst = self.rng.random() < 0.5
        sock = socket.create_connection(("127.0.0.1", self.dev.agent.port), timeout=10)
        sock.sendall(request_head("POST", UPLOAD, self.dev.token, len(self.body)) + self.body[:n])
        time.sleep(self.rng.uniform(0.0, 0.05))
        if rst:
            close_abortively(sock)
        else:
            sock.close()
        return f"connection cut ({'RST' if rst else 'FIN'}) after {n}/{len(self.body)} bytes", False

    def kill_agent_mid_upload(self) -> tuple[str, bool]:
        """SIGKILL the agent after a random part of the body has gone out."""
        n = self.rng.randrange(0, len(self.body))
        sock = socket.create_connection(("127.0.0.1", self.dev.agent.port), timeout=10)
        try:
            sock.sendall(request_head("POST", UPLOAD, self.dev.token, len(self.body)) + self.body[:n])
            time.sleep(self.rng.uniform(0.0, 0.1))
            self.dev.agent.kill()
        finally:
            sock.close()
        left = sorted(p.name for p in self.dev.incoming.iterdir())
        self.leftovers_seen += bool(left)
        assert json.loads(self.dev.state_bytes())["active"] == self.dev.expected  # an upload never activates
        self.dev.agent.restart()
        log = self.dev.agent.run_log()
        for name in left:  # the restart says what it cleaned up
            assert f"removed an unfinished upload {INCOMING_DIR}/{name}" in log, log
        return f"agent killed after {n}/{len(self.body)} bytes of the body (left in incoming: {left})", False

    def kill_agent_mid_activation(self, target: str) -> tuple[str, int | None, str]:
        """POST /models/activate, SIGKILL the agent after a random small delay, restart it.
        Returns (what happened, the status of the answer if it came before the kill, the
        active model in state.json as the kill left it)."""
        body = json.dumps({"id": target}).encode()
        delay = self.rng.choice([self.rng.uniform(0.0, 0.05), self.rng.uniform(0.0, 0.6)])
        sock = socket.create_connection(("127.0.0.1", self.dev.agent.port), timeout=10)
        try:
            sock.sendall(request_head("POST", f"{API}/models/activate", self.dev.token, len(body),
                                      "Content-Type: application/json\r\n") + body)
            time.sleep(delay)
            self.dev.agent.kill()
            answer = parse_response(read_all(sock))  # what was sent before the kill is in our buffer
        finally:
            sock.close()
        on_disk = json.loads(self.dev.state_bytes())["active"]
        self.dev.agent.restart()
        got = None if answer is None else answer[0]
        return f"agent killed {delay * 1000:.0f} ms after activate {target} (answered: {got}; " \
               f"state.json says {on_disk})", got, on_disk


push_device = device_fixture("push")


class TestPushFaults:
    """18 faulted pushes (fixed seed): 8 before the new model is stored, 10 mixed with
    activations. Every run ends with :func:`check_device`."""

    def test_interrupted_uploads_store_nothing(self, push_device, pkgs):
        """The new model is not on the device yet: an upload cut off mid-body changes nothing;
        one whose whole body got out may be stored, but only whole."""
        dev, rng = push_device, random.Random(SEED)
        faults = PushFaults(dev, pkgs / "new.crackpkg", rng)
        kinds = ["kill_client"] * 3 + ["kill_agent_mid_upload"] * 3 + ["cut"] * 2
        rng.shuffle(kinds)
        for i, kind in enumerate(kinds):
            before = dev.listing()
            what, whole_body = getattr(faults, kind)()
            dev.note(f"upload run {i}: {what}")
            check_device(dev, allowed={OLD_ID}, expected=OLD_ID, before=None if whole_body else before,
                         restarted=kind == "kill_agent_mid_upload")
        assert faults.leftovers_seen >= 1, "no kill landed while the agent was storing the body (test too weak)"

    def test_faults_around_activations_keep_the_last_completed_one(self, push_device, pkgs):
        """With the new model stored, activations alternate old/new; the agent is killed right
        after ``activate`` (the restart serves the old or the target, the target if the answer
        came before the kill) and mid-upload, clients die and connections drop. A restarted
        agent always serves the last completed activation."""
        dev, rng = push_device, random.Random(SEED + 1)
        status, _, body = dev.agent.request("POST", UPLOAD, (pkgs / "new.crackpkg").read_bytes(), token=dev.token,
                                            headers={"Content-Type": protocol.PACKAGE_CONTENT_TYPE})
        assert status == 200, body
        dev.expected = dev.listing().active
        faults = PushFaults(dev, pkgs / "new.crackpkg", rng)
        kinds = ["kill_agent_mid_activation"] * 5 + ["kill_agent_mid_upload"] * 2 + ["kill_client"] + ["cut"] * 2
        rng.shuffle(kinds)
        outcomes = []
        for i, kind in enumerate(kinds):
            if rng.random() < 0.5:  # a completed activation moves what a restart must come back to
                target = NEW_ID if dev.expected == OLD_ID else OLD_ID
                status, _, body = dev.agent.request("POST", f"{API}/models/activate", {"id": target}, token=dev.token)
                assert status == 200, body
                assert protocol.ModelList.from_json(body).active == target
                dev.expected = target
                dev.note(f"mixed run {i}: activated {target}")
            before = dev.listing()
            if kind == "kill_agent_mid_activation":
                target = NEW_ID if dev.expected == OLD_ID else OLD_ID
                what, answered, on_disk = faults.kill_agent_mid_activation(target)
                dev.note(f"mixed run {i}: {what}")
                assert on_disk in (dev.expected, target)
                if answered == 200:  # completed before the kill: durable
                    assert on_disk == target
                # the restart serves what was committed when the agent died, old or new
                check_device(dev, allowed={dev.expected, target}, expected=on_disk, before=before, restarted=True)
                outcomes.append(on_disk == target)
                dev.expected = on_disk
            else:
                what, _ = getattr(faults, kind)()
                dev.note(f"mixed run {i}: {what}")
                check_device(dev, allowed={OLD_ID, NEW_ID}, expected=dev.expected, before=before,
                             restarted=kind == "kill_agent_mid_upload")
        dev.note(f"kills mid-activation that left the target active: {sum(outcomes)} of {len(outcomes)}")

    def test_clean_stop_after_the_faults(self, push_device):
        rc = push_device.agent.stop()
        assert rc == 0 and "Traceback" not in push_device.agent.run_log()


# ---------------------------------------------------------------------------- bad packages


def manual_signature(key: SigningKey, manifest: dict) -> dict:
    """Sign a manifest the library would refuse to sign (it validates first): the canonical
    JSON of the manifest without ``signature``, as :func:`inspector.edge.package.signed_payload`."""
    from cryptography.hazmat.primitives import serialization

    priv = serialization.load_pem_private_key(key.private_pem(), password=None)
    d = {k: v for k, v in manifest.items() if k != "signature"}
    payload = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return {**d, "signature": {"alg": "ed25519", "key_id": key.key_id,
                               "value": base64.b64encode(priv.sign(payload)).decode()}}


@pytest.fixture(scope="module")
def bad_packages(pkgs, key) -> dict[str, tuple[bytes, int, str, str]]:
    """name -> (file bytes, HTTP status, error code, a word the message must contain)."""
    src = pkgs / "new.crackpkg"
    base = read_manifest(src)
    base.pop("signature")

    def variant(name: str, manifest: dict | None = None, *, signer: SigningKey | None = key,
                after_signing: Callable[[dict], None] | None = None, **members: bytes) -> bytes:
        m = json.loads(json.dumps(manifest if manifest is not None else base))
        if signer is not None:
            m = manual_signature(signer, m)
        else:
            m["signature"] = None
        if after_signing:
            after_signing(m)
        replace: dict[str, Any] = {"manifest.json": m}
        replace.update({k.replace("_", "."): v for k, v in members.items()})
        return rewrite_zip(src, pkgs / f"{name}.crackpkg", replace).read_bytes()

    def edited(**changes: Any) -> dict:
        m = json.loads(json.dumps(base))
        for path, value in changes.items():
            *parents, leaf = path.split("__")
            d = m
            for p in parents:
                d = d[p]
            d[leaf] = value
        return m

    garbage = random.Random(SEED).randbytes(4096)
    other_sha = read_manifest(SHIPPED_PARENT)["model_sha256"]
    assert other_sha != base["model_sha256"]
    ref = zipfile.ZipFile(src).read("reference.npz")
    with np.load(io.BytesIO(ref)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["probs"] = arrays["probs"][:, ::-1].copy()  # the reference run no longer matches
    tampered_ref = io.BytesIO()
    np.savez(tampered_ref, **arrays)
    whole = src.read_bytes()
    return {
        "wrong model hash": (variant("hash", edited(version="1.1.2-int8", model_sha256=other_sha)),
                             422, "invalid_package", "model_sha256"),
        "missing signature": (variant("unsigned", signer=None), 403, "unsigned", "unsigned"),
        "signed by an unpaired key": (variant("stranger", signer=SigningKey.generate()),
                                      403, "unknown_key", "does not trust"),
        "manifest changed after signing": (
            variant("tampered", after_signing=lambda m: m.update(version="1.1.3-int8")),
            403, "bad_signature", "does not match"),
        "labels in another order": (variant("labels", edited(labels=base["labels"][::-1])),
                                    422, "labels_changed", "order"),
        "input size 64 for a 96-pixel model": (variant("shape", edited(input__size=64)),
                                               422, "invalid_package", "input.size=64"),
        "model.onnx is not ONNX": (variant("garbage", edited(model_sha256=hashlib.sha256(garbage).hexdigest()),
                                           model_onnx=garbage), 422, "invalid_package", "model.onnx"),
        "reference run does not match (reference.npz is not signed)": (
            variant("reference", reference_npz=tampered_ref.getvalue()), 422, "invalid_package", "reference"),
        "not a zip": (b"PK\x03\x04 this is not a zip archive " + garbage, 422, "invalid_package", "zip"),
        "truncated package": (whole[: len(whole) // 2], 422, "invalid_package", "zip"),
        "name '../evil'": (variant("evil", edited(name="../evil")), 422, "invalid_package", "name"),
        "an existing version with other contents": (
            variant("same-version", edited(version=SHIPPED_VERSION, created="2020-01-01T00:00:00Z")),
            409, "version_exists", "new version"),
        # not refused: the shipped package re-signed (another zip, same model, same signed fields)
        "re-signed copy": (variant("resigned", edited(version=SHIPPED_VERSION)), 200, "", ""),
    }


bad_device = device_fixture("bad")


def assert_unchanged(dev: Device, state: bytes, listing: protocol.ModelList) -> None:
    wait_for(lambda: not any(dev.incoming.iterdir()), 5.0, "incoming/ to be empty")
    assert dev.state_bytes() == state, "state.json changed"
    assert dev.listing() == listing
    assert wait_status(dev.agent, dev.token, lambda s: True).model["id"] == listing.active


class TestBadPackages:
    CASES = ["wrong model hash", "missing signature", "signed by an unpaired key", "manifest changed after signing",
             "labels in another order", "input size 64 for a 96-pixel model", "model.onnx is not ONNX",
             "reference run does not match (reference.npz is not signed)", "not a zip", "truncated package",
             "name '../evil'", "an existing version with other contents"]

    @pytest.mark.parametrize("case", CASES)
    def test_refused_and_nothing_changes(self, bad_device, bad_packages, case):
        dev = bad_device
        data, want_status, want_code, word = bad_packages[case]
        state, listing = dev.state_bytes(), dev.listing()
        status, headers, body = dev.agent.request("POST", UPLOAD, data, token=dev.token,
                                                  headers={"Content-Type": protocol.PACKAGE_CONTENT_TYPE})
        assert (status, error_code(body)) == (want_status, want_code), body
        message = json.loads(body)["error"]["message"]
        assert word in message, message
        assert str(dev.agent.data) not in message and "/tmp" not in message  # no internal paths
        assert headers["Content-Type"].startswith("application/json")
        assert_unchanged(dev, state, listing)
        assert not [p for p in dev.agent.data.parent.rglob("*evil*")]
        events = wait_status(dev.agent, dev.token, lambda s: True).events
        assert any(e["kind"] == "refused" and message in e["message"] for e in events), events

    def test_all_cases_are_listed(self, bad_packages):
        assert set(self.CASES) | {"re-signed copy"} == set(bad_packages)

    def test_resigned_copy_of_a_stored_version_changes_nothing(self, bad_device, bad_packages):
        """Not refused (the same model and signed manifest as the stored version), not stored again."""
        dev = bad_device
        state, listing = dev.state_bytes(), dev.listing()
        status, _, body = dev.agent.request("POST", UPLOAD, bad_packages["re-signed copy"][0], token=dev.token)
        assert status == 200, body
        assert protocol.ModelInfo.from_json(body) == listing.infos()[0]
        assert_unchanged(dev, state, listing)

    @pytest.mark.parametrize("expect", [True, False])
    def test_oversize_refused_before_the_body(self, bad_device, expect):
        """Content-Length over MAX_PACKAGE_BYTES: 413 at once, with no 100 Continue first; the
        agent does not wait for (or read) a body."""
        dev = bad_device
        state, listing = dev.state_bytes(), dev.listing()
        for length in (protocol.MAX_PACKAGE_BYTES + 1, 10**12):
            with socket.create_connection(("127.0.0.1", dev.agent.port), timeout=10) as sock:
                t0 = time.monotonic()
                sock.sendall(request_head("POST", UPLOAD, dev.token, length,
                                          "Expect: 100-continue\r\n" if expect else ""))
                raw = read_all(sock)
                assert time.monotonic() - t0 < 5.0
            assert raw.startswith(b"HTTP/1.1 413 "), raw[:200]
            assert error_code(raw.partition(b"\r\n\r\n")[2]) == "too_large"
        assert_unchanged(dev, state, listing)

    @pytest.mark.parametrize("model_id, want", [("../../etc/passwd", (400, "bad_request")),
                                                ("..", (404, "unknown_model")),
                                                (".", (404, "unknown_model")),
                                                ("/etc/passwd", (400, "bad_request")),
                                                ("packages", (404, "unknown_model")),
                                                ("state.json", (404, "unknown_model"))])
    def test_path_like_ids_are_refused(self, bad_device, model_id, want):
        dev = bad_device
        state, listing = dev.state_bytes(), dev.listing()
        status, _, body = dev.agent.request("POST", f"{API}/models/activate", {"id": model_id}, token=dev.token)
        assert (status, error_code(body)) == want, body
        assert_unchanged(dev, state, listing)

    def test_device_still_whole(self, bad_device):
        check_device(bad_device, allowed={OLD_ID}, expected=OLD_ID)
        assert bad_device.agent.stop() == 0


# ---------------------------------------------------------------------------- fuzzing

SPEC = openapi.document()
SCHEMAS = SPEC["components"]["schemas"]
# Not the two that end the fuzzer's token (unpair, new token): every later request would be a 401.
# tests/test_agent_lockout.py covers them.
TOKEN_ENDING = {("DELETE", f"{protocol.API}/pairing"), ("POST", f"{protocol.API}/pairing/token")}
OPERATIONS = [(method.upper(), path) for path, ops in SPEC["paths"].items() for method in ops
              if (method.upper(), path) not in TOKEN_ENDING]
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")   # tried; those not in protocol.METHODS are 501
FUZZ_EXAMPLES = 50                                                       # per operation: 8 × 50 = 400 requests
PACKAGE_TYPE = protocol.PACKAGE_CONTENT_TYPE
OPEN_PATHS = {p for _, p in protocol.OPEN_ENDPOINTS}
RESPONSE_CLASSES = {"PairResponse": protocol.PairResponse, "Status": protocol.Status,
                    "ModelList": protocol.ModelList, "ModelInfo": protocol.ModelInfo}


def resolve(schema: dict) -> dict:
    while "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def conforms(value: Any, schema: dict) -> bool:
    """JSON-Schema validation for the subset the OpenAPI document uses."""
    schema = resolve(schema)
    if value is None and schema.get("nullable"):
        return True
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return False
        props = schema.get("properties", {})
        if any(k not in value for k in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and set(value) - set(props):
            return False
        return all(conforms(value[k], props[k]) for k in value if k in props)
    if kind == "string":
        if not isinstance(value, str):
            return False
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 1 << 62):
            return False
        return "pattern" not in schema or re.fullmatch(schema["pattern"], value) is not None
    return True


json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c,
                                                                                            max_size=4), max_leaves=12)


def from_schema(schema: dict) -> st.SearchStrategy:
    """Values that conform to ``schema`` (the subset the OpenAPI document uses)."""
    schema = resolve(schema)
    kind = schema.get("type")
    if kind == "object":
        props = {k: from_schema(v) for k, v in schema.get("properties", {}).items()}
        required = schema.get("required", [])
        return st.fixed_dictionaries({k: props[k] for k in required},
                                     optional={k: v for k, v in props.items() if k not in required})
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda s: conforms(s, schema))
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 120))
    return json_values


@st.composite
def mutated(draw, schema: dict) -> Any:
    """A conforming object with one thing wrong (usually): a field dropped, added or retyped."""
    value = dict(draw(from_schema(schema)))
    how = draw(st.sampled_from(["drop", "add", "retype", "retype", "long"]))
    keys = sorted(value)
    if how == "drop" and keys:
        value.pop(draw(st.sampled_from(keys)))
    elif how == "add":
        value[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
    elif how == "retype" and keys:
        value[draw(st.sampled_from(keys))] = draw(json_values)
    elif keys:
        value[draw(st.sampled_from(keys))] = draw(st.text(min_size=100, max_size=300))
    return value


def json_body(schema: dict) -> st.SearchStrategy[bytes]:
    dumps = lambda v: json.dumps(v).encode()  # noqa: E731
    return st.one_of(
        from_schema(schema).map(dumps), from_schema(schema).map(dumps),
        mutated(schema).map(dumps),
        json_values.map(dumps),
        from_schema(schema).map(dumps).flatmap(lambda b: st.integers(0, max(0, len(b) - 1)).map(lambda n: b[:n])),
        st.binary(max_size=200),
        st.just(b'{"id": "\xff\xfe"}'), st.just(b"[" * 5000), st.just(b" " * (protocol.MAX_JSON_BYTES + 1)))


@st.composite
def zip_bytes(draw) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name in draw(st.lists(st.sampled_from(["manifest.json", "model.onnx", "reference.npz", "../x", "a"]),
                                  max_size=4, unique=True)):
            zf.writestr(name, draw(st.one_of(st.binary(max_size=64), json_values.map(lambda v: json.dumps(v)))))
    return out.getvalue()


def package_body() -> st.SearchStrategy[bytes]:
    prefix = default_model().read_bytes()[:200_000]
    return st.one_of(st.binary(max_size=300), zip_bytes(),
                     st.integers(0, len(prefix)).map(lambda n: prefix[:n]), st.just(b""))


# Latin-1 header values; not \x85, which the stdlib's header parser (str.splitlines) takes for a
# line break: the headers after it would be lost and the oracles below would judge the wrong request
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f\x85"),
                      max_size=60)
url_chars = string.ascii_letters + string.digits + "-._~%!$&'()*+,;=:@/?"
segment = st.text(url_chars.replace("/", "").replace("?", ""), max_size=16)


@st.composite
def fuzz_request(draw, op: tuple[str, str], token: str) -> dict[str, Any]:
    method, path = op
    spec = SPEC["paths"][path][method.lower()]
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(METHODS))
    where = draw(st.sampled_from(["op"] * 5 + ["query"] * 2 + ["extra"] * 2 + ["odd"]))
    target = path
    if where == "query":
        target = path + "?" + quote(draw(st.text(url_chars + " \u00e9\u4e2d", max_size=40)), safe=url_chars)
    elif where == "extra":
        target = API + "/" + "/".join(quote(s, safe=url_chars) for s in draw(st.lists(segment, max_size=4)))
    elif where == "odd":
        target = draw(st.sampled_from([
            f"{API}", f"{API}/", path + "/", path.replace(API, API + "/"), path + "/..", path + "/%2e%2e",
            f"{API}/models/../status", f"{API}/./status", f"{API}/%73tatus", path.upper(), "/", "*",
            f"http://127.0.0.1{path}", path + "#x", path + ";x", f"{API}/models/activate/x"]))
    auth = draw(st.sampled_from(["valid"] * 5 + ["none", "random", "malformed"]))
    headers: list[tuple[str, str]] = [("Host", "127.0.0.1")]
    if auth == "valid":
        headers.append(("Authorization", f"Bearer {token}"))
    elif auth == "random":
        headers.append(("Authorization", "Bearer " + draw(header_text)))
    elif auth == "malformed":
        headers.append(("Authorization", draw(st.sampled_from(
            ["Bearer", f"Basic {token}", f"bearer{token}", f"Bearer {token}x", token, f"Bearer {token[:-1]}",
             f"Bearer {token} extra"]) | header_text)))
    kind = (spec.get("requestBody", {}).get("content") or {"": {}})
    if PACKAGE_TYPE in kind:
        body = draw(package_body())
    elif "application/json" in kind:
        body = draw(json_body(kind["application/json"]["schema"]))
    else:
        body = draw(st.sampled_from([b""] * 6 + [b"{}", b"x" * 100]))
    length = draw(st.sampled_from(["exact"] * 7 + ["absent", "long", "huge", "garbage"]))
    if length == "exact":
        headers.append(("Content-Length", str(len(body))))
    elif length == "long":
        headers.append(("Content-Length", str(len(body) + draw(st.integers(1, 5000)))))
    elif length == "huge":
        headers.append(("Content-Length", str(draw(st.sampled_from([protocol.MAX_PACKAGE_BYTES + 1, 10**25])))))
    elif length == "garbage":
        headers.append(("Content-Length", draw(st.sampled_from(["-1", "abc", "1e3", "+5", "1_0", "0x10", "",
                                                                "\u0661\u0662".encode().decode("latin-1"),
                                                                "5, 5"]))))
    content_type = draw(st.sampled_from([None, "application/json", "application/json; charset=utf-8", "text/plain",
                                         PACKAGE_TYPE, "multipart/form-data; boundary=x"]) | header_text)
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    for extra in draw(st.lists(st.sampled_from([("Expect", "100-continue"), ("Connection", "close"),
                                                ("Connection", "keep-alive"), ("Transfer-Encoding", "chunked"),
                                                ("Accept", "*/*"), ("X-Junk", "\u00ff" * 50)]),
                               max_size=2, unique=True)):
        headers.append(extra)
    return {"method": method, "target": target, "headers": headers, "body": body, "length": length,
            "op": op, "auth": auth}


def send_fuzz(port: int, req: dict[str, Any]) -> tuple[int, dict, bytes] | None:
    """Send ``req`` as raw bytes, half-close, read one answer: (status, headers, body), None if
    the agent closed the connection without answering. A stream is read up to one frame."""
    head = f"{req['method']} {req['target']} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in req["headers"])
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        sock.sendall(head.encode("latin-1") + b"\r\n" + req["body"])
        try:
            sock.shutdown(socket.SHUT_WR)  # a body shorter than announced ends here instead of hanging
        except OSError:
            pass  # the agent answered and closed first (an early refusal, seen under load): read it anyway
        resp = http.client.HTTPResponse(sock, method=req["method"])
        try:
            resp.begin()
        except http.client.RemoteDisconnected:
            return None
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        if hdrs.get("content-type") == protocol.STREAM_CONTENT_TYPE:
            check_frame(*framing.read_frame(resp))
            return resp.status, hdrs, b""
        return resp.status, hdrs, resp.read()
    finally:
        sock.close()


fuzz_device = device_fixture("fuzz")


class TestFuzz:
    """Requests generated from ``openapi.document()`` against a separate agent (it has only the
    shipped model and the fuzzer cannot sign, so nothing it does changes what it serves)."""

    @pytest.mark.parametrize("op", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                     HealthCheck.large_base_example])
    @given(data=st.data())
    def test_operation(self, fuzz_device, op, data):
        dev = fuzz_device
        req = data.draw(fuzz_request(op, dev.token), label="request")
        answer = send_fuzz(dev.agent.port, req)
        dev.fuzzed += 1
        dev.fuzzed_ops.add(op)
        names = [k for k, _ in req["headers"]]
        framed = req["length"] == "exact" and "Transfer-Encoding" not in names
        path = urlsplit("/" + req["target"].lstrip("/") if req["target"].startswith("//") else req["target"]).path
        key = (req["method"], path)
        hit = key if key in protocol.ENDPOINTS else None   # the endpoint the agent routes this to, if any
        # the path of an open endpoint is public: another method there is 405 without credentials
        authorized = req["auth"] == "valid" or key in protocol.OPEN_ENDPOINTS or (hit is None and path in OPEN_PATHS)
        implemented = req["method"] in protocol.METHODS   # any other: 501 on every path, before auth
        if answer is None:
            # only when a body announced longer than what came was being read (the end came first)
            assert req["length"] == "long" and authorized and hit, req
            return
        status, headers, body = answer
        assert status < 500 or (status == 501 and not implemented), (req, status, body)
        dev.outcomes[status] += 1
        if status >= 400 and req["method"] != "HEAD":
            assert headers.get("content-type", "").startswith("application/json"), (req, headers)
            err = json.loads(body)
            assert set(err) == {"error"} and set(err["error"]) == {"code", "message"}, body
            assert isinstance(err["error"]["code"], str) and err["error"]["code"], body
            assert isinstance(err["error"]["message"], str) and err["error"]["message"], body
            assert "Traceback" not in err["error"]["message"]
        if not implemented:
            assert status == 501, (req, status, body)
            return
        if not authorized:
            assert status == 401, (req, status, body)  # before anything else is looked at
            return
        if hit is None:
            assert status in (404, 405), (req, status, body)
            return
        _, body_kind, response_kind = protocol.ENDPOINTS[hit]
        if status < 400:
            assert status == 200, (req, status)
            if response_kind in RESPONSE_CLASSES:
                RESPONSE_CLASSES[response_kind].from_json(body)
            elif response_kind == "openapi":
                assert json.loads(body) == json.loads(json.dumps(SPEC))
        if "Transfer-Encoding" in names:
            assert status == 411, (req, status, body)
        elif req["length"] == "garbage":
            assert status == 400, (req, status, body)  # the framing is unknown
        elif req["length"] == "huge":
            assert status == 413, (req, status, body)
        elif req["length"] == "absent" and body_kind is not None:
            assert status == 411, (req, status, body)
        if framed and body_kind not in (None, "package") and len(req["body"]) <= protocol.MAX_JSON_BYTES:
            # JSON that does not conform to the schema is refused; JSON that does is not a bad request
            try:
                ok = conforms(json.loads(req["body"]), {"$ref": f"#/components/schemas/{body_kind}"})
            except (ValueError, RecursionError):
                ok = False
            if ok:
                assert status != 400 or error_code(body) != "bad_request", (req, body)
            else:
                assert 400 <= status < 500, (req, status, body)
        elif framed and body_kind == "package":
            assert 400 <= status < 500, (req, status, body)  # the fuzzer cannot sign
        elif framed and body_kind is None and len(req["body"]) <= protocol.MAX_JSON_BYTES:
            assert status in (200, 409), (req, status, body)  # a small body is ignored; 409: no previous

    def test_still_serving_after_fuzzing(self, fuzz_device):
        dev = fuzz_device
        assert dev.fuzzed >= 0.9 * FUZZ_EXAMPLES * len(dev.fuzzed_ops), dev.fuzzed
        print(f"fuzzed requests: {dev.fuzzed}, answers: {dict(sorted(dev.outcomes.items()))}")
        if len(dev.fuzzed_ops) == len(OPERATIONS):  # the requests got past auth, routing and framing
            assert {200, 400, 401, 404, 405, 411, 413, 422} <= set(dev.outcomes), dev.outcomes
        check_device(dev, allowed={OLD_ID}, expected=OLD_ID)
        assert [m["id"] for m in dev.listing().models] == [OLD_ID]
        assert dev.agent.stop() == 0


def test_bad_content_length_is_refused_on_every_endpoint(tmp_path_factory, key):
    """A Content-Length that is not 1*DIGIT makes the request's framing unknown: 400 and the
    connection closed, on every endpoint (the agent used to read "-5" or "abc" as 0 where it
    expects no body, and take the bytes after the head as the next request)."""
    dev = paired_device(tmp_path_factory, key, "framing")
    try:
        for method, path in protocol.ENDPOINTS:
            for value in ("-5", "abc", "+5", "1_0", "\u0661"):
                smuggled = f"GET {API}/status HTTP/1.1\r\nAuthorization: Bearer {dev.token}\r\n\r\n".encode()
                with socket.create_connection(("127.0.0.1", dev.agent.port), timeout=10) as sock:
                    sock.sendall(f"{method} {path} HTTP/1.1\r\nAuthorization: Bearer {dev.token}\r\n"
                                 f"Content-Length: {value}\r\n\r\n".encode() + smuggled)
                    raw = read_all(sock)
                assert raw.startswith(b"HTTP/1.1 400 "), (method, path, value, raw[:300])
                assert raw.count(b"HTTP/1.1 ") == 1, (method, path, value, raw)  # nothing answered after it
                assert error_code(raw.partition(b"\r\n\r\n")[2]) == "bad_request"
    finally:
        dev.agent.stop()
