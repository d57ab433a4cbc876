"""LiveInspector callbacks (worker threads) → Qt signals (delivered on the GUI thread).

Results are **coalesced**: the bridge keeps only the newest result and has at most one
``resultReady`` in the GUI's event queue, so a busy GUI never works through stale frames
(newest frame wins, all the way to the screen).

The heat-map overlay is blended on the GUI thread, just before painting (:func:`compose`,
about 2.5 ms a frame), not on the inference worker. On the worker those milliseconds lengthen
every cycle. A cycle that runs past the 33 ms frame period makes the next frame wait, and that
wait is most of the latency tail on 2 cores. Measured with the real window, 4 × 120 s runs
alternated: the worker's wait p95 went from 20–27 ms to 4–15 ms, and capture→paint p95 from
58 / 67 ms to 43–57 ms. Flag thumbnails are still made here, on the calling thread.
"""
from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass

import cv2
import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from inspector.edge.engine import overlay
from inspector.live.loop import LiveResult
from inspector.qt.jobs import JobRunner

log = logging.getLogger(__name__)

THUMB_HEIGHT = 72


@dataclass(frozen=True)
class RenderSettings:
    """How a frame is composed before painting: the heat-map overlay on/off and its opacity."""

    overlay: bool = True
    opacity: float = 0.45


# What a widget's backing store holds on little-endian machines (x86, the Jetson's ARM):
# 0xffRRGGBB words, i.e. bytes B, G, R, 255. A picture handed to drawImage in any other format
# is converted first, on every paint, and Qt does large conversions on its thread pool: on a
# 2-core laptop that is two more threads competing with inference for the cores.
_DISPLAY_NATIVE = sys.byteorder == "little"


def compose(live: LiveResult, settings: RenderSettings) -> np.ndarray:
    """The picture to paint: the frame, with the heat-map blended in if enabled, as an
    H×W×4 BGRA array (32-bit, the backing store's own format: see :func:`to_qimage`)."""
    rgb = live.frame.rgb
    if settings.overlay and settings.opacity > 0.0:
        rgb = overlay(rgb, live.result.heatmap, alpha=settings.opacity)
    if not _DISPLAY_NATIVE:
        return np.ascontiguousarray(rgb)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)


def to_qimage(pixels: np.ndarray) -> QImage:
    """A QImage *viewing* ``pixels`` (no copy; the caller keeps the array alive): H×W×4 BGRA
    as ``Format_RGB32``, H×W×3 RGB as ``Format_RGB888``."""
    pixels = np.ascontiguousarray(pixels)
    h, w = pixels.shape[:2]
    fmt = QImage.Format_RGB32 if pixels.ndim == 3 and pixels.shape[2] == 4 else QImage.Format_RGB888
    return QImage(pixels.data, w, h, pixels.strides[0], fmt)


def thumbnail(rgb: np.ndarray, height: int = THUMB_HEIGHT) -> QImage:
    """A small, self-owned QImage of ``rgb`` (safe to hand across threads)."""
    h, w = rgb.shape[:2]
    width = max(1, round(w * height / h))
    small = np.ascontiguousarray(cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA))
    return to_qimage(small).copy()


class LiveBridge(QObject):
    """Pass ``on_result`` … ``on_error`` of this object to :class:`~inspector.live.loop.LiveInspector`.

    ``resultReady`` → call :meth:`take` for the newest :class:`~inspector.live.loop.LiveResult`;
    ``statusChanged(SourceStatus)``; ``flagStored(FlagRecord, QImage | None)`` with a thumbnail;
    ``errorRaised(LiveError)``; ``historyLoaded(list[(FlagRecord, QImage | None)], count)``.
    """

    resultReady = Signal()
    statusChanged = Signal(object)
    flagStored = Signal(object, object)
    errorRaised = Signal(object)
    historyLoaded = Signal(object, int)

    def __init__(self, store, parent: QObject | None = None):
        super().__init__(parent)
        self.store = store
        self._lock = threading.Lock()
        self._pending: LiveResult | None = None
        self._queued = False
        self.dropped = 0           # results replaced before the GUI took them
        self.jobs = JobRunner(self)  # the history read: detached, outcome dropped once the bridge is gone

    # ---------------------------------------------------------------- worker-thread side

    def on_result(self, live: LiveResult) -> None:
        with self._lock:
            if self._pending is not None:
                self.dropped += 1
            self._pending = live
            if self._queued:
                return
            self._queued = True
        self.resultReady.emit()

    def on_status(self, status) -> None:
        self.statusChanged.emit(status)

    def on_flag_stored(self, record) -> None:
        self.flagStored.emit(record, self._thumbnail(record))

    def on_error(self, error) -> None:
        self.errorRaised.emit(error)

    def load_history(self, limit: int) -> None:
        """Read the newest ``limit`` flags and the count on a helper thread → ``historyLoaded``."""
        def read():
            return [(r, self._thumbnail(r)) for r in self.store.list(limit=limit)], self.store.count()

        def failed(exc):  # an unreadable store is reported, not fatal
            log.warning("flag history: %s", exc)
            self.errorRaised.emit(exc)

        self.jobs.run(read, on_success=lambda loaded: self.historyLoaded.emit(*loaded), on_failure=failed,
                      detached=True)

    def _thumbnail(self, record) -> QImage | None:
        try:
            return thumbnail(self.store.load_frame(record))
        except Exception as exc:  # noqa: BLE001 - a missing image must not hide the flag
            log.warning("flag %s: no thumbnail (%s)", getattr(record, "id", "?"), exc)
            return None

    # ---------------------------------------------------------------- GUI-thread side

    def take(self) -> LiveResult | None:
        """The newest result (None if already taken)."""
        with self._lock:
            item, self._pending, self._queued = self._pending, None, False
        return item
