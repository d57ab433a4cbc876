"""The protocol on its own: stream framing (inspector.link.framing), message validation, the OpenAPI
document (inspector.link.openapi)."""
import io

import numpy as np
import pytest

from inspector.link import framing, openapi
from inspector.link import protocol as P


def header(**kw):
    d = dict(seq=7, frame_seq=21, t_capture=1.5, t_sent=1.6, width=640, height=480, heat_scale=P.HEAT_SCALE,
             tiles=[{"box": [0, 0, 160, 160], "crack_prob": 0.93}], crack_prob_max=0.93, model_id="m-1.0.0",
             timings_ms={"infer": 18.0})
    d.update(kw)
    return P.StreamHeader(**d)


def test_stream_frames_round_trip_and_heat_survives_the_wire():
    rng = np.random.default_rng(0)
    heat = np.zeros((480, 640), np.float32)
    heat[200:260, 100:400] = 0.9
    frames = [(header(seq=i), rng.bytes(1000 + i), framing.heat_to_wire(heat)) for i in range(3)]
    buf = io.BytesIO(b"".join(framing.encode_frame(*f) for f in frames))
    for h, jpeg, wire in frames:
        got_h, got_jpeg, got_heat = framing.read_frame(buf)
        assert (got_h, got_jpeg) == (h, jpeg) and np.array_equal(got_heat, wire)
    with pytest.raises(EOFError):
        framing.read_frame(buf)
    back = framing.heat_from_wire(frames[0][2], 640, 480)
    assert back.shape == (480, 640) and abs(back[230, 250] - 0.9) < 0.01 and back[50, 50] == 0.0


@pytest.mark.parametrize("damage, error", [
    (lambda b: b"XXXX" + b[4:], P.ProtocolError),                  # not our magic
    (lambda b: b[:30], EOFError),                                  # cut mid-frame
    (lambda b: b[:4] + (2**31).to_bytes(4, "big") + b[8:], P.ProtocolError),  # absurd header length
])
def test_broken_streams_are_refused(damage, error):
    raw = framing.encode_frame(header(), b"jpeg", framing.heat_to_wire(np.zeros((480, 640), np.float32)))
    with pytest.raises(error):
        framing.read_frame(io.BytesIO(damage(raw)))


@pytest.mark.parametrize("cls, raw, fragment", [
    (P.ActivateRequest, b'{"id": "abc\\n"}', "id must be"),
    (P.ActivateRequest, b'{"id": "../../etc/passwd"}', "id must be"),
    (P.ActivateRequest, b"[" * 5000, "nested too deeply"),
    (P.ActivateRequest, b'{"id": "a", "extra": 1}', "unknown field"),
    (P.ActivateRequest, b"{}", "missing field"),
    (P.PairRequest, '{"code": "١٢٣٤٥٦", "client_name": "x", "public_key": "y"}'.encode(), "6 digits"),
    (P.PairRequest, b'not json', "not JSON"),
])
def test_messages_refuse_what_the_protocol_does_not_allow(cls, raw, fragment):
    with pytest.raises(P.ProtocolError, match=fragment):
        cls.from_json(raw)


def test_openapi_describes_every_endpoint_and_who_may_call_it():
    doc = openapi.document()
    described = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    assert described == set(P.ENDPOINTS)
    for (method, path) in P.ENDPOINTS:
        op = doc["paths"][path][method.lower()]
        assert ("security" in op) == ((method, path) not in P.OPEN_ENDPOINTS)


def test_openapi_lists_every_error_status_with_the_error_body_and_typed_responses():
    doc = openapi.document()
    schemas = doc["components"]["schemas"]
    for (method, path), (_, _, response) in P.ENDPOINTS.items():
        responses = doc["paths"][path][method.lower()]["responses"]
        expected = {*P.COMMON_ERRORS, *P.ERRORS.get((method, path), {})} | \
            (set() if (method, path) in P.OPEN_ENDPOINTS else {401})
        assert {int(s) for s in responses if int(s) >= 400} == expected, (method, path)
        for status in expected:
            assert responses[str(status)]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
        if response in schemas:
            assert schemas[response]["properties"] and schemas[response]["additionalProperties"] is False
    # every $ref points at a schema
    import json
    import re

    refs = set(re.findall(r'"#/components/schemas/(\w+)"', json.dumps(doc)))
    assert refs <= set(schemas)
    status = schemas["Status"]["properties"]
    assert status["model"] == {"allOf": [{"$ref": "#/components/schemas/ModelInfo"}], "nullable": True}
    assert status["events"] == {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}
    assert "activation" not in schemas["Status"]["required"]
    assert schemas["Activation"]["properties"]["state"]["enum"] == list(P.ACTIVATION_STATES)


def test_json_schema_of_nested_dataclasses_optionals_lists_dicts_enums_and_literals():
    import enum
    from dataclasses import dataclass
    from typing import Literal, Optional

    class Colour(enum.Enum):
        RED = "red"
        BLUE = "blue"

    @dataclass
    class Leaf:
        n: int

    @dataclass
    class Tree:
        leaf: Leaf
        maybe: Optional[Leaf]
        leaves: list[Leaf]
        by_name: dict[str, float]
        colour: Colour
        side: Literal["left", "right"]
        note: str | None = None

    components: dict = {}
    assert openapi.json_schema(Tree, components) == {"$ref": "#/components/schemas/Tree"}
    props = components["Tree"]["properties"]
    assert components["Leaf"] == {"type": "object", "additionalProperties": False,
                                  "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert props["leaf"] == {"$ref": "#/components/schemas/Leaf"}
    assert props["maybe"] == {"allOf": [{"$ref": "#/components/schemas/Leaf"}], "nullable": True}
    assert props["leaves"] == {"type": "array", "items": {"$ref": "#/components/schemas/Leaf"}}
    assert props["by_name"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert props["colour"] == {"type": "string", "enum": ["red", "blue"]}
    assert props["side"] == {"type": "string", "enum": ["left", "right"]}
    assert props["note"] == {"type": "string", "nullable": True}
    assert components["Tree"]["required"] == ["leaf", "maybe", "leaves", "by_name", "colour", "side"]
    with pytest.raises(TypeError, match="no JSON Schema"):
        openapi.json_schema(complex, {})


@pytest.mark.parametrize("n_bytes, ok", [(32, True), (31, False), (33, False)])
def test_the_public_key_pattern_is_base64_of_32_bytes(n_bytes, ok):
    import base64
    import os
    import re

    for _ in range(50):
        key = base64.b64encode(os.urandom(n_bytes)).decode()
        assert bool(re.fullmatch(P.PUBLIC_KEY_B64, key)) == ok, key
    assert not re.fullmatch(P.PUBLIC_KEY_B64, "A" * 42 + "B=")   # 32 bytes, but not canonical base64
