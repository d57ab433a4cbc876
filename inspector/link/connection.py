"""Reaching one device agent: its address, TLS pinned to the certificate fingerprint learnt at
pairing, the open result stream, and the link's errors (:class:`DeviceError`,
:class:`FingerprintMismatch`). The HTTP calls themselves are :class:`~inspector.link.client.DeviceClient`'s.

Trust
-----
The agent's certificate is self-signed, so CA and host-name checks are off and the certificate
is **pinned** instead: after the TLS handshake the SHA-256 of the peer's DER certificate must
equal the fingerprint learnt at pairing, else :class:`FingerprintMismatch` is raised and the
connection is closed before a byte of the request (or the bearer token) is sent. At pairing
(trust on first use) :meth:`~inspector.link.client.DeviceClient.fetch_fingerprint` reads the
fingerprint so the user can compare it with the one the agent prints;
:meth:`~inspector.link.client.DeviceClient.pair` then runs pinned to it.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import socket
import ssl

import numpy as np

from inspector.errors import InspectorError
from inspector.link import framing
from inspector.link import protocol as P


class DeviceError(InspectorError, RuntimeError):
    """The device could not be reached, refused, or answered outside the protocol.
    ``api`` is the agent's :class:`~inspector.link.protocol.ApiError` when it answered with one."""

    def __init__(self, message: str, api: P.ApiError | None = None):
        super().__init__(message)
        self.api = api


class FingerprintMismatch(DeviceError):
    """The peer's TLS certificate is not the pinned one (another device, a re-installed agent,
    or someone in between); nothing was sent to it."""


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
    # device chose. Trust comes from the pinned fingerprint instead (PinnedHTTPSConnection).
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class PinnedHTTPSConnection(http.client.HTTPSConnection):
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


class PlainHTTPConnection(http.client.HTTPConnection):
    """Plain HTTP (agents started with ``--insecure-http``): connect with CONNECT_TIMEOUT, then read
    with ``read_timeout``."""

    peer_sha256 = None

    def __init__(self, host: str, port: int, *, read_timeout: float):
        super().__init__(host, port, timeout=P.CONNECT_TIMEOUT)
        self.read_timeout = read_timeout

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(self.read_timeout)


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
            return framing.read_frame(self._resp)
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
