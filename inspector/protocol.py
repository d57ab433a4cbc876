"""The laptop–device protocol: every endpoint, message and stream frame, in one place.

The device agent (``inspector/agent``) and the app's client (``inspector/device.py``) both
import this module; nothing else defines message shapes. numpy + the standard library only
(the agent runs on a Jetson).

Transport
---------
HTTPS (TLS 1.2+) with the agent's self-signed certificate, pinned by the SHA-256 fingerprint of
its DER bytes, which the client learns at pairing. Plain HTTP only when the agent is started
with ``--insecure-http`` (tests on loopback). JSON bodies are UTF-8 objects.

Authentication
--------------
``POST /api/v1/pair`` is the only endpoint open without credentials: the client sends the
pairing code the agent shows (console, log, ``pairing-code.txt`` in its data folder) and its
Ed25519 public key (the key that signs model packages); it receives a bearer token. Every other
request carries ``Authorization: Bearer <token>``; anything else is refused with 401. Wrong
codes are throttled per client address and for the agent as a whole (429 with
``Retry-After``); they never replace the code (``inspector/agent/throttle.py``). A client can
swap its token for a new one (``POST /api/v1/pairing/token``) and unpair itself
(``DELETE /api/v1/pairing``); the operator revokes clients with ``inspector-agent --revoke``.

The stream
----------
``GET /api/v1/stream`` answers ``application/x-crack-stream`` and then sends frames until the
client goes away. Each frame::

    MAGIC (4 bytes) | header length (u32 BE) | jpeg length (u32 BE) | heat length (u32 BE)
    | header (JSON, StreamHeader) | JPEG of the camera frame | heat-map (uint8, H/s × W/s, raw)

where ``s`` = ``header.heat_scale``; heat value v means v/255. The agent keeps only the newest
result per client: a slow link drops frames instead of building a backlog.

Errors
------
Every error response is ``{"error": {"code": "...", "message": "..."}}`` with a 4xx/5xx status
(`ApiError`); the message says what was wrong and why, never a stack trace.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, BinaryIO

import numpy as np

API = "/api/v1"
SERVICE_TYPE = "_crack-agent._tcp.local."      # mDNS (zeroconf) service type
DEFAULT_PORT = 8443
AUTH_HEADER = "Authorization"
STREAM_CONTENT_TYPE = "application/x-crack-stream"
PACKAGE_CONTENT_TYPE = "application/x-crackpkg"

# An upload larger than this is refused before a byte is stored: a Jetson's eMMC is small and
# an unbounded body is the cheapest denial of service there is. Our packages are 4–45 MB.
MAX_PACKAGE_BYTES = 200 * 2**20
MAX_JSON_BYTES = 64 * 2**10                     # any JSON request body
PAIRING_CODE_DIGITS = 6
TOKEN_BYTES = 32
STREAM_MAGIC = b"CRK1"
MAX_STREAM_HEADER = 256 * 2**10
MAX_STREAM_PART = 32 * 2**20
HEAT_SCALE = 4                                  # heat-map sent at 1/4 of the frame size per side

# Timeouts (seconds)
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 30.0
STREAM_READ_TIMEOUT = 10.0                      # no frame for this long: the link is lost
# An activation is followed by polling the status, not by one long request: the first load of a
# model on TensorRT builds its engine, minutes on a Jetson Nano (docs/deploy/jetson.md).
ACTIVATION_TIMEOUT = 30 * 60.0
ACTIVATION_POLL = 1.0

# ------------------------------------------------------------------ endpoints
# (method, path): (summary, request body kind, response kind). The OpenAPI document below is
# built from this table, and the agent's router refuses anything not in it.
ENDPOINTS: dict[tuple[str, str], tuple[str, str | None, str]] = {
    ("POST", f"{API}/pair"): ("Pair with the pairing code; returns a bearer token", "PairRequest", "PairResponse"),
    ("GET", f"{API}/status"): ("Camera, model, provider, FPS, models on the device, events", None, "Status"),
    ("GET", f"{API}/stream"): ("Frames, verdicts and heat-maps (binary stream, newest only)", None, "stream"),
    ("GET", f"{API}/models"): ("Model versions stored on the device", None, "ModelList"),
    ("POST", f"{API}/models"): ("Upload a signed .crackpkg (body: the file); verified, stored, not activated",
                                "package", "ModelInfo"),
    ("POST", f"{API}/models/activate"): ("Activate a stored version: with wait (the default) answer when it is "
                                         "live or failed; without, answer 202 with the Activation at once and "
                                         "report its progress in the status", "ActivateRequest", "ModelList"),
    ("POST", f"{API}/models/rollback"): ("Go back to the previously active version", None, "ModelList"),
    ("GET", f"{API}/openapi.json"): ("This description", None, "openapi"),
    ("DELETE", f"{API}/pairing"): ("Unpair this client: its token stops working at once", None, "ClientInfo"),
    ("POST", f"{API}/pairing/token"): ("A new token for this client; the old one stops working at once",
                                       None, "PairResponse"),
}
OPEN_ENDPOINTS = frozenset({("POST", f"{API}/pair"), ("GET", f"{API}/openapi.json")})
# endpoints that may also answer 202 Accepted, and with what
ACCEPTED: dict[tuple[str, str], str] = {("POST", f"{API}/models/activate"): "Activation"}


class ProtocolError(ValueError):
    """A message that does not follow this protocol (bad JSON, missing field, wrong type)."""


class ApiError(Exception):
    """An error response: HTTP ``status``, a stable ``code`` and a human ``message``."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.retry_after = retry_after     # seconds, sent as Retry-After (429, 503)

    def to_json(self) -> bytes:
        return json.dumps({"error": {"code": self.code, "message": self.message}}).encode()

    @classmethod
    def from_response(cls, status: int, body: bytes) -> "ApiError":
        try:
            err = json.loads(body.decode("utf-8"))["error"]
            return cls(status, str(err["code"]), str(err["message"]))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return cls(status, "http_error", body[:200].decode("utf-8", "replace") or f"HTTP {status}")


# ------------------------------------------------------------------ messages

_VERSION_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_CODE = re.compile(f"[0-9]{{{PAIRING_CODE_DIGITS}}}")  # ASCII digits only (str.isdigit takes any script)


def _from_dict(cls, d: Any):
    """Build dataclass ``cls`` from a JSON object, checking names and simple types."""
    if not isinstance(d, dict):
        raise ProtocolError(f"{cls.__name__}: expected a JSON object, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ProtocolError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in d:
            if f.default is not MISSING or f.default_factory is not MISSING:
                continue
            raise ProtocolError(f"{cls.__name__}: missing field {f.name!r}")
        kwargs[f.name] = d[f.name]
    obj = cls(**kwargs)
    obj.validate()
    return obj


def _require(cond: bool, cls: str, what: str) -> None:
    if not cond:
        raise ProtocolError(f"{cls}: {what}")


class Message:
    def validate(self) -> None:  # overridden where there is more to check than types
        pass

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), allow_nan=False).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes | str):
        try:
            d = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"{cls.__name__}: not JSON ({exc})") from None
        except RecursionError:
            raise ProtocolError(f"{cls.__name__}: JSON nested too deeply") from None
        return _from_dict(cls, d)

    @classmethod
    def from_dict(cls, d: Any):
        return _from_dict(cls, d)


@dataclass(frozen=True)
class PairRequest(Message):
    code: str
    client_name: str
    public_key: str        # base64 of the raw 32-byte Ed25519 public key that signs packages

    def validate(self) -> None:
        n = type(self).__name__
        _require(isinstance(self.code, str) and bool(_CODE.fullmatch(self.code)),
                 n, f"code must be {PAIRING_CODE_DIGITS} digits")
        _require(isinstance(self.client_name, str) and 0 < len(self.client_name) <= 100, n,
                 "client_name must be 1–100 characters")
        _require(isinstance(self.public_key, str) and 0 < len(self.public_key) <= 100, n,
                 "public_key must be base64 of 32 bytes")


@dataclass(frozen=True)
class PairResponse(Message):
    token: str
    agent_id: str
    agent_name: str
    cert_sha256: str | None    # fingerprint of the TLS certificate (None over plain HTTP)


@dataclass(frozen=True)
class ClientInfo(Message):
    """A paired client as the agent knows it (the token itself is never stored)."""
    name: str
    key_id: str                # of its package-signing key
    paired: str                # ISO-8601 UTC


@dataclass(frozen=True)
class ModelInfo(Message):
    id: str                    # "<name>-<version>" of the package, the handle for activate
    name: str
    version: str
    sha256: str                # of model.onnx (manifest.model_sha256)
    size: int                  # bytes of the .crackpkg
    labels: list[str]
    input_size: int
    quantization: str
    signed_by: str | None      # key id, None for the package given on the agent's command line
    stored: str                # ISO-8601 UTC


@dataclass(frozen=True)
class ModelList(Message):
    active: str | None
    previous: list[str]        # most recent first: rollback goes to previous[0]
    models: list[dict]         # ModelInfo.to_dict() of every stored version

    def infos(self) -> list[ModelInfo]:
        return [ModelInfo.from_dict(m) for m in self.models]


@dataclass(frozen=True)
class ActivateRequest(Message):
    id: str
    wait: bool = True          # False: answer 202 + Activation at once, progress in Status.activation

    def validate(self) -> None:
        _require(isinstance(self.id, str) and bool(_VERSION_ID.fullmatch(self.id)), type(self).__name__,
                 "id must be 1–128 letters, digits, '.', '_' or '-'")
        _require(isinstance(self.wait, bool), type(self).__name__, "wait must be true or false")


ACTIVATION_STATES = ("building", "verifying", "live", "failed")
ACTIVATION_DONE = ("live", "failed")


@dataclass(frozen=True)
class Activation(Message):
    """The latest model change on the device (activation, rollback, the start-up load).

    ``building``: the new model is loaded, checked on its reference patches and run once, off
    the serving path (TensorRT builds its engine here); the old model still serves the stream.
    ``verifying``: swapped in, on probation on live frames. ``live``: it serves. ``failed``:
    it did not load or failed its first frames; the model that served before is back
    (``message`` says why and which). ``since``/``started`` are the agent's UTC clock (a Jetson
    without network time may be off); ``elapsed_s`` is the time in this state by its monotonic
    clock, the one to show."""
    model_id: str
    state: str
    since: str                 # ISO-8601 UTC: entered this state
    started: str               # ISO-8601 UTC: the change was asked for
    elapsed_s: float           # seconds in this state
    message: str

    def validate(self) -> None:
        n = type(self).__name__
        _require(isinstance(self.model_id, str) and bool(_VERSION_ID.fullmatch(self.model_id)), n, "bad model_id")
        _require(self.state in ACTIVATION_STATES, n, f"state must be one of {ACTIVATION_STATES}, got {self.state!r}")
        _require(isinstance(self.elapsed_s, (int, float)) and not isinstance(self.elapsed_s, bool), n,
                 "elapsed_s must be a number")
        _require(isinstance(self.message, str), n, "message must be a string")

    @property
    def done(self) -> bool:
        return self.state in ACTIVATION_DONE


@dataclass(frozen=True)
class Status(Message):
    agent_id: str
    agent_name: str
    camera: dict               # {"source": label, "state": ..., "message": ..., "fps": float}
    model: dict | None         # ModelInfo.to_dict() of the active model
    provider: str              # execution provider in use
    fps: float                 # inference results per second
    clients: int               # connected stream clients
    events: list[dict]         # recent [{"time", "kind", "message"}], newest last (activation, rollback, ...)
    uptime_s: float
    activation: dict | None = None   # Activation.to_dict() of the latest model change, None before any

    def current_activation(self) -> "Activation | None":
        return None if self.activation is None else Activation.from_dict(self.activation)


@dataclass(frozen=True)
class StreamHeader(Message):
    seq: int                   # result number on the agent (gaps = frames dropped for this client)
    frame_seq: int             # camera frame number
    t_capture: float           # agent's time.time() when the frame was read
    t_sent: float              # agent's time.time() when this message was encoded (once, for every client)
    width: int
    height: int
    heat_scale: int
    tiles: list[dict]          # [{"box": [x0, y0, x1, y1], "crack_prob": p}]
    crack_prob_max: float
    model_id: str
    timings_ms: dict           # per stage: capture→start, tile, preprocess, infer, stitch, encode


def encode_frame(header: StreamHeader, jpeg: bytes, heat: np.ndarray) -> bytes:
    """One stream frame (see the module doc). ``heat``: uint8 (H/s) × (W/s)."""
    h = header.to_json()
    heat = np.ascontiguousarray(heat, dtype=np.uint8)
    return STREAM_MAGIC + struct.pack(">III", len(h), len(jpeg), heat.nbytes) + h + jpeg + heat.tobytes()


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            raise EOFError(f"stream ended after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(stream: BinaryIO) -> tuple[StreamHeader, bytes, np.ndarray]:
    """Read one frame from a file-like ``stream``: (header, jpeg bytes, heat uint8 array).

    EOFError when the stream ends cleanly between frames or mid-frame; ProtocolError when
    the bytes are not this protocol (wrong magic, absurd lengths, header that does not parse).
    """
    magic = stream.read(4)
    if not magic:
        raise EOFError("stream ended")
    if len(magic) < 4:
        magic += _read_exact(stream, 4 - len(magic))
    if magic != STREAM_MAGIC:
        raise ProtocolError(f"stream: bad magic {magic!r}")
    n_header, n_jpeg, n_heat = struct.unpack(">III", _read_exact(stream, 12))
    if n_header > MAX_STREAM_HEADER or n_jpeg > MAX_STREAM_PART or n_heat > MAX_STREAM_PART:
        raise ProtocolError(f"stream: part lengths {n_header}/{n_jpeg}/{n_heat} exceed the limits")
    header = StreamHeader.from_json(_read_exact(stream, n_header))
    jpeg = _read_exact(stream, n_jpeg)
    heat_raw = _read_exact(stream, n_heat)
    s = header.heat_scale
    hh, hw = -(-header.height // s), -(-header.width // s)
    if s < 1 or hh * hw != n_heat:
        raise ProtocolError(f"stream: heat-map of {n_heat} bytes does not match {header.width}×{header.height} / {s}")
    return header, jpeg, np.frombuffer(heat_raw, np.uint8).reshape(hh, hw)


def heat_to_wire(heatmap: np.ndarray, scale: int = HEAT_SCALE) -> np.ndarray:
    """float [0, 1] H×W → uint8 ceil(H/s)×ceil(W/s) (area average), for :func:`encode_frame`."""
    import cv2

    h, w = heatmap.shape
    small = cv2.resize(heatmap.astype(np.float32), (-(-w // scale), -(-h // scale)), interpolation=cv2.INTER_AREA)
    return cv2.convertScaleAbs(np.clip(small, 0.0, 1.0), alpha=255.0)


def heat_from_wire(heat: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 wire heat-map → float32 H×W in [0, 1] (bilinear)."""
    import cv2

    return cv2.resize(heat.astype(np.float32) / 255.0, (width, height), interpolation=cv2.INTER_LINEAR)


# ------------------------------------------------------------------ OpenAPI

_SCHEMAS = {
    "PairRequest": {"type": "object", "additionalProperties": False, "required": ["code", "client_name", "public_key"],
                    "properties": {"code": {"type": "string", "pattern": f"^[0-9]{{{PAIRING_CODE_DIGITS}}}$"},
                                   "client_name": {"type": "string", "minLength": 1, "maxLength": 100},
                                   "public_key": {"type": "string", "minLength": 1, "maxLength": 100}}},
    "ActivateRequest": {"type": "object", "additionalProperties": False, "required": ["id"],
                        "properties": {"id": {"type": "string", "pattern": _VERSION_ID.pattern},
                                       "wait": {"type": "boolean"}}},
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": {"type": "object", "required": ["code", "message"],
                                       "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
}
for _cls in (PairResponse, ClientInfo, ModelInfo, ModelList, Status, StreamHeader, Activation):
    _SCHEMAS[_cls.__name__] = {"type": "object",
                               "required": [f.name for f in fields(_cls) if f.default is MISSING],
                               "properties": {f.name: {} for f in fields(_cls)}}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.0 description of the agent's API (served at ``/api/v1/openapi.json``)."""
    paths: dict[str, dict] = {}
    for (method, path), (summary, body, response) in ENDPOINTS.items():
        op: dict[str, Any] = {"summary": summary, "responses": {
            "401": {"description": "missing or wrong credentials",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            "4XX": {"description": "refused; the message says why",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
        if (method, path) not in OPEN_ENDPOINTS:
            op["security"] = [{"bearer": []}]
        if body == "package":
            op["requestBody"] = {"required": True, "content": {PACKAGE_CONTENT_TYPE: {
                "schema": {"type": "string", "format": "binary", "maxLength": MAX_PACKAGE_BYTES}}}}
        elif body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{body}"}}}}
        if response == "stream":
            ok = {"description": "binary frame stream", "content": {STREAM_CONTENT_TYPE: {}}}
        elif response == "openapi":
            ok = {"description": "this document", "content": {"application/json": {}}}
        else:
            ok = {"description": "ok", "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{response}"}}}}
        op["responses"]["200"] = ok
        if (method, path) in ACCEPTED:
            op["responses"]["202"] = {"description": "accepted, in progress", "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{ACCEPTED[(method, path)]}"}}}}
        paths.setdefault(path, {})[method.lower()] = op
    return {"openapi": "3.0.3",
            "info": {"title": "Crack inspector device agent", "version": "1"},
            "paths": paths,
            "components": {"schemas": _SCHEMAS,
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}
