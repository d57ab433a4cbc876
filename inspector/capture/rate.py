"""Events per second over a sliding time window: the capture rate of a source, the rate an
agent publishes results at, the frames the app paints. Not thread-safe: the owner serialises
``add`` and ``rate`` (each owner already holds a lock around its own state)."""
from __future__ import annotations

from collections import deque


class RateWindow:
    """``add(t)`` per event (``time.perf_counter()``), ``rate(now)``: events per second over the
    last ``window_s`` seconds, measured between the first and the last event in the window (0
    with fewer than two)."""

    def __init__(self, window_s: float):
        if not window_s > 0:
            raise ValueError(f"window_s must be positive, got {window_s!r}")
        self.window_s = float(window_s)
        self._times: deque[float] = deque()

    def add(self, t: float) -> None:
        self._times.append(t)
        self._drop_before(t - self.window_s)

    def rate(self, now: float) -> float:
        self._drop_before(now - self.window_s)
        times = self._times
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def _drop_before(self, t: float) -> None:
        while self._times and self._times[0] < t:
            self._times.popleft()
