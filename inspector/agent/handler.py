"""One request to the agent's API, from its head to its answer: the order of checks,
authentication, bodies, the endpoints of :data:`inspector.link.protocol.ENDPOINTS` and the stream.

Order of checks for every request
---------------------------------
0. A method no endpoint uses (:data:`~inspector.link.protocol.METHODS`; TRACE, PUT, ...): 501 on
   every path, before authentication (RFC 9110: not implemented for any resource).
1. ``(method, path)`` in :data:`~inspector.link.protocol.OPEN_ENDPOINTS` (pairing, the OpenAPI
   document): no credentials needed.
2. Otherwise ``Authorization: Bearer <token>`` must name a paired client, **before anything
   else is looked at**: a missing or wrong token gets 401 for every path and method, known or
   not, so an unauthenticated caller learns nothing about what exists. The exception: another
   method on the path of an open endpoint is 405 without credentials (that path is public).
3. Unknown path: 404; known path, another of our methods: 405 (with ``Allow``).
4. Bodies: ``Content-Length`` required where a body is expected (411; chunked bodies are not
   accepted), JSON at most :data:`~inspector.link.protocol.MAX_JSON_BYTES` (413) and parsed by the
   protocol's message classes (ProtocolError → 400); a package upload over
   :data:`~inspector.link.protocol.MAX_PACKAGE_BYTES` is refused (413) before a byte is read.
   ``Expect: 100-continue`` is honoured *after* these checks, so a client that waits for it
   never sends a body that will be refused.

Every error is an :class:`~inspector.link.protocol.ApiError` JSON body and closes the connection;
an unexpected exception is logged with its traceback and answered 500 ``internal`` without
one. Sockets time out (:data:`~inspector.link.protocol.REQUEST_TIMEOUT` while reading a request,
:data:`~inspector.link.protocol.STREAM_READ_TIMEOUT` while writing the stream), so a stalled client
frees its thread; a stream with no frame for STREAM_READ_TIMEOUT (camera gone) is ended by the
agent, as the client would.

A stream whose token is revoked (``inspector-agent --revoke``, ``DELETE /api/v1/pairing``, a
new token) ends within :data:`REVOKE_CHECK_S`.
"""
from __future__ import annotations

import json
import logging
import ssl
import time
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from inspector.agent.connections import HEAD_TIMEOUT_S, NETWORK_ERRORS, OPEN_REQUEST_S, AgentHTTPServer
from inspector.errors import InspectorError
from inspector.link import openapi, protocol
from inspector.link.protocol import API, ApiError, Message, ProtocolError

log = logging.getLogger(__name__)

REVOKE_CHECK_S = 0.5          # an open stream checks its token this often
STREAM_POLL_S = 0.5           # stream loop: how often it notices stop() while no frame comes
DRAIN_S = protocol.REQUEST_TIMEOUT   # longest an error answer waits for the rest of a refused body


class _ClientGone(InspectorError):
    """The client closed the connection or stalled; nothing more can be sent."""


def _json_bytes(obj: Message | dict) -> bytes:
    if isinstance(obj, Message):
        return obj.to_json()
    return json.dumps(obj, allow_nan=False).encode("utf-8")


class _CountingReader:
    """``rfile`` as the repository reads it, counting the bytes it took."""

    def __init__(self, raw: Any):
        self._raw, self.count = raw, 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.count += len(data)
        return data

    def seekable(self) -> bool:
        return False


class RequestHandler(BaseHTTPRequestHandler):
    """The connection's thread: every request on it (see the module doc)."""

    protocol_version = "HTTP/1.1"
    server_version = "crack-agent/1"
    sys_version = ""
    timeout = protocol.REQUEST_TIMEOUT   # socket timeout while reading requests
    server: AgentHTTPServer

    _expect_100 = False
    _responded = False
    _unread = 0                          # body bytes of this request not read yet
    _served = 0                          # requests on this connection so far
    _client: Any = None                  # the PairedClient of the request (None: open endpoint)
    _token = ""

    # ------------------------------------------------------------------ plumbing

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()

    def version_string(self) -> str:
        return self.server_version

    def handle_one_request(self) -> None:
        if self._served:  # idle between keep-alive requests: the head deadline again
            self.server.set_deadline(self.request, HEAD_TIMEOUT_S, waiting=True)
        self._served += 1
        super().handle_one_request()

    def parse_request(self) -> bool:
        self._responded, self._unread, self._expect_100 = False, 0, False
        self._client, self._token = None, ""
        ok = super().parse_request()
        if ok:  # the head is complete; until authenticated, the whole request is bounded
            self.server.set_deadline(self.request, OPEN_REQUEST_S, waiting=False)
        return ok

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def handle_expect_100(self) -> bool:
        # Deferred: 100 Continue is sent only once auth and size checks have passed.
        self._expect_100 = True
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors raised by the stdlib's request parser (400, 414, 431, 501, ...), as ApiError JSON."""
        text = message or self.responses.get(code, ("error",))[0]
        self._send_api_error(ApiError(code, f"http_{code}", text))

    def _send_api_error(self, err: ApiError, headers: dict[str, str] | None = None) -> None:
        if self._responded:
            self.close_connection = True
            return
        body = err.to_json()
        self.close_connection = True
        self.send_response(err.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self._responded = True
        if self.command != "HEAD":
            self.wfile.write(body)
        self._drain_body()

    def _drain_body(self) -> None:
        """After an error answer, read and discard the rest of a body the client is still sending.

        Closing a socket with unread data makes the kernel send a reset, and a client still
        busy sending (http.client sends the whole body before it reads) would see "connection
        reset" instead of our answer. So the body is swallowed: at most MAX_PACKAGE_BYTES and
        DRAIN_S seconds; a client waiting for 100 Continue never sends it and is not waited for.
        """
        n, self._unread = self._unread, 0
        if n <= 0 or n > protocol.MAX_PACKAGE_BYTES or self._expect_100:
            return
        deadline = time.monotonic() + DRAIN_S
        try:
            while n > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(n, 1 << 16))
                if not chunk:
                    break
                n -= len(chunk)
        except OSError:
            pass

    def _send_json(self, obj: Message | dict, status: int = 200) -> None:
        body = _json_bytes(obj)
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self._responded = True
        self.wfile.write(body)

    # ------------------------------------------------------------------ dispatch

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        self._responded = False
        self._unread = self._declared_length()
        agent = self.server.agent
        try:
            path = urlsplit(self.path).path
            key = (self.command, path)
            if self.command not in protocol.METHODS:  # on no path: 501 before auth (protocol's Errors)
                raise ApiError(501, "http_501", f"{self.command} is not implemented here; the agent implements "
                               f"{', '.join(sorted(protocol.METHODS))}")
            if key not in protocol.OPEN_ENDPOINTS:
                if path not in _OPEN_PATHS or key in protocol.ENDPOINTS:  # an open path hides nothing
                    self._client = self._authenticate()
                    self.server.set_deadline(self.request, None, waiting=False)
                if key not in protocol.ENDPOINTS:
                    allowed = sorted(m for (m, p) in protocol.ENDPOINTS if p == path)
                    if allowed:
                        raise ApiError(405, "method_not_allowed", f"{self.command} is not allowed on {path}; "
                                       f"use {', '.join(allowed)}")
                    raise ApiError(404, "not_found", f"no endpoint {path} (see {API}/openapi.json)")
            getattr(self, _ROUTES[key])()
        except ApiError as err:
            self._answer_error(err)
        except agent.repository_error as err:
            self._answer_error(err.to_api())
        except (_ClientGone, *NETWORK_ERRORS) as exc:
            log.debug("%s: connection ended (%s)", self.address_string(), exc)
            self.close_connection = True
        except Exception:  # noqa: BLE001 - never a traceback to the client; the log has it
            log.exception("%s %s failed", self.command, self.path)
            self._answer_error(ApiError(500, "internal", "internal error in the agent (its log says more)"))
        finally:
            self._expect_100 = False

    def _answer_error(self, err: ApiError) -> None:
        headers = {"WWW-Authenticate": 'Bearer realm="crack-agent"'} if err.status == 401 else None
        if err.status == 405:
            allowed = sorted(m for (m, p) in protocol.ENDPOINTS if p == urlsplit(self.path).path)
            headers = {"Allow": ", ".join(allowed)}
        if err.retry_after is not None:
            headers = {**(headers or {}), "Retry-After": str(int(err.retry_after))}
        try:
            self._send_api_error(err, headers)
        except NETWORK_ERRORS:
            self.close_connection = True

    def _authenticate(self) -> Any:
        value = self.headers.get(protocol.AUTH_HEADER, "")
        scheme, _, token = value.strip().partition(" ")
        client = None
        if scheme.lower() == "bearer" and token.strip():
            self._token = token.strip()
            client = self.server.agent.identity.authenticate(self._token)
        if client is None:
            raise ApiError(401, "unauthorized", "missing or wrong bearer token: pair with the agent first"
                           if not value else "wrong bearer token: pair with the agent again")
        return client

    # ------------------------------------------------------------------ bodies

    def _declared_length(self) -> int:
        raw = self.headers.get("Content-Length")
        try:
            return max(0, int(raw)) if raw is not None else 0
        except ValueError:
            return 0

    def _content_length(self) -> int:
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "length_required", "chunked bodies are not accepted; send Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise ApiError(411, "length_required", "Content-Length is required")
        # 1*DIGIT (RFC 9112): not int()'s "+5", "-5", "1_0" or non-ASCII digits
        if not (raw.strip().isascii() and raw.strip().isdigit()):
            raise ApiError(400, "bad_request", f"Content-Length {raw!r} is not a byte count")
        return int(raw)

    def _continue(self) -> None:
        if self._expect_100:
            self._expect_100 = False
            self.send_response_only(100)
            self.end_headers()

    def _read_body(self, n: int) -> bytes:
        self._continue()
        self._unread = 0
        data = self.rfile.read(n) if n else b""
        if len(data) < n:
            raise _ClientGone(f"body ended after {len(data)} of {n} bytes")
        return data

    def _read_json(self, cls: type[Message]) -> Any:
        n = self._content_length()
        if n > protocol.MAX_JSON_BYTES:
            raise ApiError(413, "too_large", f"JSON body of {n} bytes; at most {protocol.MAX_JSON_BYTES}")
        try:
            return cls.from_json(self._read_body(n))
        except ProtocolError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        except RecursionError:  # json.loads of "[[[[..." (a few thousand deep): not a 500
            raise ApiError(400, "bad_request", f"{cls.__name__}: JSON nested too deeply") from None

    def _no_body(self) -> None:
        """Endpoints without a request body: a (small) body is read and ignored."""
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "length_required", "chunked bodies are not accepted")
        # a Content-Length that is there must be valid: with a bad one the framing of this
        # request, and so where the next one starts, is unknown (RFC 9112 6.3: 400 and close)
        n = self._content_length() if self.headers.get("Content-Length") is not None else 0
        if n > protocol.MAX_JSON_BYTES:
            raise ApiError(413, "too_large", f"this endpoint takes no body; got {n} bytes")
        if n:
            self._read_body(n)

    # ------------------------------------------------------------------ endpoints

    def pair(self) -> None:
        req = self._read_json(protocol.PairRequest)
        agent = self.server.agent
        token = agent.identity.pair(req.code, req.client_name, req.public_key, peer=self.client_address[0])
        self._send_json(protocol.PairResponse(token=token, agent_id=agent.identity.agent_id,
                                              agent_name=agent.identity.name,
                                              cert_sha256=agent.identity.cert_sha256 if agent.tls else None))

    def status(self) -> None:
        self._no_body()
        self._send_json(self.server.agent.status())

    def list_models(self) -> None:
        self._no_body()
        self._send_json(self.server.agent.repository.list())

    def upload_model(self) -> None:
        n = self._content_length()
        if n > protocol.MAX_PACKAGE_BYTES:
            raise ApiError(413, "too_large", f"package of {n} bytes; at most {protocol.MAX_PACKAGE_BYTES}")
        if n == 0:
            raise ApiError(400, "bad_request", "empty body: send the .crackpkg file")
        self._continue()
        body = _CountingReader(self.rfile)
        try:
            info = self.server.agent.repository.receive(body, n)
        finally:
            self._unread = n - body.count  # what an error answer must still swallow
        self._send_json(info)

    def activate(self) -> None:
        req = self._read_json(protocol.ActivateRequest)
        runtime = self.server.agent.runtime
        if req.wait:
            self._send_json(runtime.activate(req.id))
        else:  # the client polls the status (a TensorRT build outlasts any request timeout)
            self._send_json(runtime.start_activation(req.id), status=202)

    def rollback(self) -> None:
        self._no_body()
        self._send_json(self.server.agent.runtime.rollback())

    def openapi(self) -> None:
        self._no_body()
        self._send_json(openapi.document())

    def unpair(self) -> None:
        self._no_body()
        c = self._client
        self.server.agent.identity.unpair(c)
        self._send_json(protocol.ClientInfo(name=c.name, key_id=c.key_id, paired=c.paired))

    def new_token(self) -> None:
        self._no_body()
        agent = self.server.agent
        token = agent.identity.rotate_token(self._client)
        self._send_json(protocol.PairResponse(token=token, agent_id=agent.identity.agent_id,
                                              agent_name=agent.identity.name,
                                              cert_sha256=agent.identity.cert_sha256 if agent.tls else None))

    def _max_frames(self) -> int | None:
        """``?max_frames=n`` of the stream (None: until the client goes away); other parameters are ignored."""
        values = parse_qs(urlsplit(self.path).query, keep_blank_values=True).get("max_frames")
        if values is None:
            return None
        raw = values[-1] if len(values) == 1 else ""
        if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= protocol.MAX_STREAM_FRAMES):
            raise ApiError(400, "bad_request", f"max_frames must be one whole number from 1 to "
                           f"{protocol.MAX_STREAM_FRAMES}, got {', '.join(map(repr, values))}")
        return int(raw)

    def stream(self) -> None:
        self._no_body()
        limit = self._max_frames()
        sent = 0
        agent = self.server.agent
        sub = agent.runtime.subscribe()
        agent._track_stream(sub, True)
        try:
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", protocol.STREAM_CONTENT_TYPE)
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self._responded = True
            # A client that stops reading blocks sendall; after this long it counts as gone.
            self.connection.settimeout(protocol.STREAM_READ_TIMEOUT)
            last = checked = time.monotonic()
            while not agent.stopping:
                if time.monotonic() - checked > REVOKE_CHECK_S:
                    checked = time.monotonic()
                    if agent.identity.authenticate(self._token) is None:
                        log.warning("%s: token revoked, stream ended", self.address_string())
                        break
                blob = sub.next(timeout=min(STREAM_POLL_S, REVOKE_CHECK_S))
                if blob is None:
                    # No frame for as long as a client waits before it calls the link lost
                    # (camera gone): end the response, or a client that left meanwhile would
                    # hold this thread until frames come back.
                    if sub.closed or time.monotonic() - last > protocol.STREAM_READ_TIMEOUT:
                        break
                    continue
                self.wfile.write(blob)
                last = time.monotonic()
                sent += 1
                if limit is not None and sent >= limit:
                    break
        except OSError as exc:  # includes ConnectionError, TimeoutError, ssl.SSLError
            log.debug("%s: stream client gone (%s)", self.address_string(), type(exc).__name__)
        finally:
            sub.close()
            agent._track_stream(sub, False)


_OPEN_PATHS = frozenset(p for _, p in protocol.OPEN_ENDPOINTS)
_ROUTES = {
    ("POST", f"{API}/pair"): "pair",
    ("GET", f"{API}/status"): "status",
    ("GET", f"{API}/stream"): "stream",
    ("GET", f"{API}/models"): "list_models",
    ("POST", f"{API}/models"): "upload_model",
    ("POST", f"{API}/models/activate"): "activate",
    ("POST", f"{API}/models/rollback"): "rollback",
    ("GET", f"{API}/openapi.json"): "openapi",
    ("DELETE", f"{API}/pairing"): "unpair",
    ("POST", f"{API}/pairing/token"): "new_token",
}
# Routing comes from the protocol's table: an endpoint added there without a handler here (or
# the reverse) fails at import, not at the first request.
if set(_ROUTES) != set(protocol.ENDPOINTS):
    raise ImportError(f"agent routes {sorted(set(_ROUTES) ^ set(protocol.ENDPOINTS))} do not match protocol.ENDPOINTS")
