"""Hostile requests: requests generated from the OpenAPI description (hypothesis) never get a
5xx, every error is ApiError JSON, and the agent still serves afterwards; a Content-Length that
is not a byte count is refused on every endpoint (no request smuggling).

Real ``python -m inspector.agent`` processes on loopback (plain HTTP for speed); the device
helpers (:class:`agent_support.Device`, :func:`agent_support.check_device`) are shared with
the other fault files. Missing or wrong credentials on every endpoint are covered in
``test_agent_server.py``.
"""
from __future__ import annotations

import http.client
import io
import json
import re
import socket
import string
import zipfile
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from agent_support import OLD_ID, check_device, check_frame, device_fixture, error_code, paired_device, read_all
from agent_support import key  # noqa: F401 - fixtures, used by name
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspector.link import framing, openapi, protocol
from inspector.paths import default_model
from inspector.link.protocol import API


# ---------------------------------------------------------------------------- fuzzing

SPEC = openapi.document()
SCHEMAS = SPEC["components"]["schemas"]
# Not the two that end the fuzzer's token (unpair, new token): every later request would be a 401.
# tests/test_agent_lockout.py covers them.
TOKEN_ENDING = {("DELETE", f"{protocol.API}/pairing"), ("POST", f"{protocol.API}/pairing/token")}
OPERATIONS = [(method.upper(), path) for path, ops in SPEC["paths"].items() for method in ops
              if (method.upper(), path) not in TOKEN_ENDING]
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")   # tried; those not in protocol.METHODS are 501
FUZZ_EXAMPLES = 50                                                       # per operation: 8 × 50 = 400 requests
PACKAGE_TYPE = protocol.PACKAGE_CONTENT_TYPE
OPEN_PATHS = {p for _, p in protocol.OPEN_ENDPOINTS}
RESPONSE_CLASSES = {"PairResponse": protocol.PairResponse, "Status": protocol.Status,
                    "ModelList": protocol.ModelList, "ModelInfo": protocol.ModelInfo}


def resolve(schema: dict) -> dict:
    while "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def conforms(value: Any, schema: dict) -> bool:
    """JSON-Schema validation for the subset the OpenAPI document uses."""
    schema = resolve(schema)
    if value is None and schema.get("nullable"):
        return True
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return False
        props = schema.get("properties", {})
        if any(k not in value for k in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and set(value) - set(props):
            return False
        return all(conforms(value[k], props[k]) for k in value if k in props)
    if kind == "string":
        if not isinstance(value, str):
            return False
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 1 << 62):
            return False
        return "pattern" not in schema or re.fullmatch(schema["pattern"], value) is not None
    if kind == "boolean":  # ActivateRequest.wait: null or 1 is not a boolean (the agent says 400)
        return isinstance(value, bool)
    return True


json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c,
                                                                                            max_size=4), max_leaves=12)


def from_schema(schema: dict) -> st.SearchStrategy:
    """Values that conform to ``schema`` (the subset the OpenAPI document uses)."""
    schema = resolve(schema)
    kind = schema.get("type")
    if kind == "object":
        props = {k: from_schema(v) for k, v in schema.get("properties", {}).items()}
        required = schema.get("required", [])
        return st.fixed_dictionaries({k: props[k] for k in required},
                                     optional={k: v for k, v in props.items() if k not in required})
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda s: conforms(s, schema))
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 120))
    return json_values


@st.composite
def mutated(draw, schema: dict) -> Any:
    """A conforming object with one thing wrong (usually): a field dropped, added or retyped."""
    value = dict(draw(from_schema(schema)))
    how = draw(st.sampled_from(["drop", "add", "retype", "retype", "long"]))
    keys = sorted(value)
    if how == "drop" and keys:
        value.pop(draw(st.sampled_from(keys)))
    elif how == "add":
        value[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
    elif how == "retype" and keys:
        value[draw(st.sampled_from(keys))] = draw(json_values)
    elif keys:
        value[draw(st.sampled_from(keys))] = draw(st.text(min_size=100, max_size=300))
    return value


def json_body(schema: dict) -> st.SearchStrategy[bytes]:
    dumps = lambda v: json.dumps(v).encode()  # noqa: E731
    return st.one_of(
        from_schema(schema).map(dumps), from_schema(schema).map(dumps),
        mutated(schema).map(dumps),
        json_values.map(dumps),
        from_schema(schema).map(dumps).flatmap(lambda b: st.integers(0, max(0, len(b) - 1)).map(lambda n: b[:n])),
        st.binary(max_size=200),
        st.just(b'{"id": "\xff\xfe"}'), st.just(b"[" * 5000), st.just(b" " * (protocol.MAX_JSON_BYTES + 1)))


@st.composite
def zip_bytes(draw) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name in draw(st.lists(st.sampled_from(["manifest.json", "model.onnx", "reference.npz", "../x", "a"]),
                                  max_size=4, unique=True)):
            zf.writestr(name, draw(st.one_of(st.binary(max_size=64), json_values.map(lambda v: json.dumps(v)))))
    return out.getvalue()


def package_body() -> st.SearchStrategy[bytes]:
    prefix = default_model().read_bytes()[:200_000]
    return st.one_of(st.binary(max_size=300), zip_bytes(),
                     st.integers(0, len(prefix)).map(lambda n: prefix[:n]), st.just(b""))


# Latin-1 header values; not \x85, which the stdlib's header parser (str.splitlines) takes for a
# line break: the headers after it would be lost and the oracles below would judge the wrong request
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f\x85"),
                      max_size=60)
url_chars = string.ascii_letters + string.digits + "-._~%!$&'()*+,;=:@/?"
segment = st.text(url_chars.replace("/", "").replace("?", ""), max_size=16)


@st.composite
def fuzz_request(draw, op: tuple[str, str], token: str) -> dict[str, Any]:
    method, path = op
    spec = SPEC["paths"][path][method.lower()]
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(METHODS))
    where = draw(st.sampled_from(["op"] * 5 + ["query"] * 2 + ["extra"] * 2 + ["odd"]))
    target = path
    if where == "query":
        target = path + "?" + quote(draw(st.text(url_chars + " \u00e9\u4e2d", max_size=40)), safe=url_chars)
    elif where == "extra":
        target = API + "/" + "/".join(quote(s, safe=url_chars) for s in draw(st.lists(segment, max_size=4)))
    elif where == "odd":
        target = draw(st.sampled_from([
            f"{API}", f"{API}/", path + "/", path.replace(API, API + "/"), path + "/..", path + "/%2e%2e",
            f"{API}/models/../status", f"{API}/./status", f"{API}/%73tatus", path.upper(), "/", "*",
            f"http://127.0.0.1{path}", path + "#x", path + ";x", f"{API}/models/activate/x"]))
    auth = draw(st.sampled_from(["valid"] * 5 + ["none", "random", "malformed"]))
    headers: list[tuple[str, str]] = [("Host", "127.0.0.1")]
    if auth == "valid":
        headers.append(("Authorization", f"Bearer {token}"))
    elif auth == "random":
        headers.append(("Authorization", "Bearer " + draw(header_text)))
    elif auth == "malformed":
        headers.append(("Authorization", draw(st.sampled_from(
            ["Bearer", f"Basic {token}", f"bearer{token}", f"Bearer {token}x", token, f"Bearer {token[:-1]}",
             f"Bearer {token} extra"]) | header_text)))
    kind = (spec.get("requestBody", {}).get("content") or {"": {}})
    if PACKAGE_TYPE in kind:
        body = draw(package_body())
    elif "application/json" in kind:
        body = draw(json_body(kind["application/json"]["schema"]))
    else:
        body = draw(st.sampled_from([b""] * 6 + [b"{}", b"x" * 100]))
    length = draw(st.sampled_from(["exact"] * 7 + ["absent", "long", "huge", "garbage"]))
    if length == "exact":
        headers.append(("Content-Length", str(len(body))))
    elif length == "long":
        headers.append(("Content-Length", str(len(body) + draw(st.integers(1, 5000)))))
    elif length == "huge":
        headers.append(("Content-Length", str(draw(st.sampled_from([protocol.MAX_PACKAGE_BYTES + 1, 10**25])))))
    elif length == "garbage":
        headers.append(("Content-Length", draw(st.sampled_from(["-1", "abc", "1e3", "+5", "1_0", "0x10", "",
                                                                "\u0661\u0662".encode().decode("latin-1"),
                                                                "5, 5"]))))
    content_type = draw(st.sampled_from([None, "application/json", "application/json; charset=utf-8", "text/plain",
                                         PACKAGE_TYPE, "multipart/form-data; boundary=x"]) | header_text)
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    for extra in draw(st.lists(st.sampled_from([("Expect", "100-continue"), ("Connection", "close"),
                                                ("Connection", "keep-alive"), ("Transfer-Encoding", "chunked"),
                                                ("Accept", "*/*"), ("X-Junk", "\u00ff" * 50)]),
                               max_size=2, unique=True)):
        headers.append(extra)
    return {"method": method, "target": target, "headers": headers, "body": body, "length": length,
            "op": op, "auth": auth}


def send_fuzz(port: int, req: dict[str, Any]) -> tuple[int, dict, bytes] | None:
    """Send ``req`` as raw bytes, half-close, read one answer: (status, headers, body), None if
    the agent closed the connection without answering. A stream is read up to one frame."""
    head = f"{req['method']} {req['target']} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in req["headers"])
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        sock.sendall(head.encode("latin-1") + b"\r\n" + req["body"])
        try:
            sock.shutdown(socket.SHUT_WR)  # a body shorter than announced ends here instead of hanging
        except OSError:
            pass  # the agent answered and closed first (an early refusal, seen under load): read it anyway
        resp = http.client.HTTPResponse(sock, method=req["method"])
        try:
            resp.begin()
        except http.client.RemoteDisconnected:
            return None
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        if hdrs.get("content-type") == protocol.STREAM_CONTENT_TYPE:
            check_frame(*framing.read_frame(resp))
            return resp.status, hdrs, b""
        return resp.status, hdrs, resp.read()
    finally:
        sock.close()


fuzz_device = device_fixture("fuzz")


class TestFuzz:
    """Requests generated from ``openapi.document()`` against a separate agent (it has only the
    shipped model and the fuzzer cannot sign, so nothing it does changes what it serves)."""

    @pytest.mark.parametrize("op", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                     HealthCheck.large_base_example])
    @given(data=st.data())
    def test_operation(self, fuzz_device, op, data):
        dev = fuzz_device
        req = data.draw(fuzz_request(op, dev.token), label="request")
        answer = send_fuzz(dev.agent.port, req)
        dev.fuzzed += 1
        dev.fuzzed_ops.add(op)
        names = [k for k, _ in req["headers"]]
        framed = req["length"] == "exact" and "Transfer-Encoding" not in names
        path = urlsplit("/" + req["target"].lstrip("/") if req["target"].startswith("//") else req["target"]).path
        key = (req["method"], path)
        hit = key if key in protocol.ENDPOINTS else None   # the endpoint the agent routes this to, if any
        # the path of an open endpoint is public: another method there is 405 without credentials
        authorized = req["auth"] == "valid" or key in protocol.OPEN_ENDPOINTS or (hit is None and path in OPEN_PATHS)
        implemented = req["method"] in protocol.METHODS   # any other: 501 on every path, before auth
        if answer is None:
            # only when a body announced longer than what came was being read (the end came first)
            assert req["length"] == "long" and authorized and hit, req
            return
        status, headers, body = answer
        assert status < 500 or (status == 501 and not implemented), (req, status, body)
        dev.outcomes[status] += 1
        if status >= 400 and req["method"] != "HEAD":
            assert headers.get("content-type", "").startswith("application/json"), (req, headers)
            err = json.loads(body)
            assert set(err) == {"error"} and set(err["error"]) == {"code", "message"}, body
            assert isinstance(err["error"]["code"], str) and err["error"]["code"], body
            assert isinstance(err["error"]["message"], str) and err["error"]["message"], body
            assert "Traceback" not in err["error"]["message"]
        if not implemented:
            assert status == 501, (req, status, body)
            return
        if not authorized:
            assert status == 401, (req, status, body)  # before anything else is looked at
            return
        if hit is None:
            assert status in (404, 405), (req, status, body)
            return
        _, body_kind, response_kind = protocol.ENDPOINTS[hit]
        if status < 400:
            assert status == 200, (req, status)
            if response_kind in RESPONSE_CLASSES:
                RESPONSE_CLASSES[response_kind].from_json(body)
            elif response_kind == "openapi":
                assert json.loads(body) == json.loads(json.dumps(SPEC))
        if "Transfer-Encoding" in names:
            assert status == 411, (req, status, body)
        elif req["length"] == "garbage":
            assert status == 400, (req, status, body)  # the framing is unknown
        elif req["length"] == "huge":
            assert status == 413, (req, status, body)
        elif req["length"] == "absent" and body_kind is not None:
            assert status == 411, (req, status, body)
        if framed and body_kind not in (None, "package") and len(req["body"]) <= protocol.MAX_JSON_BYTES:
            # JSON that does not conform to the schema is refused; JSON that does is not a bad request
            try:
                ok = conforms(json.loads(req["body"]), {"$ref": f"#/components/schemas/{body_kind}"})
            except (ValueError, RecursionError):
                ok = False
            if ok:
                assert status != 400 or error_code(body) != "bad_request", (req, body)
            else:
                assert 400 <= status < 500, (req, status, body)
        elif framed and body_kind == "package":
            assert 400 <= status < 500, (req, status, body)  # the fuzzer cannot sign
        elif framed and body_kind is None and len(req["body"]) <= protocol.MAX_JSON_BYTES:
            assert status in (200, 409), (req, status, body)  # a small body is ignored; 409: no previous

    def test_still_serving_after_fuzzing(self, fuzz_device):
        dev = fuzz_device
        assert dev.fuzzed >= 0.9 * FUZZ_EXAMPLES * len(dev.fuzzed_ops), dev.fuzzed
        print(f"fuzzed requests: {dev.fuzzed}, answers: {dict(sorted(dev.outcomes.items()))}")
        if len(dev.fuzzed_ops) == len(OPERATIONS):  # the requests got past auth, routing and framing
            assert {200, 400, 401, 404, 405, 411, 413, 422} <= set(dev.outcomes), dev.outcomes
        check_device(dev, allowed={OLD_ID}, expected=OLD_ID)
        assert [m["id"] for m in dev.listing().models] == [OLD_ID]
        assert dev.agent.stop() == 0


def test_bad_content_length_is_refused_on_every_endpoint(tmp_path_factory, key):
    """A Content-Length that is not 1*DIGIT makes the request's framing unknown: 400 and the
    connection closed, on every endpoint (the agent used to read "-5" or "abc" as 0 where it
    expects no body, and take the bytes after the head as the next request)."""
    dev = paired_device(tmp_path_factory, key, "framing")
    try:
        for method, path in protocol.ENDPOINTS:
            for value in ("-5", "abc", "+5", "1_0", "\u0661"):
                smuggled = f"GET {API}/status HTTP/1.1\r\nAuthorization: Bearer {dev.token}\r\n\r\n".encode()
                with socket.create_connection(("127.0.0.1", dev.agent.port), timeout=10) as sock:
                    sock.sendall(f"{method} {path} HTTP/1.1\r\nAuthorization: Bearer {dev.token}\r\n"
                                 f"Content-Length: {value}\r\n\r\n".encode() + smuggled)
                    raw = read_all(sock)
                assert raw.startswith(b"HTTP/1.1 400 "), (method, path, value, raw[:300])
                assert raw.count(b"HTTP/1.1 ") == 1, (method, path, value, raw)  # nothing answered after it
                assert error_code(raw.partition(b"\r\n\r\n")[2]) == "bad_request"
    finally:
        dev.agent.stop()
