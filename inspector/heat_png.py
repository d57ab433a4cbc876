"""The flag store's heat-map file: an 8-bit PNG whose pixel values are the heat (value · 255)
and whose **palette** is OpenCV's TURBO colour map, the live view's colours.

The data is the same as the grey PNG of earlier stores (an index i means heat i/255, lossless),
but an image viewer, a file manager's thumbnail or an exported folder shows the heat in colour,
cold blue to hot red, instead of a grey picture. Reading accepts both: a palette PNG's indices
and a grey PNG's values are the heat. OpenCV cannot write a palette PNG and expands one to BGR
on reading, so both directions go through Pillow (a base dependency).
"""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

# 256 RGB triples: the colour of heat i/255, as the live view's overlay paints it.
TURBO_PALETTE: bytes = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None],
                                         cv2.COLORMAP_TURBO)[:, 0, ::-1].tobytes()


class HeatPngError(ValueError):
    """The bytes are not a heat-map PNG (8-bit palette or grey)."""


def encode_heat_png(heat: np.ndarray) -> bytes:
    """uint8 H×W heat (value · 255) → a palette PNG coloured with TURBO."""
    if not isinstance(heat, np.ndarray) or heat.dtype != np.uint8 or heat.ndim != 2:
        raise HeatPngError(f"heat must be uint8 H×W, got {getattr(heat, 'dtype', type(heat).__name__)} "
                           f"{getattr(heat, 'shape', '')}")
    img = Image.frombytes("P", (heat.shape[1], heat.shape[0]), np.ascontiguousarray(heat).tobytes())
    img.putpalette(TURBO_PALETTE)
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=1)   # OpenCV's default too: fast; a heat-map is smooth anyway
    return out.getvalue()


def decode_heat_png(data: bytes) -> np.ndarray:
    """A heat-map PNG (palette, or the grey of earlier stores) → uint8 H×W heat (value · 255)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "PNG" or img.mode not in ("P", "L"):
                raise HeatPngError(f"not an 8-bit palette or grey PNG ({img.format} {img.mode})")
            return np.array(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise HeatPngError(f"not a PNG Pillow can read: {err}") from err
