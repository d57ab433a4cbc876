"""``inspector-agent``: the device agent's command line.

    inspector-agent [--source SOURCE] [--model PACKAGE] [--port PORT] [--data DIR] [--config FILE]
                    [--name NAME] [--host HOST] [--insecure-http] [--no-mdns] [--threads N]
                    [--max-connections N]
    inspector-agent [--data DIR] --list-clients
    inspector-agent [--data DIR] --revoke NAME_OR_KEY_ID

A config file (YAML or JSON) holds the same long options as keys (``insecure-http: true``;
``insecure_http`` works too); the command line wins over the file, the file over the defaults;
an unknown key is refused. Defaults: the shipped sample video, the shipped model, the data
folder ``platformdirs.user_data_dir("crack-inspector-agent")``, port
:data:`~inspector.link.protocol.DEFAULT_PORT` on all interfaces, TLS on, mDNS on.
``--insecure-http`` (tokens in clear) is allowed on a loopback address only (127.0.0.0/8,
``::1``, ``localhost``; it is then the default host); any other host is refused (exit 2).

``--list-clients`` and ``--revoke`` work on the data folder and exit, also while an agent runs
on it: the running agent re-reads the paired clients when the file changes, so a revoked
client's next request gets 401 and its open stream ends (:mod:`inspector.agent.identity`).
SIGHUP makes the running agent replace its pairing code (the operator's rotation).

``--model`` is imported into the agent's model repository at every start (a no-op when it is
already stored) and becomes active only if nothing is active: a version pushed from the app
and activated stays active across restarts.

The first line on stdout, once the agent serves, is machine-readable::

    AGENT READY port=<port> tls=<0|1> cert_sha256=<hex> pairing_code=<6 digits> data=<dir>

Everything else goes to the log (stderr). SIGTERM or SIGINT stops the agent cleanly (exit 0).
Exit status 2: bad options or config; 1: the agent could not start (the message says why).
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from inspector.edge.reuse import ReusePolicy
from inspector.link import protocol
from inspector.errors import InspectorError

log = logging.getLogger("inspector.agent")

APP_NAME = "crack-inspector-agent"

# option name -> (type, help); the config file accepts exactly these keys
OPTIONS: dict[str, tuple[type, str]] = {
    "source": (str, "camera index, video file, rtsp/http URL or GStreamer pipeline (default: the sample video)"),
    "model": (str, "model package to import and use if none is active (default: the shipped model)"),
    "port": (int, f"TCP port (default {protocol.DEFAULT_PORT}; 0 picks a free one)"),
    "data": (str, "data folder: identity, paired clients, model versions (default: the user data dir)"),
    "name": (str, "the agent's name shown in the app (default: the host name)"),
    "host": (str, "address to listen on (default 0.0.0.0: all interfaces)"),
    "insecure-http": (bool, "plain HTTP instead of HTTPS (loopback tests only: tokens travel in clear)"),
    "no-mdns": (bool, "do not advertise the agent over mDNS"),
    "threads": (int, "inference threads (default: the usable cores)"),
    "no-tile-reuse": (bool, "infer every tile of every frame (default: only the tiles whose content changed, "
                            "see inspector.edge.reuse)"),
    "max-connections": (int, "connections served at once; when all do real work, others get 503 (default 64)"),
    "log-level": (str, "DEBUG, INFO, WARNING or ERROR (default INFO)"),
    "numeric-path": (str, "test hook: run models along a stand-in numeric path on the CPU, 'unfused' (graph "
                          "optimisations off) or 'emulated-tensorrt' (checked with the accelerator rule); "
                          "default 'optimised', the provider's own kernels"),
}


class AgentConfigError(InspectorError, ValueError):
    """A bad option or config file; the message says which and why."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inspector-agent",
                                description="Crack inspector device agent: camera → model → stream to the app.")
    p.add_argument("--config", help="YAML or JSON file with any of the options below as keys")
    p.add_argument("--list-clients", action="store_true", help="list the paired clients (of --data) and exit")
    p.add_argument("--revoke", metavar="NAME_OR_KEY_ID",
                   help="unpair every client with this name or signing-key id and exit (works while the agent runs)")
    for name, (typ, text) in OPTIONS.items():
        if typ is bool:
            p.add_argument(f"--{name}", action="store_true", default=None, help=text)
        else:
            p.add_argument(f"--{name}", type=typ, default=None, help=text, metavar=name.upper().replace("-", "_"))
    return p


def load_config(path: str | Path) -> dict[str, Any]:
    """The options in a YAML/JSON config file, keys normalised to the long option names."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AgentConfigError(f"config {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            try:
                import yaml
            except ImportError:
                raise AgentConfigError(f"config {path}: reading YAML needs PyYAML (pip install pyyaml); "
                                  f"or write the config as JSON (.json)") from None
            doc = yaml.safe_load(text)
    except AgentConfigError:
        raise
    except ValueError as exc:  # json.JSONDecodeError
        raise AgentConfigError(f"config {path}: not valid JSON ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - yaml.YAMLError has no common base with ValueError
        raise AgentConfigError(f"config {path}: not valid YAML ({exc})") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise AgentConfigError(f"config {path}: expected a mapping of option: value, got {type(doc).__name__}")
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = str(key).replace("_", "-")
        if name not in OPTIONS:
            raise AgentConfigError(f"config {path}: unknown key {key!r}; known keys: {', '.join(OPTIONS)}")
        typ = OPTIONS[name][0]
        if name == "source" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # a camera index written as a number
        if typ is int and isinstance(value, bool) or not isinstance(value, typ):
            raise AgentConfigError(f"config {path}: {key} must be {typ.__name__}, got {type(value).__name__} {value!r}")
        out[name] = value
    return out


def _default_data_dir() -> str:
    try:
        import platformdirs
    except ImportError:  # a minimal Jetson install: the XDG default platformdirs would give
        import os

        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return str(Path(base) / APP_NAME)
    return platformdirs.user_data_dir(APP_NAME, appauthor=False)


def resolve_options(argv: Sequence[str] | None) -> dict[str, Any]:
    """Command line over config file over defaults; every option present in the result."""
    args = _parser().parse_args(argv)
    given = {name: getattr(args, name.replace("-", "_")) for name in OPTIONS}
    merged = load_config(args.config) if args.config else {}
    merged.update({k: v for k, v in given.items() if v is not None})
    if "source" not in merged or "model" not in merged:
        from inspector import paths

        try:
            merged.setdefault("source", str(paths.sample_video()))
            merged.setdefault("model", str(paths.default_model()))
        except FileNotFoundError as exc:
            # a wheel install (pip install ".[agent]") carries the code, not models/ and resources/
            raise AgentConfigError(f"{exc}; an installed agent has no shipped files next to it: give --model PACKAGE "
                              f"and --source (camera, file or pipeline), or run it from a checkout") from None
    if "data" not in merged:
        merged["data"] = _default_data_dir()
    merged.setdefault("port", protocol.DEFAULT_PORT)
    merged.setdefault("host", "127.0.0.1" if merged.get("insecure-http") else "0.0.0.0")
    merged.setdefault("name", None)
    merged.setdefault("insecure-http", False)
    merged.setdefault("no-mdns", False)
    merged.setdefault("no-tile-reuse", False)
    merged.setdefault("threads", None)
    merged.setdefault("numeric-path", None)
    merged.setdefault("log-level", "INFO")
    merged.setdefault("max-connections", None)
    merged["list-clients"], merged["revoke"] = args.list_clients, args.revoke
    if merged["insecure-http"] and not is_loopback(merged["host"]):
        raise AgentConfigError(f"--insecure-http sends tokens and frames in clear: it is allowed on a loopback "
                          f"address only (127.0.0.0/8, ::1, localhost), not on {merged['host']!r}; "
                          f"drop --insecure-http to serve HTTPS there")
    if merged["max-connections"] is not None and merged["max-connections"] < 1:
        raise AgentConfigError(f"max-connections must be 1 or more, got {merged['max-connections']}")
    if not 0 <= merged["port"] <= 65535:
        raise AgentConfigError(f"port must be 0..65535, got {merged['port']}")
    if merged["threads"] is not None and merged["threads"] < 1:
        raise AgentConfigError(f"threads must be 1 or more, got {merged['threads']}")
    from inspector.edge.numerics import NUMERIC_PATHS
    if merged["numeric-path"] is not None and merged["numeric-path"] not in NUMERIC_PATHS:
        raise AgentConfigError(f"numeric-path must be one of {', '.join(NUMERIC_PATHS)}, got {merged['numeric-path']!r}")
    if str(merged["log-level"]).upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise AgentConfigError(f"log-level must be DEBUG, INFO, WARNING or ERROR, got {merged['log-level']!r}")
    return merged


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``."""
    import ipaddress

    if str(host).strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host).strip("[]")).is_loopback
    except ValueError:
        return False


def manage_clients(opts: dict[str, Any]) -> int:
    """``--list-clients`` / ``--revoke``: on the data folder, with or without a running agent."""
    from inspector.agent.identity import IDENTITY_DIR, ClientRegistry, IdentityError

    data = Path(opts["data"]).expanduser().resolve()
    try:
        registry = ClientRegistry(data / IDENTITY_DIR)
        if opts["revoke"] is None:
            clients = registry.current()
            for c in clients:
                print(f"{c.name}\tkey {c.key_id}\tpaired {c.paired}")
            if not clients:
                print(f"no paired clients in {data}", file=sys.stderr)
            return 0
        gone = registry.revoke(opts["revoke"])
    except (IdentityError, OSError) as exc:
        print(f"inspector-agent: {exc}", file=sys.stderr)
        return 1
    if not gone:
        print(f"inspector-agent: no paired client named {opts['revoke']!r} in {data} "
              f"(--list-clients shows them)", file=sys.stderr)
        return 1
    for c in gone:
        print(f"revoked {c.name} (key {c.key_id}); a running agent refuses its token from now on")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts = resolve_options(argv)
    except (AgentConfigError, FileNotFoundError) as exc:
        print(f"inspector-agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=str(opts["log-level"]).upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if opts["list-clients"] or opts["revoke"] is not None:
        return manage_clients(opts)
    try:
        return run(opts)
    except StartError as exc:
        print(f"inspector-agent: cannot start: {exc}", file=sys.stderr)
        return 1


class StartError(InspectorError, RuntimeError):
    """The agent cannot start (data folder in use, no usable model, port taken...)."""


def _lock_data_dir(data: Path) -> Any:
    """An exclusive lock on ``DATA/agent.lock`` for the life of the process: a second agent on
    the same folder would replace the first one's pairing code and fight over its models."""
    import fcntl

    fh = open(data / "agent.lock", "a+b")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise StartError(f"another agent is running on the data folder {data}") from None
    return fh


def run(opts: dict[str, Any]) -> int:
    """Start everything, print the READY line, serve until SIGTERM/SIGINT, stop cleanly."""
    from inspector.capture.sources import SourceError, parse_source

    stop = threading.Event()
    new_code = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    def on_hup(_signum: int, _frame: Any) -> None:
        new_code.set()   # the main loop makes it (no file writing in a signal handler)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        spec = parse_source(opts["source"])
    except SourceError as exc:
        raise StartError(f"--source: {exc}") from None
    data = Path(opts["data"]).expanduser().resolve()
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartError(f"data folder {data}: {exc.strerror or exc}") from None
    lock = _lock_data_dir(data)
    try:
        _serve(opts, spec, data, stop, new_code)
    finally:
        lock.close()
    return 0


def _open_store(opts: dict[str, Any], data: Path) -> tuple[Any, Any]:
    """(identity, repository) with the command-line package imported."""
    from inspector.agent.identity import Identity, IdentityError
    from inspector.agent.repository import ModelRepository
    from inspector.agent.repository_state import RepositoryError

    try:
        identity = Identity(data, name=opts["name"])
        repository = ModelRepository(data / "models", trusted_keys=identity.trusted_keys)
    except (IdentityError, RepositoryError, OSError) as exc:
        raise StartError(str(exc)) from None
    for what in repository.recovered:
        log.warning("model repository: %s", what)
    try:
        repository.import_local(opts["model"])
    except RepositoryError as exc:
        active = repository.active()
        if active is None:
            repository.close()
            raise StartError(f"--model {opts['model']}: {exc.message}") from None
        log.warning("--model %s not imported (%s); %s stays active", opts["model"], exc.message, active.id)
    return identity, repository


def _check_port(host: str, port: int) -> None:
    """StartError naming the port if ``host:port`` cannot be bound (taken, no permission). A
    probe bound and released like the server's own (SO_REUSEADDR); port 0 needs none."""
    import socket

    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, int(port)))
    except OSError as exc:
        raise StartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; is another agent or program "
                         f"using port {port}? Choose another with --port") from None


def _serve(opts: dict[str, Any], spec: Any, data: Path, stop: threading.Event, new_code: threading.Event) -> None:
    from inspector.capture.sources import FrameGrabber
    from inspector.agent.runtime import AgentRuntime
    from inspector.agent.server import AgentServer

    tls = not opts["insecure-http"]
    _check_port(opts["host"], opts["port"])   # before the identity shows a pairing code for an agent that never serves
    identity, repository = _open_store(opts, data)
    runtime = AgentRuntime(repository, FrameGrabber(spec, loop=True, realtime=True), threads=opts["threads"],
                           numeric_path=opts["numeric-path"] or "optimised",
                           reuse=None if opts["no-tile-reuse"] else ReusePolicy())
    try:
        server = AgentServer(identity, repository, runtime, host=opts["host"], port=opts["port"], tls=tls,
                             **({"max_connections": opts["max-connections"]} if opts["max-connections"] else {}))
    except OSError as exc:
        repository.close()
        raise StartError(f"cannot listen on {opts['host']}:{opts['port']} ({exc.strerror or exc})") from None
    advertiser = None
    try:
        runtime.start()
        server.start()
        print(f"AGENT READY port={server.port} tls={int(tls)} cert_sha256={identity.cert_sha256} "
              f"pairing_code={identity.pairing_code} data={data}", flush=True)
        log.info("agent %r (%s) on port %d, %s, source %s; pairing code %s", identity.name, identity.agent_id,
                 server.port, "TLS" if tls else "PLAIN HTTP (insecure)", spec.label, identity.pairing_code)
        if not opts["no-mdns"]:
            from inspector.agent.discovery import start_advertising

            advertiser = start_advertising(name=identity.name, port=server.port, agent_id=identity.agent_id,
                                           tls=tls, cert_sha256=identity.cert_sha256, host=opts["host"])
        while not stop.wait(1.0):
            if new_code.is_set():
                new_code.clear()
                identity.new_code("asked for with SIGHUP")
    finally:
        if advertiser is not None:
            advertiser.stop()
        server.stop()
        runtime.stop()
        repository.close()
        log.info("stopped")
