"""The live view: the camera frame (with the heat-map) scaled to fit, per-tile verdict boxes on top.

The view receives each :class:`~inspector.live.loop.LiveResult`, blends the heat-map in with its
own settings (:func:`~inspector.qt.bridge.compose`, on the GUI thread: see the bridge for why),
wraps the picture in a QImage once (keeping the numpy buffer alive) and paints it scaled with
its aspect ratio. Verdict boxes are vector graphics drawn at paint time, so moving the threshold
slider repaints instantly, even on a paused stream.
"""
from __future__ import annotations

import time

import numpy as np
from PySide6.QtCore import QPointF, QRect, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPainterPath, QPen, QRegion, QTransform
from PySide6.QtWidgets import QSizePolicy, QWidget

from inspector.qt import theme
from inspector.qt.bridge import RenderSettings, compose, to_qimage

TOAST_MS = 1800


def verdict(p: float, threshold: float, uncertain_low: float) -> str:
    """"crack" (≥ threshold), "uncertain" ([uncertain_low, threshold)) or "clean"."""
    if p >= threshold:
        return "crack"
    if p >= min(uncertain_low, threshold):
        return "uncertain"
    return "clean"


class LiveView(QWidget):
    """``show_result(live)`` per result; ``framePainted(LiveResult, t_painted)`` after a new frame
    reached the screen (``t_painted`` = ``time.perf_counter()``)."""

    framePainted = Signal(object, float)

    def __init__(self, parent: QWidget | None = None, *, uncertain_low: float = 0.40):
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.setMinimumSize(320, 240)
        self.setAttribute(Qt.WA_OpaquePaintEvent)
        self.setFocusPolicy(Qt.StrongFocus)
        self.settings = RenderSettings()
        self.threshold = 0.5
        self.uncertain_low = uncertain_low
        self.show_boxes = True
        self.stale = False          # the source is lost: the picture on screen is the last one it sent
        self.placeholder = "Waiting for the first frame…"
        self.live = None            # the LiveResult on screen
        self._pixels: np.ndarray | None = None   # keeps the QImage's buffer alive
        self._image: QImage | None = None
        self._unpainted = False
        self._regions: dict[str, QRegion] = {}
        self._regions_key = None
        self._generation = 0        # bumped per frame set: the cache key of the verdict regions
        self._toast: tuple[str, QColor] | None = None
        self._toast_verdict: str | None = None   # the toast is about frames showing this verdict
        self._toast_timer = QTimer(self, singleShot=True, interval=TOAST_MS, timeout=self._clear_toast)

    # ---------------------------------------------------------------- state

    def show_result(self, live) -> None:
        """Show a new result (a :class:`~inspector.live.loop.LiveResult`)."""
        self._set(live, compose(live, self.settings))

    def set_overlay(self, on: bool) -> None:
        self._set_settings(RenderSettings(bool(on), self.settings.opacity))

    def set_opacity(self, opacity: float) -> None:
        self._set_settings(RenderSettings(self.settings.overlay, float(opacity)))

    def set_threshold(self, threshold: float) -> None:
        self.threshold = float(threshold)
        self.update()

    def set_boxes(self, on: bool) -> None:
        self.show_boxes = bool(on)
        self.update()

    def set_stale(self, stale: bool) -> None:
        if stale != self.stale:
            self.stale = stale
            self.update()

    def toast(self, text: str, colour: QColor | str = theme.ACCENT, *, verdict: str | None = None) -> None:
        """A brief confirmation over the top of the view, for ``TOAST_MS``. With ``verdict``
        ("crack" or "uncertain": an automatic flag's reason) it is about the frames that show it:
        it goes as soon as a later frame is shown without a tile of that verdict, so "crack" is
        never written over a clean picture."""
        self._toast = (text, QColor(colour))
        self._toast_verdict = verdict
        self._toast_timer.start()
        self.update()

    def shows(self, live, wanted: str) -> bool:
        """Does ``live`` have a tile of verdict ``wanted`` at the view's threshold?"""
        return any(verdict(t.crack_prob, self.threshold, self.uncertain_low) == wanted for t in live.result.tiles)

    def clear(self, placeholder: str) -> None:
        self.live, self._pixels, self._image, self.placeholder = None, None, None, placeholder
        self.update()

    def image_rect(self) -> QRectF:
        """Where the frame is painted (aspect ratio kept, centred)."""
        if self._image is None:
            return QRectF()
        w, h = self._image.width(), self._image.height()
        scale = min(self.width() / w, self.height() / h)
        pw, ph = w * scale, h * scale
        return QRectF((self.width() - pw) / 2, (self.height() - ph) / 2, pw, ph)

    def _set_settings(self, settings: RenderSettings) -> None:
        if settings == self.settings:
            return
        self.settings = settings
        if self.live is not None:   # re-compose the frame on screen (a paused or slow stream too)
            self._set(self.live, compose(self.live, settings), fresh=False)

    def _set(self, live, pixels: np.ndarray, *, fresh: bool = True) -> None:
        self.live, self._pixels = live, np.ascontiguousarray(pixels)
        self._generation += 1
        self.stale = self.stale and not fresh
        self._image = to_qimage(self._pixels)
        self._unpainted = self._unpainted or fresh
        if fresh and self._toast_verdict is not None and not self.shows(live, self._toast_verdict):
            self._toast_timer.stop()
            self._toast = self._toast_verdict = None
        self.update()

    def _clear_toast(self) -> None:
        self._toast = self._toast_verdict = None
        self.update()

    # ---------------------------------------------------------------- painting

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(theme.VIEW_BG))
        if self._image is None:
            p.setPen(QColor(theme.TEXT_DIM))
            p.drawText(self.rect(), Qt.AlignCenter, self.placeholder)
        else:
            target = self.image_rect()
            p.setRenderHint(QPainter.SmoothPixmapTransform, target.width() < self._image.width() * 1.5)
            p.drawImage(target, self._image)
            if self.show_boxes and self.live is not None:
                self._paint_tiles(p, target)
            if self.stale:
                self._paint_stale(p, target)
        if self._toast is not None:
            self._paint_toast(p)
        p.end()
        if self._unpainted and self.live is not None:
            self._unpainted = False
            self.framePainted.emit(self.live, time.perf_counter())

    def verdict_regions(self) -> dict[str, QRegion]:
        """The union of the tiles of each verdict in frame pixels ("uncertain" excludes "crack"):
        tiles overlap, so outlining the union instead of every tile keeps the view readable."""
        key = (self._generation, self.threshold, self.uncertain_low)
        if self._regions_key != key:
            crack, uncertain = QRegion(), QRegion()
            for t in self.live.result.tiles:
                v = verdict(t.crack_prob, self.threshold, self.uncertain_low)
                if v != "clean":
                    x0, y0, x1, y1 = t.box
                    r = QRect(x0, y0, x1 - x0, y1 - y0)
                    if v == "crack":
                        crack = crack.united(r)
                    else:
                        uncertain = uncertain.united(r)
            self._regions = {"crack": crack, "uncertain": uncertain.subtracted(crack)}
            self._regions_key = key
        return self._regions

    def _paint_tiles(self, p: QPainter, target: QRectF) -> None:
        regions = self.verdict_regions()
        to_view = QTransform(target.width() / self._image.width(), 0, 0, target.height() / self._image.height(),
                             target.x(), target.y())
        p.save()
        p.setRenderHint(QPainter.Antialiasing, True)
        for name, colour, width, fill, dashed in (("uncertain", theme.UNCERTAIN, 1.5, 18, True),
                                                  ("crack", theme.CRACK, 2.0, 30, False)):
            region = regions[name]
            if region.isEmpty():
                continue
            path = QPainterPath()
            path.addRegion(region)
            path = to_view.map(path.simplified())
            c = QColor(colour)
            c.setAlpha(fill)
            p.fillPath(path, c)
            # a dark line under the colour keeps the outline readable on bright concrete
            p.strokePath(path, QPen(QColor(0, 0, 0, 140), width + 2.0))
            pen = QPen(colour, width)
            if dashed:
                pen.setStyle(Qt.DashLine)
            p.strokePath(path, pen)
        p.restore()
        crack = [t for t in self.live.result.tiles if t.crack_prob >= self.threshold]
        if crack:
            top = max(crack, key=lambda t: t.crack_prob)
            x0, y0, x1, y1 = top.box
            self._paint_peak_label(p, (to_view.mapRect(QRectF(x0, y0, x1 - x0, y1 - y0)), top.crack_prob))

    def _paint_peak_label(self, p: QPainter, rect_prob: tuple[QRectF, float]) -> None:
        r, prob = rect_prob
        text = f"crack {prob:.2f}"
        p.setFont(theme.mono_font(9, bold=True))
        fm = p.fontMetrics()
        box = QRectF(r.left() + 1, r.top() - fm.height() - 4, fm.horizontalAdvance(text) + 10, fm.height() + 4)
        if box.top() < 0:
            box.moveTop(r.top() + 1)
        p.fillRect(box, theme.CRACK)
        p.setPen(QColor("white"))
        p.drawText(box, Qt.AlignCenter, text)

    def _paint_stale(self, p: QPainter, target: QRectF) -> None:
        """A veil over a picture that is no longer live, so nobody inspects a frozen frame."""
        p.fillRect(target, QColor(10, 11, 13, 150))
        f = QFont(self.font())
        f.setPointSize(13)
        f.setBold(True)
        p.setFont(f)
        p.setPen(QColor(theme.BANNER["warning"][2]))
        p.drawText(target, Qt.AlignCenter, "NOT LIVE — last picture before the source was lost")

    def _paint_toast(self, p: QPainter) -> None:
        text, colour = self._toast
        f = QFont(self.font())
        f.setPointSize(12)
        f.setBold(True)
        p.setFont(f)
        fm = p.fontMetrics()
        w, h = fm.horizontalAdvance(text) + 56, fm.height() + 18
        box = QRectF((self.width() - w) / 2, 16, w, h)
        p.setRenderHint(QPainter.Antialiasing, True)
        p.setPen(QPen(colour, 1.5))
        p.setBrush(QColor(20, 22, 25, 225))
        p.drawRoundedRect(box, 6, 6)
        p.setPen(QColor(theme.TEXT))
        p.drawText(box.adjusted(20, 0, 0, 0), Qt.AlignCenter, text)
        p.setBrush(colour)
        p.setPen(Qt.NoPen)
        p.drawEllipse(QPointF(box.left() + 16, box.center().y()), 5, 5)
