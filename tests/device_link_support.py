"""What the device-link tests share (``test_device_link.py``, ``test_device_link_qt.py``): a real
agent process on loopback (TLS), a private home, a paired app and its signing key, and the
shipped model re-versioned for pushing."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inspector.edge.package import load_package, write_package
from inspector.link.client import DeviceClient, Pairing
from inspector.link.signing import SigningKey
from inspector.paths import default_model, sample_video
from inspector.store.database import ModelRef

REPO = Path(__file__).resolve().parents[1]
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
