"""The app's client for a device agent's API (:mod:`inspector.link.protocol`): pairing, status,
models, push / install / activate / roll back, the result stream, and the :class:`Pairing` it
makes and is made from.

Plain Python (the standard library; no Qt): the Qt panel, the ``inspector --device`` start-up,
the update flow and the tests drive the same object. Message shapes, endpoints and timeouts all
come from :mod:`inspector.link.protocol`; the pinned TLS connection, the open stream and the
errors from :mod:`inspector.link.connection`. Saved pairings: :mod:`inspector.link.pairing`; a
device's stream as a live source: :mod:`inspector.link.remote`.
"""
from __future__ import annotations

import http.client
import logging
import os
import socket
import ssl
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

from inspector.link import protocol as P
from inspector.link.connection import (DeviceError, DeviceStream, FingerprintMismatch, PinnedHTTPSConnection,
                                       PlainHTTPConnection, format_address, normalize_fingerprint)

log = logging.getLogger(__name__)

UPLOAD_CHUNK = 256 * 2**10              # bytes per send() while pushing a package
MAX_RESPONSE_BYTES = 16 * 2**20         # a JSON answer larger than this is not from our agent


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
        conn = PinnedHTTPSConnection(self.host, self.port, pin=None, read_timeout=P.REQUEST_TIMEOUT)
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
        device will require on pushed packages. Returns what to save (:class:`~inspector.link.pairing.PairingStore`)."""
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
        Save it (:meth:`~inspector.link.pairing.PairingStore.renew_token` does both): if it is lost, pair again."""
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
        from inspector.edge.fields import PackageError
        from inspector.edge.package import load_package

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
            return PinnedHTTPSConnection(self.host, self.port, pin=self.cert_sha256, read_timeout=read_timeout)
        return PlainHTTPConnection(self.host, self.port, read_timeout=read_timeout)

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
