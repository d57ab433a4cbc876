"""The agent's connections: who gets a thread, for how long, and the 503 when none is left.

``http.server.ThreadingHTTPServer`` (one daemon thread per connection, HTTP/1.1 keep-alive),
TLS 1.2+ with the identity's certificate unless the server is given no SSL context
(``--insecure-http``, loopback tests). The TLS handshake happens on the connection's thread
(:meth:`~inspector.agent.handler.RequestHandler.setup`), never in the accept loop, so a client
that connects and says nothing cannot stall the server.

Connections: nobody on the network can lock the others out
-------------------------------------------------------------
At most ``max_connections`` (:data:`MAX_CONNECTIONS`) connections have a thread at once. A
connection gets :data:`HEAD_TIMEOUT_S` in all for its TLS handshake and a complete request head
(the same again while idle between keep-alive requests), and an unauthenticated request
:data:`OPEN_REQUEST_S` from head to answer: a reaper thread shuts down whoever is late, so idle
sockets, slowloris heads (a byte a second resets no per-read timeout, but not this deadline)
and stalled handshakes free their slot within seconds. When every slot is taken, a new
connection takes the slot of a connection still waiting for its request head (the oldest one
of the address with the most of them), so a flood of idle connections cannot keep a real
request out. Only when every slot is doing real work (authenticated requests, streams, which
are never dropped for a newcomer) is the newcomer answered ``503`` with ``Retry-After`` (over
TLS too: up to :data:`MAX_REFUSING` such answers at once, each bounded by
:data:`REFUSE_TIMEOUT_S`; beyond that it is closed).
"""
from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from inspector.link.protocol import ApiError

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64          # a Jetson has better uses for its memory than a thread per attacker
HEAD_TIMEOUT_S = 5.0          # TLS handshake + complete request head (and idle keep-alive); see the doc
OPEN_REQUEST_S = 10.0         # an unauthenticated request from its head to the end of its answer
MAX_REFUSING = 8              # 503 answers in progress at once; beyond, new connections are just closed
REFUSE_TIMEOUT_S = 2.0        # per socket operation of a 503 answer (handshake, read, write)
RETRY_AFTER_S = 5
# The client went away or stalled (not OSError as a whole: a full disk while storing an upload
# must be answered and logged, not mistaken for a hang-up).
NETWORK_ERRORS = (ConnectionError, TimeoutError, ssl.SSLError)


def _busy_response() -> bytes:
    body = ApiError(503, "busy", f"the agent is serving as many connections as it can; try again in "
                    f"{RETRY_AFTER_S} s").to_json()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_S}\r\nCache-Control: no-store\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("ascii") + body


class _Conn:
    """A served connection: its thread, whether it waits for a request head, its deadline."""

    __slots__ = ("sock", "peer", "thread", "since", "deadline", "waiting", "dropped")

    def __init__(self, sock: Any, peer: str, now: float):
        self.sock, self.peer, self.thread = sock, peer, None
        self.since, self.deadline, self.waiting, self.dropped = now, now + HEAD_TIMEOUT_S, True, False


class AgentHTTPServer(ThreadingHTTPServer):
    """The listening socket and its connection slots; ``agent`` (the AgentServer) is what
    the handler serves."""

    daemon_threads = True
    allow_reuse_address = True
    # listen() backlog: socketserver's 5 makes a burst of connections wait for SYN retries
    # (a second and more) before they are even accepted, and so before a slot can be freed
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], agent: Any,
                 ssl_context: ssl.SSLContext | None, max_connections: int = MAX_CONNECTIONS):
        self.agent = agent
        self.ssl_context = ssl_context
        self.max_connections = int(max_connections)
        self.conns: dict[Any, _Conn] = {}
        self.conns_lock = threading.Lock()
        self._refusing = threading.BoundedSemaphore(MAX_REFUSING)
        self._logged_full = 0.0
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(host): a reverse DNS lookup that can
        # take seconds on a Jetson without DNS. The name is not used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        if self.ssl_context is not None:
            # handshake later, on the connection's own thread (see RequestHandler.setup)
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    # ------------------------------------------------------------------ slots and deadlines

    def set_deadline(self, sock: Any, seconds: float | None, *, waiting: bool) -> None:
        """From now on ``sock`` must be done within ``seconds`` (None: no limit); ``waiting``:
        it waits for a request head (and may give its slot to a newcomer)."""
        now = time.monotonic()
        with self.conns_lock:
            c = self.conns.get(sock)
            if c is not None:
                c.deadline = None if seconds is None else now + seconds
                if waiting and not c.waiting:
                    c.since = now
                c.waiting = waiting

    def _drop_locked(self, c: _Conn, why: str) -> None:
        # Under conns_lock: shutdown_request pops the entry under the same lock before it closes
        # the socket, so this file descriptor is still this connection's.
        c.dropped = True
        log.debug("dropping the connection from %s: %s", c.peer, why)
        try:
            socket.socket.shutdown(c.sock, socket.SHUT_RDWR)  # wakes its thread's blocked read
        except OSError:
            pass

    def _victim_locked(self) -> _Conn | None:
        """The connection that gives its slot to a newcomer: one still waiting for its request
        head, from the address with the most of them, the longest waiting first."""
        waiting = [c for c in self.conns.values() if c.waiting and not c.dropped]
        if not waiting:
            return None
        per_peer: dict[str, int] = {}
        for c in waiting:
            per_peer[c.peer] = per_peer.get(c.peer, 0) + 1
        return min(waiting, key=lambda c: (-per_peer[c.peer], c.since))

    def reap(self) -> None:
        """Drop every connection past its deadline (the reaper thread calls this)."""
        now = time.monotonic()
        with self.conns_lock:
            for c in self.conns.values():
                if not c.dropped and c.deadline is not None and now > c.deadline:
                    self._drop_locked(c, "too slow" if not c.waiting else "no request head in time")

    def process_request(self, request: Any, client_address: Any) -> None:
        c = _Conn(request, str(client_address[0]), time.monotonic())
        with self.conns_lock:
            busy = sum(1 for x in self.conns.values() if not x.dropped)
            victim = self._victim_locked() if busy >= self.max_connections else None
            if victim is not None:
                self._drop_locked(victim, "its slot went to a new connection")
            full = busy >= self.max_connections and victim is None
            if not full:
                c.thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                            name=f"agent-conn {client_address[0]}:{client_address[1]}",
                                            daemon=True)
                self.conns[request] = c
        if full:
            self._refuse(request, client_address)
            return
        c.thread.start()

    def _refuse(self, request: Any, client_address: Any) -> None:
        now = time.monotonic()
        if now - self._logged_full > 10.0:
            self._logged_full = now
            log.warning("%d connections busy: answering 503 to %s (and others for 10 s)",
                        self.max_connections, client_address[0])
        if not self._refusing.acquire(blocking=False):
            self.shutdown_request(request)
            return
        threading.Thread(target=self._answer_busy, args=(request,), name="agent-503", daemon=True).start()

    def _answer_busy(self, sock: Any) -> None:
        """503 + Retry-After as a real HTTP answer (after the TLS handshake); every step bounded."""
        try:
            sock.settimeout(REFUSE_TIMEOUT_S)
            if isinstance(sock, ssl.SSLSocket):
                sock.do_handshake()
            try:  # the request, so that closing with it unread does not reset our answer away
                sock.recv(1 << 16)
            except (OSError, ValueError):
                pass
            sock.sendall(_busy_response())
        except (OSError, ValueError) as exc:
            log.debug("503 answer not delivered: %s", exc)
        finally:
            self.shutdown_request(sock)
            self._refusing.release()

    def shutdown_request(self, request: Any) -> None:
        with self.conns_lock:
            self.conns.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (*NETWORK_ERRORS, OSError)):
            log.debug("connection from %s ended: %s", client_address[0], exc)
        else:
            log.error("connection from %s failed", client_address[0], exc_info=True)

