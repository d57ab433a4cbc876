"""A demo device on this laptop: the device agent on loopback, paired exactly like a real one.

``inspector --demo`` (and "Start demo device" in the Device panel) runs the agent program as a
child process on 127.0.0.1 with the shipped sample video and the shipped model, reads the
pairing code **locally** (the agent writes it to ``<data>/pairing-code.txt``, the file a
technician reads on a real device; its READY line says the same), pairs through the real
``/pair`` call with that code, and saves the pairing in the app's
:class:`~inspector.link.pairing.PairingStore`. From then on it is the device path: the live view,
flags, Update model, push and rollback all talk HTTPS to the agent with the pinned certificate.

The data folder (identity, certificate, paired clients, model versions) persists, by default
``platformdirs.user_data_dir("crack-inspector")/demo-device``: a second start has the same
agent id and certificate, so the saved pairing is replaced rather than duplicated, and a model
pushed to the demo device is still there next time. The agent's log of the current run is
``agent.log`` in that folder.

:meth:`DemoDevice.stop` sends SIGTERM and kills after :data:`STOP_TIMEOUT_S`; it also runs at
interpreter exit. A demo agent left behind by an app that was killed holds the folder's lock;
the next start finds it through ``demo-agent.pid`` and stops it first (only if the app that
started it is gone, so two apps never fight over one demo device).

Plain Python, no Qt: the window runs :meth:`DemoDevice.start` on its job runner, tests call it
directly.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from inspector.link import protocol as P
from inspector.link.client import DeviceClient, Pairing
from inspector.link.connection import DeviceError
from inspector.link.pairing import APP_DIR, PairingStore, client_name

log = logging.getLogger(__name__)

DEMO_DIR = "demo-device"            # under the app's per-user data folder
DEMO_NAME = "demo-device"           # the agent's name, shown in the app
HOST = "127.0.0.1"                  # loopback only: the demo device is never on the network
PID_FILE = "demo-agent.pid"         # "<agent pid> <app pid>"
YIELD_NICE = 19                     # lower_priority(): the lowest priority there is
LOG_FILE = "agent.log"
PAIRING_CODE_FILE = "pairing-code.txt"   # written by the agent (inspector/agent/identity.py)
# A cold start imports onnxruntime and OpenCV, loads the model and re-runs its reference
# outputs: ~3-6 s on a laptop, far more on a loaded machine.
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0               # SIGTERM, then SIGKILL; the agent stops within ~2 s
LOG_TAIL_LINES = 8
# The agent's first stdout line (inspector/agent/main.py documents it).
READY_LINE = re.compile(r"^AGENT READY port=(\d+) tls=([01]) cert_sha256=([0-9a-f]{64}) "
                        r"pairing_code=(\d+) data=(.+)$")


class DemoError(DeviceError):
    """The demo device did not start, could not be paired, or stopped unexpectedly; the message
    ends with the tail of the agent's log."""


@dataclass(frozen=True)
class AgentReady:
    """What the agent's READY line says."""

    port: int
    tls: bool
    cert_sha256: str
    pairing_code: str
    data: Path

    @classmethod
    def parse(cls, line: str) -> "AgentReady | None":
        m = READY_LINE.match(line.strip())
        if m is None:
            return None
        return cls(int(m[1]), m[2] == "1", m[3], m[4], Path(m[5]))


def demo_data_dir() -> Path:
    """The demo device's data folder under the per-user data folder."""
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_DIR)) / DEMO_DIR


def agent_program() -> list[str]:
    """The agent's command: the ``inspector-agent`` executable beside a frozen app (PyInstaller),
    else this interpreter running the package."""
    if getattr(sys, "frozen", False):
        exe = Path(sys.executable).with_name("inspector-agent" + (".exe" if os.name == "nt" else ""))
        return [str(exe)]
    return [sys.executable, "-m", "inspector.agent"]


class DemoDevice:
    """A device agent on loopback that this app pairs with: ``start() -> Pairing``, ``stop()``.

    ``pairings``: where the pairing is saved (default: the per-user PairingStore). ``data``: the
    agent's data folder (default :func:`demo_data_dir`). ``source`` / ``model``: default the
    shipped sample video and model. ``threads``: the agent's inference threads (None: its default).
    Use as a context manager to stop it on leaving. Every failure is a :class:`DemoError`.
    """

    def __init__(self, pairings: PairingStore | None = None, *, data: str | os.PathLike | None = None,
                 source: str | os.PathLike | None = None, model: str | os.PathLike | None = None,
                 name: str = DEMO_NAME, threads: int | None = None, start_timeout: float = START_TIMEOUT_S,
                 stop_timeout: float = STOP_TIMEOUT_S, program: list[str] | None = None):
        self.pairings = pairings if pairings is not None else PairingStore()
        self.data = Path(data) if data is not None else demo_data_dir()
        self.source, self.model, self.name, self.threads = source, model, name, threads
        self.start_timeout, self.stop_timeout = float(start_timeout), float(stop_timeout)
        self.program = list(program) if program is not None else agent_program()
        self.log_path = self.data / LOG_FILE
        self.pairing: Pairing | None = None
        self.ready: AgentReady | None = None
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._lock = threading.Lock()
        self._stopping = False

    def __repr__(self) -> str:
        return f"DemoDevice({self.data}, {'running' if self.running else 'stopped'})"

    def __enter__(self) -> "DemoDevice":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ state

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def failure(self) -> str | None:
        """Why the agent is gone if it stopped without :meth:`stop` (a crash), else None."""
        proc = self._proc
        if proc is None or self._stopping or proc.poll() is None:
            return None
        return f"The demo device stopped unexpectedly ({_exit_text(proc.returncode)}).{self.log_tail()}"

    def command(self) -> list[str]:
        from inspector.paths import default_model, sample_video

        cmd = [*self.program, "--host", HOST, "--port", "0", "--no-mdns", "--data", str(self.data),
               "--source", str(self.source or sample_video()), "--model", str(self.model or default_model()),
               "--name", self.name]
        return cmd + (["--threads", str(int(self.threads))] if self.threads else [])

    # ------------------------------------------------------------------ start

    def start(self) -> Pairing:
        """Start the agent, pair with the code it wrote, save and return the pairing (seconds:
        run it off the GUI thread). Already running: the pairing made at the start."""
        if self.running and self.pairing is not None:
            return self.pairing
        try:
            self.data.mkdir(parents=True, exist_ok=True, mode=0o700)
            cmd = self.command()
        except OSError as exc:
            raise DemoError(f"cannot prepare the demo device: {exc}") from None
        _stop_orphan(self.data / PID_FILE)
        self._spawn(cmd)
        self.ready = ready = self._wait_ready()
        code = self._pairing_code(ready)
        try:
            client = DeviceClient(HOST, ready.port, tls=ready.tls, cert_sha256=ready.cert_sha256)
            pairing = client.pair(code, client_name(), self.pairings.signing_key())
            self.pairings.save(pairing)
        except (DeviceError, OSError, ValueError) as exc:     # ValueError: a damaged signing key
            self.stop()
            raise DemoError(f"could not pair with the demo device: {exc}{self.log_tail()}") from None
        self.pairing = pairing
        log.info("demo device %s at %s (pid %s, data %s)", pairing.agent_name, pairing.address, self.pid, self.data)
        return pairing

    def _spawn(self, cmd: list[str]) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is not None:
                self._proc, self._stopping = None, False    # a finished run: this one starts afresh
            if self._stopping:
                raise DemoError("the demo device was stopped while starting")
            self._log = open(self.log_path, "wb")     # this run's log only
            try:
                self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                              stderr=self._log, text=True)
            except OSError as exc:
                self._log.close()
                raise DemoError(f"cannot run the device agent {cmd[0]}: {exc.strerror or exc}") from None
        with contextlib.suppress(OSError):
            (self.data / PID_FILE).write_text(f"{self._proc.pid} {os.getpid()}\n")
        atexit.register(self.stop)

    def _wait_ready(self) -> AgentReady:
        """The READY line, or DemoError with the log's tail (no line in time, or the agent exited)."""
        lines: queue.Queue[str] = queue.Queue()
        proc = self._proc

        def read() -> None:          # the first line, then drain: a full pipe would block the agent
            with contextlib.suppress(OSError, ValueError):
                lines.put(proc.stdout.readline())
                for _ in proc.stdout:
                    pass

        threading.Thread(target=read, name="demo-agent-stdout", daemon=True).start()
        try:
            line = lines.get(timeout=self.start_timeout)
        except queue.Empty:
            self.stop()
            raise DemoError(f"the demo device did not start within {self.start_timeout:.0f} s"
                            f"{self.log_tail()}") from None
        ready = AgentReady.parse(line)
        if ready is None:
            stopped = self._stopping
            rc = self.stop()
            if stopped:
                raise DemoError("the demo device was stopped while starting")
            raise DemoError(f"the demo device did not start ({_exit_text(rc)}){self.log_tail()}")
        return ready

    def _pairing_code(self, ready: AgentReady) -> str:
        """The code from the agent's data folder (what a technician reads on a device); the
        READY line's copy if the file cannot be read."""
        try:
            code = (self.data / PAIRING_CODE_FILE).read_text().strip()
        except OSError as exc:
            log.warning("cannot read the demo device's pairing code file (%s); using its READY line", exc)
            return ready.pairing_code
        return code or ready.pairing_code

    def wait_live(self, timeout: float = 60.0) -> P.Status:
        """Block until the device has a model in service and frames flowing (``fps > 0``)."""
        if self.pairing is None:
            raise DemoError("the demo device is not started")
        client, deadline = DeviceClient.from_pairing(self.pairing), time.monotonic() + timeout
        while True:
            problem = self.failure()
            if problem:
                raise DemoError(problem)
            status = client.status()
            if status.model and status.fps > 0:
                return status
            if time.monotonic() > deadline:
                raise DemoError(f"the demo device shows no frames after {timeout:.0f} s{self.log_tail()}")
            time.sleep(0.2)

    # ------------------------------------------------------------------ stop

    def lower_priority(self, nice: int = YIELD_NICE) -> bool:
        """Give every thread of the agent the nice value ``nice`` (:func:`lower_priority`), so a
        job on this laptop (a model update) wins the cores when both want them. True if done."""
        return lower_priority(self.pid, nice) if self.running else False

    def stop(self) -> int | None:
        """SIGTERM, wait up to ``stop_timeout``, then SIGKILL. The exit status (None if never
        started). Safe from any thread, also while :meth:`start` runs; idempotent."""
        with self._lock:
            self._stopping = True
            proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("the demo device did not stop within %.0f s: killing it", self.stop_timeout)
                proc.kill()
                proc.wait()
        with contextlib.suppress(OSError, ValueError):
            if self._log is not None:
                self._log.close()
        pid_file = self.data / PID_FILE
        with contextlib.suppress(OSError, ValueError):
            if pid_file.read_text().split()[0] == str(proc.pid):
                pid_file.unlink()
        atexit.unregister(self.stop)
        return proc.returncode

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """``"\\n<path>:\\n<last lines>"`` of the agent's log, "" if there is none."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 8192))
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        tail = [ln for ln in text.splitlines() if ln.strip()][-lines:]
        return f"\nThe end of its log ({self.log_path}):\n" + "\n".join(tail) if tail else ""


def lower_priority(pid: int | None, nice: int = YIELD_NICE) -> bool:
    """Give every thread of process ``pid`` (an agent's inference, capture and server threads) at
    least the nice value ``nice``; True if done (Linux, the process there).

    There is no way back without privileges (a process may only lower its own priority), and
    none is needed: a nice value only matters while something else wants the same core."""
    tasks = Path(f"/proc/{pid}/task")
    if pid is None or not hasattr(os, "setpriority") or not tasks.is_dir():
        return False
    done = False
    for task in tasks.iterdir():
        try:
            tid = int(task.name)
            os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))
            done = True
        except (OSError, ValueError) as err:   # a thread that just ended, or not permitted
            log.debug("could not lower the priority of thread %s of %s: %s", task.name, pid, err)
    if done:
        log.info("process %d now runs at nice %d: a model update gets the cores first", pid, nice)
    return done


def _exit_text(rc: int | None) -> str:
    if rc is None:
        return "still running"
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-rc).name}"
    return f"exit status {rc}"


def _stop_orphan(pid_file: Path) -> None:
    """Stop a demo agent whose app is gone (killed before it could stop it): it still holds the
    data folder. Only a process that is still our agent on this folder (Linux: its command
    line), and never while the app that started it lives."""
    try:
        agent_pid, app_pid = (int(v) for v in pid_file.read_text().split()[:2])
    except (OSError, ValueError):
        return
    if _alive(app_pid):
        return
    try:
        cmdline = Path(f"/proc/{agent_pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return                                   # gone, or not Linux: the agent's own lock error says the rest
    folder = str(pid_file.parent).encode()
    if folder not in cmdline or not any(b"inspector" in part for part in cmdline):
        return
    log.warning("stopping a demo device left behind by an earlier run (pid %d)", agent_pid)
    with contextlib.suppress(OSError):
        os.kill(agent_pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(agent_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(agent_pid):
            os.kill(agent_pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped) counts as gone
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True
