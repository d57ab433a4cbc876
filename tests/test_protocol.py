"""The protocol module on its own: stream framing, message validation, the OpenAPI document."""
import io

import numpy as np
import pytest

from inspector import protocol as P


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
    frames = [(header(seq=i), rng.bytes(1000 + i), P.heat_to_wire(heat)) for i in range(3)]
    buf = io.BytesIO(b"".join(P.encode_frame(*f) for f in frames))
    for h, jpeg, wire in frames:
        got_h, got_jpeg, got_heat = P.read_frame(buf)
        assert (got_h, got_jpeg) == (h, jpeg) and np.array_equal(got_heat, wire)
    with pytest.raises(EOFError):
        P.read_frame(buf)
    back = P.heat_from_wire(frames[0][2], 640, 480)
    assert back.shape == (480, 640) and abs(back[230, 250] - 0.9) < 0.01 and back[50, 50] == 0.0


@pytest.mark.parametrize("damage, error", [
    (lambda b: b"XXXX" + b[4:], P.ProtocolError),                  # not our magic
    (lambda b: b[:30], EOFError),                                  # cut mid-frame
    (lambda b: b[:4] + (2**31).to_bytes(4, "big") + b[8:], P.ProtocolError),  # absurd header length
])
def test_broken_streams_are_refused(damage, error):
    raw = P.encode_frame(header(), b"jpeg", P.heat_to_wire(np.zeros((480, 640), np.float32)))
    with pytest.raises(error):
        P.read_frame(io.BytesIO(damage(raw)))


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
    doc = P.openapi()
    described = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    assert described == set(P.ENDPOINTS)
    for (method, path) in P.ENDPOINTS:
        op = doc["paths"][path][method.lower()]
        assert ("security" in op) == ((method, path) not in P.OPEN_ENDPOINTS)
