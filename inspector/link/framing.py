"""The result stream's bytes: one frame of ``GET /api/v1/stream`` encoded and read back, and the
heat-map's wire form (uint8 at 1/``HEAT_SCALE`` of the frame per side).

The layout (magic, three lengths, header JSON, JPEG, heat-map) and its limits are defined in
:mod:`inspector.link.protocol`'s module doc and constants; this module only implements them.
The agent encodes (:func:`encode_frame`, :func:`heat_to_wire`), the app's client reads
(:func:`read_frame`, :func:`heat_from_wire`). numpy + the standard library (OpenCV for the
heat-map resize, imported where used: the agent runs on a Jetson).
"""
from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np

from inspector.link.protocol import (HEAT_SCALE, MAX_STREAM_HEADER, MAX_STREAM_PART, STREAM_MAGIC, ProtocolError,
                                     StreamHeader)


def encode_frame(header: StreamHeader, jpeg: bytes, heat: np.ndarray) -> bytes:
    """One stream frame (layout: :mod:`inspector.link.protocol`). ``heat``: uint8 (H/s) × (W/s)."""
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
