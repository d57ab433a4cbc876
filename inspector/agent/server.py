"""The agent's HTTP(S) API server: exactly the endpoints of :data:`inspector.link.protocol.ENDPOINTS`,
started, stopped, and the status it reports.

How a request is checked and answered is :mod:`inspector.agent.handler`'s (its module doc has
the order of checks); who gets a connection, deadlines and the ``503`` when every slot does
real work are :mod:`inspector.agent.connections`'s. :class:`AgentServer` ties them to the
identity, the repository and the runtime; :meth:`AgentServer.stop` ends streams at once.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from inspector.agent.connections import MAX_CONNECTIONS, AgentHTTPServer
from inspector.agent.handler import RequestHandler
from inspector.link import protocol

log = logging.getLogger(__name__)

REAPER_PERIOD_S = 0.25
STOP_JOIN_S = 3.0
EVENTS_IN_STATUS = 50


class AgentServer:
    """The API server (see the module doc). ``port=0`` picks a free port; :attr:`port` says which."""

    def __init__(self, identity: Any, repository: Any, runtime: Any, *, host: str = "127.0.0.1",
                 port: int = protocol.DEFAULT_PORT, tls: bool = True, max_connections: int = MAX_CONNECTIONS):
        from inspector.agent.repository_state import RepositoryError

        self.identity, self.repository, self.runtime = identity, repository, runtime
        self.repository_error = RepositoryError
        self.tls = bool(tls)
        self.host = host
        self.stopping = False
        self._streams: set[Any] = set()
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._httpd = AgentHTTPServer((host, int(port)), RequestHandler, self,
                                      identity.ssl_context() if self.tls else None, max_connections)
        self._thread: threading.Thread | None = None
        self._reaper_stop = threading.Event()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="agent-http", daemon=True)
        self._thread.start()
        threading.Thread(target=self._reap, name="agent-reaper", daemon=True).start()
        log.info("serving %s on %s:%d", "HTTPS" if self.tls else "plain HTTP (insecure)", self.host, self.port)

    def _reap(self) -> None:
        while not self._reaper_stop.wait(REAPER_PERIOD_S):
            try:
                self._httpd.reap()
            except Exception:  # noqa: BLE001 - the reaper must outlive any one bad connection
                log.exception("connection reaper")

    def stop(self) -> None:
        """Stop accepting, end stream connections at once, close every connection."""
        self.stopping = True
        self._reaper_stop.set()
        with self._lock:
            streams = list(self._streams)
        for sub in streams:
            sub.close()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(STOP_JOIN_S)
        self._httpd.server_close()
        with self._httpd.conns_lock:
            conns = list(self._httpd.conns.items())
            for sock, _ in conns:
                try:
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: wakes a blocked read/write
                except OSError:
                    pass
        deadline = time.monotonic() + STOP_JOIN_S
        for _, c in conns:
            if c.thread is not None:
                c.thread.join(max(0.0, deadline - time.monotonic()))

    def _track_stream(self, sub: Any, add: bool) -> None:
        with self._lock:
            (self._streams.add if add else self._streams.discard)(sub)

    def status(self) -> protocol.Status:
        st = self.runtime.status()
        return protocol.Status(agent_id=self.identity.agent_id, agent_name=self.identity.name,
                               camera=st["camera"], model=st["model"], provider=st["provider"],
                               fps=st["fps"], clients=st["clients"], events=self._events(),
                               uptime_s=round(time.monotonic() - self._started, 3),
                               activation=st.get("activation"), isa=st.get("isa", ""),
                               verification=st.get("verification"), model_frames=st.get("model_frames", 0),
                               model_checked=st.get("model_checked", False), tile_share=st.get("tile_share"),
                               starting=st.get("starting", False))

    def _events(self) -> list[dict]:
        # repository first: within one second (the resolution of both), its "activated" comes
        # before the runtime's "in-service" once the stable sort is done
        events = [{"time": str(e.get("time", "")), "kind": str(e.get("kind", "repository")),
                   "message": str(e.get("message", ""))}
                  for e in list(getattr(self.repository, "events", []) or []) if isinstance(e, dict)]
        events += self.runtime.events()
        events.sort(key=lambda e: e["time"])
        return events[-EVENTS_IN_STATUS:]
