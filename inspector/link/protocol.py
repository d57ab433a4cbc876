"""The laptop–device protocol: every endpoint, message and stream frame, in one place.

The device agent (``inspector/agent``) and the app's client (``inspector/link/client.py``) both
import this module; nothing else defines message shapes. The standard library only (the agent
runs on a Jetson). Two siblings implement what is defined here and add nothing to it:
:mod:`inspector.link.framing` (the stream frame's bytes, the heat-map's wire form) and
:mod:`inspector.link.openapi` (the OpenAPI document built from the endpoint table and messages).

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
client goes away (or, with ``?max_frames=n``, after n frames: a generic client or a fuzzer reads
a bounded body that way). There is no ``Content-Length``; the connection closes at the end. Each
frame::

    MAGIC (4 bytes) | header length (u32 BE) | jpeg length (u32 BE) | heat length (u32 BE)
    | header (JSON, StreamHeader) | JPEG of the camera frame | heat-map (uint8, H/s × W/s, raw)

where ``s`` = ``header.heat_scale``; heat value v means v/255. The agent keeps only the newest
result per client: a slow link drops frames instead of building a backlog.

Errors
------
Every error response is ``{"error": {"code": "...", "message": "..."}}`` with a 4xx/5xx status
(`ApiError`); the message says what was wrong and why, never a stack trace. :data:`ERRORS` lists
which statuses each endpoint answers. A method no endpoint uses (TRACE, CONNECT, PUT, ...) is
``501`` on every path, before authentication (RFC 9110 §15.6.2: the server does not implement
it for any resource); a method of :data:`METHODS` on a path without it is ``405`` with ``Allow``,
after authentication (an unauthenticated caller learns nothing about what exists).
"""
from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from inspector.errors import InspectorError

API = "/api/v1"
SERVICE_TYPE = "_crack-agent._tcp.local."      # mDNS (zeroconf) service type
DEFAULT_PORT = 8443
AUTH_HEADER = "Authorization"
STREAM_CONTENT_TYPE = "application/x-crack-stream"
# The upload is the .crackpkg file as it is: the agent reads the bytes whatever the Content-Type
# says (the package proves itself: zip, manifest, hashes, signature). Octet-stream is what a
# client generator can send from a file; application/x-crackpkg (older apps) is accepted too.
PACKAGE_CONTENT_TYPE = "application/octet-stream"
MAX_STREAM_FRAMES = 10**6                       # largest ?max_frames= (a bound, not a promise)

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
# (method, path): (summary, request body kind, response kind). The OpenAPI document
# (inspector.link.openapi) is built from this table, and the agent's router refuses anything not in it.
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
# The methods the agent implements: any other is 501 on every path (see Errors in the module doc).
METHODS = frozenset(m for m, _ in ENDPOINTS)

# Error statuses, each with the Error body. Every endpoint can answer COMMON_ERRORS; protected
# ones 401 too; ERRORS adds what an endpoint's own work can fail with (an endpoint missing here
# gets the common ones only). The OpenAPI document lists them all, so a generated client and a
# fuzzer know every status the agent can send.
COMMON_ERRORS: dict[int, str] = {
    400: "malformed request (request line, headers, Content-Length, query or body)",
    411: "a chunked body, or a body without Content-Length",
    413: "body over the limit",
    414: "request line too long",
    431: "too many or too long headers",
    500: "internal error in the agent (its log says more)",
    503: "busy (every connection slot is serving; see Retry-After) or stopping",
}
_STORE = {500: "the device's storage failed", 507: "the device is out of space"}
_CHANGE = {404: "no such model version on the device", 409: "another model change is in progress",
           422: "the model failed to load or on its first frames; the previous one serves again", **_STORE}
ERRORS: dict[tuple[str, str], dict[int, str]] = {
    ("POST", f"{API}/pair"): {400: "bad body or public_key", 403: "wrong pairing code",
                              429: "too many wrong codes: wait Retry-After seconds"},
    ("POST", f"{API}/models"): {400: "empty or truncated body", 403: "signature missing, wrong or by an unknown key",
                                409: "this version is already on the device with another model",
                                422: "not a valid package, or labels differ from the active model", **_STORE},
    ("POST", f"{API}/models/activate"): _CHANGE,
    ("POST", f"{API}/models/rollback"): {**_CHANGE, 409: "no previous version, or a model change is in progress",
                                         404: "the previous version is no longer on the device"},
    ("DELETE", f"{API}/pairing"): _STORE,
    ("POST", f"{API}/pairing/token"): _STORE,
}


class ProtocolError(InspectorError, ValueError):
    """A message that does not follow this protocol (bad JSON, missing field, wrong type)."""


class ApiError(InspectorError):
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
# base64 (standard alphabet, padded) of exactly 32 bytes: 43 characters, the last of which carries
# only 4 bits (so one of 16), then one "="
PUBLIC_KEY_B64 = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"


def _json(schema: dict[str, Any] | None = None, *, shape: type | None = None, default: Any = MISSING) -> Any:
    """A message field whose JSON Schema says more than its Python type: ``schema`` (pattern,
    lengths, enum) is merged in; ``shape`` is the dataclass a ``dict`` (or each dict of a
    ``list[dict]``) follows on the wire. Only :func:`inspector.link.openapi.json_schema` reads it."""
    return field(default=default, metadata={"schema": schema or {}, "shape": shape})


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
    code: str = _json({"pattern": f"^[0-9]{{{PAIRING_CODE_DIGITS}}}$"})
    client_name: str = _json({"minLength": 1, "maxLength": 100})
    # base64 of the raw 32-byte Ed25519 public key that signs packages (checked by the agent)
    public_key: str = _json({"pattern": PUBLIC_KEY_B64, "minLength": 44, "maxLength": 44,
                             "description": "base64 (standard, padded) of the raw 32-byte Ed25519 public key"})

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
    # from the manifest's extra.lineage (a package made by `distill update`): did its gate promote
    # it, and the expert override {by, reason, failed, at} that pushed it despite a refusal. Both
    # absent (None) for a package without lineage (the shipped one); left out of the JSON then,
    # so an app that predates these fields still reads such a list.
    promoted: bool | None = None
    override: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("promoted", "override"):
            if d[k] is None:
                del d[k]
        return d


@dataclass(frozen=True)
class ModelList(Message):
    active: str | None
    previous: list[str]        # most recent first: rollback goes to previous[0]
    models: list[dict] = _json(shape=ModelInfo)   # ModelInfo.to_dict() of every stored version

    def infos(self) -> list[ModelInfo]:
        return [ModelInfo.from_dict(m) for m in self.models]


@dataclass(frozen=True)
class ActivateRequest(Message):
    id: str = _json({"pattern": _VERSION_ID.pattern})
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
    state: str = _json({"enum": list(ACTIVATION_STATES)})
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
class CameraState(Message):
    """``Status.camera``."""
    source: str                # the camera's label
    state: str
    message: str
    fps: float                 # frames read per second


@dataclass(frozen=True)
class Event(Message):
    """One of ``Status.events`` (activation, rollback, in-service, ...)."""
    time: str                  # ISO-8601 UTC
    kind: str
    message: str


@dataclass(frozen=True)
class Status(Message):
    agent_id: str
    agent_name: str
    camera: dict = _json(shape=CameraState)
    model: dict | None = _json(shape=ModelInfo)   # ModelInfo.to_dict() of the active model
    provider: str              # execution provider in use
    fps: float                 # inference results per second
    clients: int               # connected stream clients
    events: list[dict] = _json(shape=Event)       # recent, newest last
    uptime_s: float
    # Activation.to_dict() of the latest model change, None before any
    activation: dict | None = _json(shape=Activation, default=None)
    isa: str = ""              # the CPU's integer instructions (AMX, AVX-512 VNNI, AVX2, NEON ...): INT8 speed
    # the active model's reference check on this device: rule, provider, passed, what it measured
    verification: dict | None = _json({"type": "object"}, default=None)
    # frames the model in service computed, checked and streamed since it was swapped in (the old
    # model's never count), and whether they are enough to call it checked on live frames
    model_frames: int = 0
    model_checked: bool = False
    # tiles inferred over tiles streamed, recent frames (temporal tile reuse); None before a frame
    tile_share: float | None = _json({"minimum": 0, "maximum": 1}, default=None)
    starting: bool = False     # the agent is still putting its model in service (model is None meanwhile)

    def current_activation(self) -> "Activation | None":
        return None if self.activation is None else Activation.from_dict(self.activation)


@dataclass(frozen=True)
class Tile(Message):
    """One of ``StreamHeader.tiles``: a tile of the frame and its crack probability."""
    box: list[int] = _json({"minItems": 4, "maxItems": 4})   # x0, y0, x1, y1 in frame pixels
    crack_prob: float = _json({"minimum": 0, "maximum": 1})
    fresh: bool = True         # inferred on this frame; False: carried over by tile reuse


@dataclass(frozen=True)
class StreamHeader(Message):
    seq: int                   # result number on the agent (gaps = frames dropped for this client)
    frame_seq: int             # camera frame number
    t_capture: float           # agent's time.time() when the frame was read
    t_sent: float              # agent's time.time() when this message was encoded (once, for every client)
    width: int
    height: int
    heat_scale: int
    tiles: list[dict] = _json(shape=Tile)
    crack_prob_max: float
    model_id: str
    # milliseconds per stage: capture_to_start, tile, preprocess, infer, stitch, encode
    timings_ms: dict = _json({"additionalProperties": {"type": "number"}})
