"""Checks of what callers hand the flag store (ids, probabilities, texts, the frame, its heat-map
and tiles): each raises ValueError naming the argument."""
from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence

import numpy as np


def is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def check_prob(name: str, v) -> float:
    if not is_number(v) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
    return float(v)


def check_id(flag_id) -> int:
    if not isinstance(flag_id, (int, np.integer)) or isinstance(flag_id, bool):
        raise ValueError(f"a flag id is an integer, got {flag_id!r}")
    return int(flag_id)


def check_count(name: str, v) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    return int(v)


def check_choice(name: str, v, choices: tuple[str, ...]) -> None:
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {v!r}")


def check_text(name: str, v, *, required: bool = False) -> str | None:
    """A string; empty or blank means "none" (and is refused where ``required``)."""
    if v is not None and not isinstance(v, str):
        raise ValueError(f"{name} must be text or None, got {type(v).__name__}")
    if v is None or not v.strip():
        if required:
            raise ValueError(f"{name} must be a non-empty string, got {v!r}")
        return None
    return v


def utc(created) -> _dt.datetime:
    if created is None:
        return _dt.datetime.now(_dt.timezone.utc)
    if isinstance(created, str):
        try:
            created = _dt.datetime.fromisoformat(created)
        except ValueError:
            raise ValueError(f"created must be an ISO-8601 time with a UTC offset, got {created!r}") from None
    if not isinstance(created, _dt.datetime) or created.tzinfo is None:
        raise ValueError(f"created must be a timezone-aware datetime or ISO-8601 string, got {created!r}")
    return created.astimezone(_dt.timezone.utc)


# A heat-map a float-rounding hair above 1 (a caller's own normalisation) is clipped, not refused.
HEAT_TOLERANCE = 1e-6


def check_frame(frame) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame_rgb must be a numpy array (H×W×3 uint8 RGB), got {type(frame).__name__}")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
        raise ValueError(f"frame_rgb must be H×W×3 uint8 RGB, got shape {frame.shape} dtype {frame.dtype}")
    return np.ascontiguousarray(frame)


def heat_to_uint8(heatmap, shape: tuple[int, int]) -> np.ndarray:
    if not isinstance(heatmap, np.ndarray) or not np.issubdtype(heatmap.dtype, np.floating):
        raise ValueError(f"heatmap must be a float numpy array H×W in [0, 1], got "
                         f"{getattr(heatmap, 'dtype', type(heatmap).__name__)}")
    if heatmap.shape != shape:
        raise ValueError(f"heatmap shape {heatmap.shape} does not match the frame's {shape}")
    if not np.isfinite(heatmap).all():
        raise ValueError("heatmap contains NaN or infinity")
    low, high = float(heatmap.min()), float(heatmap.max())
    if low < 0.0 or high > 1.0 + HEAT_TOLERANCE:
        raise ValueError(f"heatmap values must be in [0, 1], got [{low:g}, {high:g}]")
    return np.rint(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8)


def check_frame_tiles(tiles, width: int, height: int) -> list[dict]:
    """Tiles as plain dicts; a tile is a mapping or an object (the engine's TileResult) with
    ``box`` (x0, y0, x1, y1 inside the frame, x1/y1 exclusive) and ``crack_prob``."""
    if isinstance(tiles, (str, bytes)) or not isinstance(tiles, Sequence):
        raise ValueError(f"tiles must be a sequence of tiles, got {type(tiles).__name__}")
    out = []
    for i, tile in enumerate(tiles):
        get = tile.get if isinstance(tile, Mapping) else lambda key, t=tile: getattr(t, key, None)
        box, prob = get("box"), get("crack_prob")
        if (not isinstance(box, (Sequence, np.ndarray)) or len(box) != 4
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in box)):
            raise ValueError(f"tiles[{i}]: box must be 4 integers [x0, y0, x1, y1], got {box!r}")
        x0, y0, x1, y1 = (int(v) for v in box)
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(f"tiles[{i}]: box {[x0, y0, x1, y1]} is not inside the {width}×{height} frame")
        out.append({"box": [x0, y0, x1, y1], "crack_prob": check_prob(f"tiles[{i}].crack_prob", prob)})
    return out
