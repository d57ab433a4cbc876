"""A model push interrupted at random points (fixed seed), against the real agent, SIGKILLed and
restarted on the same data folder and port: the uploading client SIGKILLed, the agent SIGKILLed
mid-body and right after ``POST /models/activate``, the connection cut mid-body (FIN or RST).
After every run the device serves the old or the new model and nothing else, the stream says
the same model as the status, a restarted agent serves the last completed activation, and
nothing is left half-done (``models/incoming`` empty, no unreferenced package file, no half entry).

Real ``python -m inspector.agent`` processes on loopback (plain HTTP for speed); the device
helpers (:class:`agent_support.Device`, :func:`agent_support.check_device`) are shared with
the other fault files. Missing or wrong credentials on every endpoint are covered in
``test_agent_server.py``.
"""
from __future__ import annotations

import json
import random
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

from agent_support import (NEW_ID, OLD_ID, SEED, UPLOAD, Device, check_device, close_abortively, device_fixture,
                           parse_response, read_all, request_head)
from agent_support import key, pkgs  # noqa: F401 - fixtures, used by name

from inspector.link import protocol
from inspector.agent.repository_state import INCOMING_DIR
from inspector.link.protocol import API


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
