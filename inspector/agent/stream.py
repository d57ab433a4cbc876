"""What the stream clients get: a result checked (:func:`check_result`), encoded **once**
(:func:`encode_result`: JPEG of the frame, heat-map via :func:`~inspector.link.framing.heat_to_wire`,
:func:`~inspector.link.framing.encode_frame`), and the newest encoded frame handed to every
client's newest-only slot (:class:`FrameBoard`). Each :class:`Subscription` (one per stream
client) only ever gets the newest published frame it has not had yet: a slow client skips
frames, it never builds a backlog, and a fast one costs no extra encoding.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable

import cv2
import numpy as np

from inspector.link import framing, protocol
from inspector.link.protocol import StreamHeader

JPEG_QUALITY = 80
PROB_TOLERANCE = 1e-3         # INT8 outputs may overshoot [0, 1] by rounding


def check_result(result: Any, height: int, width: int, n_labels: int, *, full: bool) -> str | None:
    """Why ``result`` (a FrameResult) is not a sane answer for an H×W frame, or None.

    ``full`` also checks every heat-map value (probation); otherwise only the cheap parts, so
    that nothing non-finite ever reaches the JSON header.
    """
    tiles = getattr(result, "tiles", None)
    if not tiles:
        return "no tiles in the result"
    for i, t in enumerate(tiles):
        p = np.asarray(t.probs, dtype=np.float64)
        if p.shape != (n_labels,):
            return f"tile {i}: probs of shape {p.shape}, expected ({n_labels},)"
        if not np.all(np.isfinite(p)) or p.min() < -PROB_TOLERANCE or p.max() > 1 + PROB_TOLERANCE:
            return f"tile {i}: probabilities {p.tolist()} are not finite values in [0, 1]"
        if not (math.isfinite(t.crack_prob) and -PROB_TOLERANCE <= t.crack_prob <= 1 + PROB_TOLERANCE):
            return f"tile {i}: crack probability {t.crack_prob!r} not in [0, 1]"
    pmax = result.crack_prob_max
    if not (isinstance(pmax, float) and math.isfinite(pmax) and -PROB_TOLERANCE <= pmax <= 1 + PROB_TOLERANCE):
        return f"crack_prob_max {pmax!r} not in [0, 1]"
    heat = result.heatmap
    if not isinstance(heat, np.ndarray) or heat.shape != (height, width):
        return f"heat-map of shape {getattr(heat, 'shape', None)}, expected {(height, width)}"
    if full:
        if not np.all(np.isfinite(heat)):
            return "heat-map has non-finite values"
        lo, hi = float(heat.min()), float(heat.max())
        if lo < -PROB_TOLERANCE or hi > 1 + PROB_TOLERANCE:
            return f"heat-map values in [{lo:.3g}, {hi:.3g}], expected [0, 1]"
    return None

def encode_result(frame: Any, result: Any, model_id: str, t_start: float, next_seq: Callable[[], int],
                  jpeg_quality: int = JPEG_QUALITY) -> tuple[int, bytes]:
    """(seq, bytes) of one stream frame: ``frame`` (a grabbed Frame) as JPEG, ``result``'s
    heat-map and header; ``t_start``: when inference began (perf_counter); ``next_seq()`` numbers it."""
    t_enc = time.perf_counter()
    bgr = cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR)
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    heat = framing.heat_to_wire(result.heatmap)
    now_perf, now_wall = time.perf_counter(), time.time()
    timings = {"capture_to_start": (t_start - frame.t_capture) * 1e3}
    timings.update({k: float(v) for k, v in result.timings.items()})
    timings["encode"] = (now_perf - t_enc) * 1e3
    seq = next_seq()
    height, width = frame.rgb.shape[:2]
    header = StreamHeader(
        seq=seq, frame_seq=int(frame.seq), t_capture=now_wall - (now_perf - frame.t_capture), t_sent=now_wall,
        width=int(width), height=int(height), heat_scale=protocol.HEAT_SCALE,
        tiles=[{"box": [int(v) for v in t.box], "crack_prob": float(t.crack_prob), "fresh": bool(t.fresh)}
               for t in result.tiles],
        crack_prob_max=float(result.crack_prob_max), model_id=model_id,
        timings_ms={k: round(v, 3) for k, v in timings.items()})
    return seq, framing.encode_frame(header, jpeg.tobytes(), heat)


class FrameBoard:
    """The newest encoded frame ``(seq, bytes)`` and the subscriptions waiting for it.

    ``stopping``: while set, a new subscription is closed at once (checked under the board's
    lock, so one made while the runtime stops cannot miss :meth:`close_all`). Thread-safe."""

    def __init__(self, stopping: threading.Event):
        self._stopping = stopping
        self._cond = threading.Condition()       # _latest, _subs (shared with Subscription)
        self._latest: tuple[int, bytes] | None = None
        self._subs: set[Subscription] = set()

    def subscribe(self) -> "Subscription":
        sub = Subscription(self)
        with self._cond:
            if self._stopping.is_set():
                sub.closed = True
            else:
                self._subs.add(sub)
        return sub

    def publish(self, item: tuple[int, bytes]) -> None:
        with self._cond:
            self._latest = item
            self._cond.notify_all()

    def close_all(self) -> None:
        """Every subscription returns None from now on."""
        with self._cond:
            for sub in list(self._subs):
                sub.closed = True
            self._subs.clear()
            self._cond.notify_all()

    @property
    def clients(self) -> int:
        with self._cond:
            return len(self._subs)


class Subscription:
    """One stream client's view: :meth:`next` returns the newest frame it has not had yet."""

    def __init__(self, board: FrameBoard):
        self._board = board
        self.seq = 0              # seq of the last frame handed out
        self.closed = False

    def next(self, after_seq: int | None = None, timeout: float | None = None) -> bytes | None:
        """The newest encoded frame with seq > ``after_seq`` (default: the last one this
        subscription returned), waiting up to ``timeout`` s; None on time-out or when closed."""
        after = self.seq if after_seq is None else after_seq
        cond = self._board._cond

        def ready() -> bool:
            latest = self._board._latest
            return self.closed or (latest is not None and latest[0] > after)

        with cond:
            cond.wait_for(ready, timeout)
            if self.closed:
                return None
            latest = self._board._latest
            if latest is None or latest[0] <= after:
                return None
            self.seq = latest[0]
            return latest[1]

    def close(self) -> None:
        with self._board._cond:
            if not self.closed:
                self.closed = True
                self._board._subs.discard(self)
                self._board._cond.notify_all()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
