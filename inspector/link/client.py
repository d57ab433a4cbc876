"""The app's side of the device link: a client for the agent's API, saved pairings, and the
device's result stream as a live source.

Plain Python (numpy, OpenCV, the standard library, platformdirs; no Qt): the Qt panel, the
``inspector --device`` start-up and the tests drive the same objects. Message shapes, endpoints
and timeouts all come from :mod:`inspector.link.protocol`.

Trust
-----
The agent's certificate is self-signed, so CA and host-name checks are off and the certificate
is **pinned** instead: after the TLS handshake the SHA-256 of the peer's DER certificate must
equal the fingerprint learnt at pairing, else :class:`FingerprintMismatch` is raised and the
connection is closed before a byte of the request (or the bearer token) is sent. At pairing
(trust on first use) :meth:`DeviceClient.fetch_fingerprint` reads the fingerprint so the user
can compare it with the one the agent prints; :meth:`DeviceClient.pair` then runs pinned to it.

Pairings (token + fingerprint per agent) live in ``devices.json`` in the per-user config folder,
mode 0600, replaced atomically; the app's package-signing key sits beside it
(``signing-key.pem``). The token is a bearer secret: whoever reads that file can act as this
app towards the device, exactly like an SSH key in ``~/.ssh``.

The stream as a live source
---------------------------
:class:`DeviceFeed` is to a device what :class:`~inspector.capture.sources.FrameGrabber` is to a camera:
one thread that reads the stream, keeps only the newest result (``latest(after_seq)``), reports
``SourceStatus`` changes and reconnects on its own with exponential back-off when the link is
lost. Its results are already inspected (the device ran the model), so it is a *result source*
for :class:`~inspector.live.loop.LiveInspector` (``latest`` + ``inspect``).

Latency across two clocks
-------------------------
The stream header carries the agent's ``time.time()`` at capture and at sending; the feed
compares them with this machine's ``time.time()`` at reception. On loopback (tests) both are
the same clock and the numbers are exact. Between a laptop and a real device they are only as
good as the two clocks' agreement (NTP/chrony typically keep it within a few ms on a LAN; an
unsynchronised device can be seconds off): a negative link latency is shown as 0 and a frame
never appears to have been captured after it arrived. The on-device part (capture → sent) is
measured on one clock and is always exact.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import os
import socket
import ssl
import statistics
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from inspector.link import protocol as P
from inspector.edge.engine import FrameResult, TileResult
from inspector.fsio import fsync_dir, write_atomic
from inspector.live.loop import Inspected
from inspector.capture.newest import NewestItemSource
from inspector.capture.sources import Frame, SourceStatus
from inspector.store.database import ModelRef
from inspector.errors import InspectorError

log = logging.getLogger(__name__)

APP_DIR = "crack-inspector"             # platformdirs app name: the config folder
PAIRINGS_FILE = "devices.json"
SIGNING_KEY_FILE = "signing-key.pem"
UPLOAD_CHUNK = 256 * 2**10              # bytes per send() while pushing a package
MAX_RESPONSE_BYTES = 16 * 2**20         # a JSON answer larger than this is not from our agent
LATENCY_SAMPLES = 30
MODEL_REFRESH_S = 5.0                   # an unknown model_id in the stream re-reads the models at most this often
_NO_CAM = np.zeros((0, 0), np.float32)  # the stream carries no per-tile CAM (the heat-map is stitched on the device)
_NO_CAM.setflags(write=False)


class DeviceError(InspectorError, RuntimeError):
    """The device could not be reached, refused, or answered outside the protocol.
    ``api`` is the agent's :class:`~inspector.link.protocol.ApiError` when it answered with one."""

    def __init__(self, message: str, api: P.ApiError | None = None):
        super().__init__(message)
        self.api = api


class FingerprintMismatch(DeviceError):
    """The peer's TLS certificate is not the pinned one (another device, a re-installed agent,
    or someone in between); nothing was sent to it."""


# ---------------------------------------------------------------------------- helpers

def normalize_fingerprint(fp: str | None) -> str | None:
    """``"AB:CD:…"`` / ``"abcd…"`` → 64 lowercase hex characters (ValueError if not SHA-256)."""
    if fp is None:
        return None
    s = fp.replace(":", "").replace(" ", "").strip().lower()
    if len(s) != 64 or any(c not in "0123456789abcdef" for c in s):
        raise ValueError(f"a certificate fingerprint is 64 hex characters (SHA-256), got {fp!r}")
    return s


def format_fingerprint(fp: str | None) -> str:
    """Groups of four for reading aloud / comparing by eye: ``"ab12 cd34 …"``."""
    if not fp:
        return "none (plain HTTP)"
    return " ".join(fp[i:i + 4] for i in range(0, len(fp), 4))


def parse_address(text: str, default_port: int = P.DEFAULT_PORT) -> tuple[str, int]:
    """``"host"``, ``"host:port"``, ``"[::1]:port"`` → (host, port). ValueError says why not."""
    s = (text or "").strip()
    if not s:
        raise ValueError("enter a device address: host or host:port")
    if "://" in s:
        raise ValueError(f"give host:port, not a URL ({s!r})")
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif s.count(":") == 1:
        host, port_text = s.split(":")
    else:
        host, port_text = s, ""      # a bare name, IPv4 or an unbracketed IPv6 address
    if not host:
        raise ValueError(f"no host in {s!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"the port in {s!r} must be a number from 1 to 65535")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tls_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The certificate is self-signed: no CA can vouch for it and its name is whatever the
    # device chose. Trust comes from the pinned fingerprint instead (_PinnedHTTPSConnection).
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS whose ``connect()`` compares the peer certificate's SHA-256 with ``pin`` right after
    the handshake, before anything is sent. ``peer_sha256`` is what was seen."""

    def __init__(self, host: str, port: int, *, pin: str | None, read_timeout: float):
        super().__init__(host, port, timeout=P.CONNECT_TIMEOUT, context=_tls_context())
        self.pin = pin
        self.read_timeout = read_timeout
        self.peer_sha256: str | None = None

    def connect(self) -> None:
        super().connect()                 # TCP + TLS handshake, bounded by CONNECT_TIMEOUT
        der = self.sock.getpeercert(binary_form=True)
        self.peer_sha256 = hashlib.sha256(der).hexdigest() if der else None
        if self.pin is not None and not (self.peer_sha256 and hmac.compare_digest(self.peer_sha256, self.pin)):
            self.close()
            raise FingerprintMismatch(
                f"{format_address(self.host, self.port)} presented a different TLS certificate than the one "
                f"paired (expected {self.pin[:16]}…, got {(self.peer_sha256 or 'none')[:16]}…). It is another "
                f"device, a re-installed agent, or someone in between: nothing was sent. Pair again if the "
                f"device was re-installed.")
        self.sock.settimeout(self.read_timeout)


class _HTTPConnection(http.client.HTTPConnection):
    """Plain HTTP (agents started with ``--insecure-http``): connect with CONNECT_TIMEOUT, then read
    with ``read_timeout``."""

    peer_sha256 = None

    def __init__(self, host: str, port: int, *, read_timeout: float):
        super().__init__(host, port, timeout=P.CONNECT_TIMEOUT)
        self.read_timeout = read_timeout

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(self.read_timeout)


# ---------------------------------------------------------------------------- the client

@dataclass(frozen=True)
class Pairing:
    """What the app keeps per paired device."""

    host: str
    port: int
    tls: bool
    cert_sha256: str | None
    token: str
    agent_id: str
    agent_name: str

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "Pairing":
        if not isinstance(d, dict):
            raise ValueError(f"a pairing is a JSON object, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"pairing without {', '.join(missing)}")
        p = cls(**{n: d[n] for n in names})
        if not (isinstance(p.host, str) and p.host and isinstance(p.port, int) and 0 < p.port < 65536
                and isinstance(p.tls, bool) and isinstance(p.token, str) and p.token
                and isinstance(p.agent_id, str) and p.agent_id and isinstance(p.agent_name, str)):
            raise ValueError(f"pairing with a field of the wrong type: {sorted(d)}")
        if p.tls:
            normalize_fingerprint(p.cert_sha256)
        return p


class DeviceStream:
    """The open ``/stream`` response: iterate for ``(StreamHeader, jpeg bytes, heat uint8)``.

    Iteration ends when the agent closes the stream or :meth:`close` is called (from any thread:
    it shuts the socket down, which wakes a blocked read); a lost link, a silent agent (no frame
    for ``STREAM_READ_TIMEOUT``) or bytes outside the protocol raise :class:`DeviceError`.
    """

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, address: str):
        self._conn, self._resp, self.address = conn, response, address
        self._closed = False

    def __iter__(self) -> "DeviceStream":
        return self

    def __next__(self) -> tuple[P.StreamHeader, bytes, np.ndarray]:
        if self._closed:
            raise StopIteration
        try:
            return P.read_frame(self._resp)
        except EOFError as exc:
            closed, self._closed = self._closed, True
            self._conn.close()
            if closed or str(exc) == "stream ended":
                raise StopIteration from None
            raise DeviceError(f"{self.address}: the stream broke off mid-frame ({exc})") from None
        except P.ProtocolError as exc:
            self.close()
            raise DeviceError(f"{self.address}: the stream is not in the device protocol ({exc})") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            if self._closed:             # close() from another thread interrupted the read
                raise StopIteration from None
            self.close()
            if isinstance(exc, TimeoutError):
                raise DeviceError(f"{self.address}: no frame for {P.STREAM_READ_TIMEOUT:.0f} s") from None
            raise DeviceError(f"{self.address}: stream lost ({type(exc).__name__}: {exc})") from None

    def close(self) -> None:
        self._closed = True
        sock = getattr(self._conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError, http.client.HTTPException):
            self._conn.close()

    def __enter__(self) -> "DeviceStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DeviceClient:
    """One device agent's API (see :mod:`inspector.link.protocol`). Each call opens its own
    connection, so one client may be used from several threads.

    ``tls``: HTTPS with ``cert_sha256`` pinned (None only while pairing: the fingerprint seen is
    then checked against the one the agent reports). ``token``: the bearer token from pairing.
    Every failure is a :class:`DeviceError` whose message says what and where.
    """

    def __init__(self, host: str, port: int, *, tls: bool = True, cert_sha256: str | None = None,
                 token: str | None = None):
        self.host, self.port, self.tls = str(host), int(port), bool(tls)
        self.cert_sha256 = normalize_fingerprint(cert_sha256)
        self.token = token

    @classmethod
    def from_pairing(cls, p: Pairing) -> "DeviceClient":
        return cls(p.host, p.port, tls=p.tls, cert_sha256=p.cert_sha256, token=p.token)

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    def __repr__(self) -> str:
        return f"DeviceClient({self.address}, tls={self.tls})"

    # ------------------------------------------------------------------ API

    def fetch_fingerprint(self) -> str | None:
        """SHA-256 (hex) of the device's certificate, read from a handshake and nothing else
        (pairing: the user compares it with the one the agent shows). None over plain HTTP."""
        if not self.tls:
            return None
        conn = _PinnedHTTPSConnection(self.host, self.port, pin=None, read_timeout=P.REQUEST_TIMEOUT)
        try:
            conn.connect()
        except ssl.SSLError as exc:
            raise DeviceError(f"{self.address} does not speak TLS ({exc.reason or exc}); an agent started with "
                              f"--insecure-http needs an unencrypted connection") from None
        except OSError as exc:
            raise self._unreachable(exc) from None
        finally:
            conn.close()
        return conn.peer_sha256

    def pair(self, code: str, client_name: str, signing_key) -> Pairing:
        """Pair with the code the agent shows; ``signing_key`` (its public half) is the key the
        device will require on pushed packages. Returns what to save (:class:`PairingStore`)."""
        req = P.PairRequest(code=str(code).strip(), client_name=client_name, public_key=signing_key.public_b64())
        try:
            req.validate()
        except P.ProtocolError as exc:
            raise DeviceError(str(exc).split(": ", 1)[-1]) from None
        data, peer = self._call("POST", f"{P.API}/pair", req.to_json(), auth=False)
        resp = self._parse(P.PairResponse, data)
        if self.tls:
            reported = normalize_fingerprint(resp.cert_sha256) if resp.cert_sha256 else None
            if reported != peer:
                raise FingerprintMismatch(f"{self.address}: the agent reports certificate {str(reported)[:16]}… but "
                                          f"the connection used {str(peer)[:16]}…: someone may be in between; "
                                          f"not paired")
        return Pairing(host=self.host, port=self.port, tls=self.tls, cert_sha256=peer if self.tls else None,
                       token=resp.token, agent_id=resp.agent_id, agent_name=resp.agent_name)

    def status(self) -> P.Status:
        return self._parse(P.Status, self._call("GET", f"{P.API}/status")[0])

    def unpair(self) -> P.ClientInfo:
        """Unpair this client on the device: its token stops working at once (also an open stream)."""
        return self._parse(P.ClientInfo, self._call("DELETE", f"{P.API}/pairing")[0])

    def renew_token(self) -> str:
        """Swap the token for a new one; the old one dies at once, this client uses the new one.
        Save it (:meth:`PairingStore.renew_token` does both): if it is lost, pair again."""
        resp = self._parse(P.PairResponse, self._call("POST", f"{P.API}/pairing/token")[0])
        self.token = resp.token
        return resp.token

    def models(self) -> P.ModelList:
        return self._parse(P.ModelList, self._call("GET", f"{P.API}/models")[0])

    def activate(self, model_id: str, *, timeout: float = P.ACTIVATION_TIMEOUT,
                 progress: Callable[[P.Activation], None] | None = None) -> P.ModelList:
        """Activate stored version ``model_id`` and wait until it is live: :meth:`start_activation`,
        then :meth:`wait_activation` (``progress(Activation)`` at every change it sees). The
        models on the device afterwards. DeviceError (``api`` 422 ``model_failed``) if the model
        failed on the device, which then serves the previous one again."""
        self.start_activation(model_id)
        self.wait_activation(model_id, timeout=timeout, progress=progress)
        return self.models()

    def start_activation(self, model_id: str) -> P.Activation:
        """Ask the device to activate ``model_id`` and return at once (it answers 202 with the
        activation in progress; loading may take minutes where TensorRT builds its engine)."""
        body = P.ActivateRequest(id=model_id, wait=False)
        try:
            body.validate()
        except P.ProtocolError as exc:
            raise DeviceError(str(exc)) from None
        return self._parse(P.Activation, self._call("POST", f"{P.API}/models/activate", body.to_json())[0])

    def wait_activation(self, model_id: str, *, timeout: float = P.ACTIVATION_TIMEOUT,
                        poll: float = P.ACTIVATION_POLL,
                        progress: Callable[[P.Activation], None] | None = None) -> P.Status:
        """Poll the status until the activation of ``model_id`` is live (the Status) or failed
        (DeviceError with ``api`` 422 ``model_failed`` and the device's reason). A device that
        does not answer for a while (busy building, restarting) is asked again until
        ``timeout``; one that lost the activation (restarted) counts as live only if it serves
        ``model_id``."""
        deadline = time.monotonic() + timeout
        last: tuple | None = None
        while True:
            try:
                status = self.status()
            except DeviceError as exc:
                if exc.api is not None or time.monotonic() > deadline:
                    raise
                log.info("%s: status during the activation of %s: %s; asking again", self.address, model_id, exc)
                status = None
            act = status.current_activation() if status is not None else None
            if status is not None:
                if act is not None and act.model_id == model_id:
                    if progress is not None and (act.state, act.message) != last:
                        last = (act.state, act.message)
                        progress(act)
                    if act.state == "live":
                        return status
                    if act.state == "failed":
                        raise DeviceError(f"{self.address}: {act.message}",
                                          api=P.ApiError(422, "model_failed", act.message))
                elif act is not None and not act.done:
                    raise DeviceError(f"{self.address}: {act.model_id} is being activated instead of {model_id}")
                elif (status.model or {}).get("id") == model_id:
                    return status   # the device restarted (or another client activated it again): it serves it
                else:
                    raise DeviceError(f"{self.address}: the activation of {model_id} is gone (restarted agent?); "
                                      f"it serves {(status.model or {}).get('id', 'nothing')}")
            if time.monotonic() > deadline:
                state = f"{act.state} for {act.elapsed_s:.0f} s" if act is not None else "no answer"
                raise DeviceError(f"{self.address}: {model_id} not live within {timeout:.0f} s ({state})")
            time.sleep(poll)

    def rollback(self) -> P.ModelList:
        return self._parse(P.ModelList, self._call("POST", f"{P.API}/models/rollback", b"")[0])

    def push(self, package_path: str | os.PathLike, signing_key,
             progress: Callable[[int, int], None] | None = None) -> P.ModelInfo:
        """Sign a copy of ``package_path`` with ``signing_key`` and upload it; the device verifies and
        stores it (not activated: :meth:`activate` with the returned ``id``). The file is sent in
        chunks straight from disk; ``progress(bytes_sent, total)`` after each (raise from it to
        cancel: the connection is closed and the device discards the partial upload)."""
        src = Path(package_path)
        if not src.is_file():
            raise DeviceError(f"no package file {str(src)!r}")
        with tempfile.TemporaryDirectory(prefix="crack-push-") as tmp:
            try:
                signed = Path(signing_key.sign_package(src, Path(tmp) / src.name))
            except (OSError, ValueError) as exc:
                raise DeviceError(f"cannot sign {src.name}: {exc}") from exc
            total = signed.stat().st_size
            if total > P.MAX_PACKAGE_BYTES:
                raise DeviceError(f"{src.name} is {total / 2**20:.0f} MB; the device accepts at most "
                                  f"{P.MAX_PACKAGE_BYTES / 2**20:.0f} MB")
            data = self._upload(signed, total, progress)
        return self._parse(P.ModelInfo, data)

    def install(self, package_path: str | os.PathLike, signing_key,
                progress: Callable[[int, int], None] | None = None, *,
                activate: bool = True,
                activation_progress: Callable[[P.Activation], None] | None = None) -> tuple[P.ModelInfo, bool]:
        """:meth:`push` unless the device already stores this version of the same model, then
        (by default) :meth:`activate` it, polling until it is live (``activation_progress``: see
        :meth:`activate`). Returns (info, uploaded). A version on the device is immutable: the
        same version with another model is refused by the device (with why)."""
        from inspector.edge.package import PackageError, load_package

        try:
            m = load_package(package_path, verify_reference=False).manifest
        except PackageError as exc:
            raise DeviceError(str(exc)) from None
        info = {i.id: i for i in self.models().infos()}.get(f"{m.name}-{m.version}")
        uploaded = info is None or info.sha256 != m.model_sha256
        if uploaded:
            info = self.push(package_path, signing_key, progress)
        if activate:
            self.activate(info.id, progress=activation_progress)
        return info, uploaded

    def stream(self) -> DeviceStream:
        """Open the result stream (read timeout ``STREAM_READ_TIMEOUT``): see :class:`DeviceStream`."""
        conn = self._connection(P.STREAM_READ_TIMEOUT)
        try:
            conn.request("GET", f"{P.API}/stream", headers=self._headers(True))
            resp = conn.getresponse()
        except FingerprintMismatch:
            raise
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._unreachable(exc) from None
        if resp.status != 200:
            body = self._read_body(resp)
            conn.close()
            raise self._api_error(resp.status, body)
        ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip()
        if ctype != P.STREAM_CONTENT_TYPE:
            conn.close()
            raise DeviceError(f"{self.address}: the stream answered {ctype or 'no content type'}, "
                              f"not {P.STREAM_CONTENT_TYPE}")
        return DeviceStream(conn, resp, self.address)

    # ------------------------------------------------------------------ plumbing

    def _connection(self, read_timeout: float) -> http.client.HTTPConnection:
        if self.tls:
            return _PinnedHTTPSConnection(self.host, self.port, pin=self.cert_sha256, read_timeout=read_timeout)
        return _HTTPConnection(self.host, self.port, read_timeout=read_timeout)

    def _headers(self, auth: bool, content_type: str = "application/json") -> dict[str, str]:
        h = {"Content-Type": content_type, "Accept": "application/json"}
        if auth:
            if not self.token:
                raise DeviceError(f"{self.address}: not paired (no token): pair with the device first")
            h[P.AUTH_HEADER] = f"Bearer {self.token}"
        return h

    def _call(self, method: str, path: str, body: bytes | None = None, *, auth: bool = True,
              timeout: float = P.REQUEST_TIMEOUT) -> tuple[bytes, str | None]:
        """One request → (body of a 2xx answer, peer fingerprint); DeviceError otherwise."""
        headers = self._headers(auth)
        conn = self._connection(timeout)
        data = self._exchange(conn, lambda: conn.request(method, path, body=body, headers=headers))
        return data, conn.peer_sha256

    def _upload(self, path: Path, total: int, progress) -> bytes:
        conn = self._connection(P.REQUEST_TIMEOUT)
        headers = {**self._headers(True, P.PACKAGE_CONTENT_TYPE), "Content-Length": str(total)}

        def send() -> None:
            conn.putrequest("POST", f"{P.API}/models", skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders()
            sent = 0
            try:
                with open(path, "rb") as fh:
                    while chunk := fh.read(UPLOAD_CHUNK):
                        conn.send(chunk)
                        sent += len(chunk)
                        if progress is not None:
                            progress(sent, total)
            except (BrokenPipeError, ConnectionResetError) as exc:
                # the agent may refuse early (too big, bad token) and close: its answer says why
                log.info("%s: upload cut off after %d of %d bytes (%s); reading the answer", self.address, sent,
                         total, exc)

        return self._exchange(conn, send)

    def _exchange(self, conn: http.client.HTTPConnection, send: Callable[[], None]) -> bytes:
        """``send()`` a request on ``conn``, read the answer and close ``conn``: the body of a 2xx
        answer; otherwise DeviceError ("cannot reach" for a network/HTTP failure, the agent's
        ApiError for an error answer). A FingerprintMismatch passes through as it is."""
        try:
            send()
            resp = conn.getresponse()
            data = self._read_body(resp)
        except FingerprintMismatch:
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            conn.close()
        if not 200 <= resp.status < 300:
            raise self._api_error(resp.status, data)
        return data

    @staticmethod
    def _read_body(resp: http.client.HTTPResponse) -> bytes:
        data = resp.read(MAX_RESPONSE_BYTES + 1)
        if len(data) > MAX_RESPONSE_BYTES:
            raise http.client.HTTPException(f"answer larger than {MAX_RESPONSE_BYTES} bytes")
        return data

    def _api_error(self, status: int, body: bytes) -> DeviceError:
        err = P.ApiError.from_response(status, body)
        hint = ""
        if status == 401:
            hint = " (pair with the device again)"
        return DeviceError(f"{self.address}: {err.message}{hint}", api=err)

    def _unreachable(self, exc: BaseException) -> DeviceError:
        if isinstance(exc, ssl.SSLError):
            why = f"TLS failed ({exc.reason or exc})"
        elif isinstance(exc, TimeoutError):
            why = "no answer in time"
        elif isinstance(exc, ConnectionRefusedError):
            why = "connection refused (is the agent running on that port?)"
        elif isinstance(exc, socket.gaierror):
            why = f"unknown host ({exc.strerror or exc})"
        else:
            why = f"{type(exc).__name__}: {exc}"
        return DeviceError(f"cannot reach {self.address}: {why}")

    def _parse(self, cls, data: bytes):
        try:
            return cls.from_json(data)
        except P.ProtocolError as exc:
            raise DeviceError(f"{self.address} answered outside the protocol: {exc}") from None


# ---------------------------------------------------------------------------- pairings on disk

class PairingStore:
    """The app's paired devices (``devices.json``) and its package-signing key path, in
    ``root`` (default: platformdirs ``user_config_dir("crack-inspector")``).

    The file is written 0600 to a temporary file, fsynced and renamed over the old one, so a
    crash leaves either the old or the new list, never half of one.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        if root is None:
            import platformdirs

            root = platformdirs.user_config_dir(APP_DIR)
        self.root = Path(root)
        self.path = self.root / PAIRINGS_FILE
        self.signing_key_path = self.root / SIGNING_KEY_FILE
        self._lock = threading.Lock()

    def all(self) -> list[Pairing]:
        with self._lock:
            return self._read()

    def get(self, agent_id: str) -> Pairing | None:
        return next((p for p in self.all() if p.agent_id == agent_id), None)

    def find(self, host: str, port: int) -> Pairing | None:
        """The pairing for an address (the most recently saved if several)."""
        found = [p for p in self.all() if p.host == host and p.port == int(port)]
        return found[-1] if found else None

    def save(self, pairing: Pairing) -> None:
        """Add or replace (same ``agent_id``) a pairing."""
        with self._lock:
            items = [p for p in self._read() if p.agent_id != pairing.agent_id]
            items.append(pairing)
            self._write(items)

    def renew_token(self, pairing: Pairing) -> Pairing:
        """A new token from the device for ``pairing``, saved here; the saved pairing."""
        new = Pairing(**{**pairing.to_dict(), "token": DeviceClient.from_pairing(pairing).renew_token()})
        self.save(new)
        return new

    def unpair(self, pairing: Pairing) -> str | None:
        """Forget a device on both sides: unpair on the device (its token dies there), then forget
        it here. A device that cannot be reached (lost, off, far away) is forgotten here all the
        same; the answer (None when all went well) then says to revoke it on the device."""
        note = None
        try:
            DeviceClient.from_pairing(pairing).unpair()
        except DeviceError as exc:
            if exc.api is None or exc.api.status != 401:   # 401: it was already unpaired there
                note = (f"{exc}; forgotten on this computer only: on the device, run "
                        f"inspector-agent --revoke \"{client_name()}\"")
        self.forget(pairing.agent_id)
        return note

    def forget(self, agent_id: str) -> bool:
        """Forget a device on this computer only (see :meth:`unpair`)."""
        with self._lock:
            items = self._read()
            kept = [p for p in items if p.agent_id != agent_id]
            if len(kept) == len(items):
                return False
            self._write(kept)
            return True

    def signing_key(self):
        """The app's Ed25519 package-signing key (made on first use)."""
        from inspector.link.signing import SigningKey

        self._make_root()
        return SigningKey.load_or_create(self.signing_key_path)

    def _read(self) -> list[Pairing]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise DeviceError(f"cannot read the saved devices {self.path}: {exc}") from None
        try:
            doc = json.loads(raw)
            return [Pairing.from_dict(d) for d in doc["devices"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise DeviceError(f"the saved devices file {self.path} is damaged ({exc}); delete it and pair "
                              f"again") from None

    def _make_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _write(self, items: list[Pairing]) -> None:
        self._make_root()
        data = json.dumps({"version": 1, "devices": [p.to_dict() for p in items]}, indent=2).encode() + b"\n"
        write_atomic(self.path, lambda f: f.write(data), mode=0o600)   # tokens: owner only
        fsync_dir(self.root, best_effort=True)


# ---------------------------------------------------------------------------- the feed

@dataclass(frozen=True)
class DeviceLink:
    """How a result travelled: the agent's stream ``header``, the one-way ``link_ms`` (agent sent →
    received here) and ``capture_ms`` (agent capture → received here), both across two clocks
    (see the module doc); ``agent_ms`` (capture → sent, on the device's clock only); the device's
    ``provider``, CPU integer ``isa`` and ``agent_name`` as last read from its status."""

    header: P.StreamHeader
    link_ms: float
    capture_ms: float
    agent_ms: float
    provider: str | None
    agent_name: str
    isa: str = ""


def model_ref(info: P.ModelInfo | dict) -> ModelRef:
    d = info.to_dict() if isinstance(info, P.ModelInfo) else info
    return ModelRef(name=str(d["name"]), version=str(d["version"]), sha256=str(d["sha256"]))


def rebuild_result(header: P.StreamHeader, heat: np.ndarray, labels: tuple[str, ...] | None = None) -> FrameResult:
    """The :class:`FrameResult` the device computed, from the stream: tiles with their crack
    probability (``probs`` rebuilt for two classes; ``cam`` empty: it stays on the device), the
    heat-map at frame size, ``crack_prob_max`` and ``timings`` (the device's stages; ``total`` =
    its inference time, tile → stitch)."""
    crack_at = labels.index("crack") if labels and "crack" in labels and len(labels) == 2 else 1
    tiles = []
    for i, t in enumerate(header.tiles):
        try:
            box = tuple(int(v) for v in t["box"])
            p = float(t["crack_prob"])
        except (KeyError, TypeError, ValueError):
            raise P.ProtocolError(f"stream: tile {i} is not {{'box': [x0, y0, x1, y1], 'crack_prob': p}}: {t!r}") from None
        if len(box) != 4 or not 0.0 <= p <= 1.0:
            raise P.ProtocolError(f"stream: tile {i} has box {box} / crack_prob {p}")
        probs = np.empty(2, np.float32)
        probs[crack_at], probs[1 - crack_at] = p, 1.0 - p
        tiles.append(TileResult(box=box, probs=probs, crack_prob=p, cam=_NO_CAM))
    timings = {str(k): float(v) for k, v in header.timings_ms.items() if isinstance(v, (int, float))}
    if "total" not in timings:
        timings["total"] = sum(timings.get(k, 0.0) for k in ("tile", "preprocess", "infer", "stitch"))
    return FrameResult(tiles=tiles, heatmap=P.heat_from_wire(heat, header.width, header.height),
                       crack_prob_max=float(header.crack_prob_max), timings=timings)


class DeviceFeed(NewestItemSource[Inspected]):
    """A paired device's result stream as a live source (see the module doc).

    ``latest(after_seq, timeout)`` → the newest :class:`~inspector.live.loop.Inspected` (``frame``: the
    device's camera frame as RGB, ``result``: its verdicts and heat-map, ``model``: the device's
    model, ``link``: a :class:`DeviceLink`); ``inspect(item)`` returns it unchanged (the device
    already ran the model). ``status`` (:class:`~inspector.capture.sources.SourceStatus`: "connecting",
    "live", "reconnecting", "ended" when re-pairing is needed, "stopped"), ``fps`` (results
    received per second), ``link_ms`` (median), ``device_status`` (the last
    :class:`~inspector.link.protocol.Status` read). ``on_status(SourceStatus)`` and
    ``on_device(Status)`` are called on the feed's thread. The slot, stop, status reporting and
    ``fps`` come from :class:`~inspector.capture.newest.NewestItemSource`.
    """

    _log = log
    _kind = "feed"
    _busy = "a request in progress"

    def __init__(self, pairing: Pairing, *, backoff: tuple[float, float] = (0.5, 10.0),
                 on_status: Callable[[SourceStatus], None] | None = None,
                 on_device: Callable[[P.Status], None] | None = None,
                 client: DeviceClient | None = None):
        super().__init__(f"device {pairing.agent_name}", thread_name=f"DeviceFeed[{pairing.address}]",
                         backoff=backoff, on_status=on_status)
        self.pairing = pairing
        self.client = client or DeviceClient.from_pairing(pairing)
        self._on_device = on_device
        self._stream: DeviceStream | None = None
        self._link: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._models: dict[str, ModelRef] = {}
        self._labels: dict[str, tuple[str, ...]] = {}
        self._models_read_at = -1e9
        self.device_status: P.Status | None = None
        self.bad_frames = 0

    def __repr__(self) -> str:
        return f"DeviceFeed({self.pairing.address}, state={self._status.state!r})"

    # ---------------------------------------------------------------- public

    def inspect(self, item: Inspected) -> Inspected:
        return item

    @property
    def link_ms(self) -> float | None:
        """Median agent-sent → received latency of the last frames (see the module doc's caveat)."""
        with self._cond:
            samples = list(self._link)
        return statistics.median(samples) if samples else None

    # ---------------------------------------------------------------- the thread

    def _interrupt(self) -> None:
        stream = self._stream
        if stream is not None:
            stream.close()               # wakes a read blocked on the socket

    def _serve(self) -> None:
        attempt = 0
        addr = self.pairing.address
        self._set_status(SourceStatus("connecting", f"connecting to {self.label} at {addr}"))
        while not self._stop.is_set():
            n, why = 0, ""
            try:
                self._read_device(force=True)
                stream = self._stream = self.client.stream()
                if self._stop.is_set():
                    break
                for header, jpeg, heat in stream:
                    if self._accept(header, jpeg, heat):
                        n += 1
                        if n == 1:
                            attempt = 0
                            self._set_status(SourceStatus("live", f"{self.label} live"))
                why = f"{addr} closed the stream"
            except FingerprintMismatch as exc:
                self._set_status(SourceStatus("ended", str(exc)))
                break
            except DeviceError as exc:
                if exc.api is not None and exc.api.status == 401:
                    self._set_status(SourceStatus("ended", f"{self.label} no longer accepts this app's "
                                                           f"pairing: pair again ({exc.api.message})"))
                    break
                why = str(exc)
            finally:
                stream, self._stream = self._stream, None
                if stream is not None:
                    stream.close()
            if self._stop.is_set():
                break
            attempt += 1
            lost = "link lost" if n else "cannot connect"
            self._wait_backoff(attempt, f"{self.label} {lost}: {why}")

    def _read_device(self, force: bool = False) -> None:
        """Status + stored models: the model refs flags are stored with, the provider for the HUD."""
        now = time.monotonic()
        if not force and now - self._models_read_at < MODEL_REFRESH_S:
            return
        self._models_read_at = now
        status = self.client.status()
        models = self.client.models()
        for info in models.infos():
            self._models[info.id] = model_ref(info)
            self._labels[info.id] = tuple(info.labels)
        if status.model is not None:
            info = P.ModelInfo.from_dict(status.model)
            self._models[info.id] = model_ref(info)
            self._labels[info.id] = tuple(info.labels)
        self.device_status = status
        camera = status.camera.get("source") if isinstance(status.camera, dict) else None
        if camera:
            self.label = f"device {status.agent_name} / {camera}"
        self._notify(self._on_device, status, "on_device")

    def _accept(self, header: P.StreamHeader, jpeg: bytes, heat: np.ndarray) -> bool:
        t_perf, t_wall = time.perf_counter(), time.time()
        if header.model_id not in self._models:
            try:
                self._read_device()
            except DeviceError as exc:
                log.info("%s: cannot read the models for %s: %s", self.label, header.model_id, exc)
        try:
            bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            if bgr is None or bgr.shape[:2] != (header.height, header.width):
                raise P.ProtocolError(f"stream: the JPEG is not a {header.width}×{header.height} image")
            result = rebuild_result(header, heat, self._labels.get(header.model_id))
        except (P.ProtocolError, cv2.error) as exc:
            self.bad_frames += 1
            log.warning("%s: frame %d skipped: %s", self.label, header.seq, exc)
            return False
        rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        link_ms = max(0.0, (t_wall - header.t_sent) * 1e3)
        capture_ms = max(0.0, (t_wall - header.t_capture) * 1e3)
        status = self.device_status
        link = DeviceLink(header=header, link_ms=link_ms, capture_ms=capture_ms,
                          agent_ms=(header.t_sent - header.t_capture) * 1e3,
                          provider=status.provider if status is not None else None,
                          agent_name=self.pairing.agent_name, isa=status.isa if status is not None else "")
        model = self._models.get(header.model_id) or ModelRef(header.model_id, "unknown", "unknown")

        def make(seq: int) -> Inspected:
            self._link.append(link_ms)
            # the capture instant on this machine's perf_counter clock (clamped: never after reception)
            frame = Frame(seq, rgb, t_perf - capture_ms / 1e3, self.label)
            return Inspected(frame=frame, result=result, model=model, t_inferred=t_perf, link=link)

        self._publish(make, t_perf)
        return True


def client_name() -> str:
    """How this app introduces itself when pairing: ``crack-inspector on <host>``."""
    return f"crack-inspector on {socket.gethostname()}"[:100]
