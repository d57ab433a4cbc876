"""The flag store's heat-map file: an 8-bit PNG whose pixel values are the heat (value · 255)
and whose **palette** is OpenCV's TURBO colour map, the live view's colours.

The data is the same as the grey PNG of earlier stores (an index i means heat i/255, lossless),
but an image viewer, a file manager's thumbnail or an exported folder shows the heat in colour,
cold blue to hot red, instead of a grey picture. Reading accepts both.

How: an 8-bit grey PNG and an 8-bit palette PNG store their pixels identically (one byte per
pixel, the same row filters and zlib stream); they differ only in the header's colour type
(0 → 3) and a ``PLTE`` chunk. So the file is encoded by OpenCV as grey and the two are patched
in, and read back by undoing that before OpenCV decodes it. Pillow writes palette PNGs without
row filters through Python's zlib: 10-20 times slower here, on the flag writer's thread.
"""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
from inspector.errors import InspectorError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GREY, PALETTE = 0, 3        # IHDR colour types
# 256 RGB triples: the colour of heat i/255, as the live view's overlay paints it.
TURBO_PALETTE: bytes = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None],
                                         cv2.COLORMAP_TURBO)[:, 0, ::-1].tobytes()


class HeatPngError(InspectorError, ValueError):
    """The bytes are not a heat-map PNG (8-bit palette or grey)."""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    if not png.startswith(PNG_SIGNATURE):
        raise HeatPngError("not a PNG file")
    out, i = [], len(PNG_SIGNATURE)
    while i + 12 <= len(png):
        (n,) = struct.unpack(">I", png[i:i + 4])
        kind, data = png[i + 4:i + 8], png[i + 8:i + 8 + n]
        if len(data) != n:
            raise HeatPngError("truncated PNG chunk")
        out.append((kind, data))
        i += 12 + n
    if not out or out[0][0] != b"IHDR" or len(out[0][1]) != 13:
        raise HeatPngError("PNG without a valid IHDR header")
    return out


def _with_colour_type(ihdr: bytes, colour_type: int) -> bytes:
    return ihdr[:9] + bytes([colour_type]) + ihdr[10:]


def encode_heat_png(heat: np.ndarray) -> bytes:
    """uint8 H×W heat (value · 255) → a palette PNG coloured with TURBO."""
    if not isinstance(heat, np.ndarray) or heat.dtype != np.uint8 or heat.ndim != 2:
        raise HeatPngError(f"heat must be uint8 H×W, got {getattr(heat, 'dtype', type(heat).__name__)} "
                           f"{getattr(heat, 'shape', '')}")
    ok, buf = cv2.imencode(".png", heat)
    if not ok:
        raise HeatPngError(f"OpenCV could not encode a {heat.shape} heat-map as PNG")
    chunks = _chunks(buf.tobytes())
    ihdr = chunks[0][1]
    if ihdr[8] != 8 or ihdr[9] != GREY:
        raise HeatPngError(f"OpenCV wrote bit depth {ihdr[8]}, colour type {ihdr[9]}; expected 8-bit grey")
    chunks[0] = (b"IHDR", _with_colour_type(ihdr, PALETTE))
    chunks.insert(1, (b"PLTE", TURBO_PALETTE))
    return PNG_SIGNATURE + b"".join(_chunk(kind, data) for kind, data in chunks)


def decode_heat_png(data: bytes) -> np.ndarray:
    """A heat-map PNG (TURBO palette, or the grey of earlier stores) → uint8 H×W heat (value · 255)."""
    chunks = _chunks(bytes(data))
    ihdr = chunks[0][1]
    if ihdr[8] != 8 or ihdr[9] not in (GREY, PALETTE):
        raise HeatPngError(f"a heat-map PNG is 8-bit grey or palette, not bit depth {ihdr[8]}, colour type {ihdr[9]}")
    if ihdr[9] == PALETTE:   # the palette's indices are the values: read them as grey
        chunks = [(b"IHDR", _with_colour_type(ihdr, GREY))] + [c for c in chunks[1:] if c[0] not in (b"PLTE", b"tRNS")]
        data = PNG_SIGNATURE + b"".join(_chunk(kind, body) for kind, body in chunks)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.ndim != 2 or img.dtype != np.uint8:
        raise HeatPngError("OpenCV could not decode the heat-map PNG")
    return img
