"""The large view of the flag under review: the frame, its heat-map, and every tile's verdict.

Each tile of the flag is outlined with its **effective** label (the label a person gave it, else
the student's verdict at the threshold): crack solid red, clean dim. On a reviewed frame a tile
nobody labelled (unknown: never exported as a label) is drawn dotted and its chip says ``?``. A chip in its corner gives the
student's crack probability ``S`` and the teacher ensemble's ``T`` ("–" until the teachers
scored the flag); a violet chip edge marks a tile where the two differ by at least
:data:`~inspector.store.query.DISAGREEMENT_COUNTED`, a pencil a tile the inspector relabelled.

A click on a tile asks to toggle it (``tileClicked(i)``). The tile cursor (dashed white) moves
with the arrow keys while this view has the focus (it claims the arrows before the workspace's
previous/next shortcuts do); ``T`` toggles the tile under it (a workspace key).

The picture arrives separately from the record (:meth:`set_frame`, decoded on a job thread);
until then a cached thumbnail is shown enlarged (:meth:`set_preview`), and a flag whose frame
cannot be read shows "image missing" with its tiles, still reviewable.
"""
from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
from PySide6.QtCore import QEvent, QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from inspector.edge.engine import overlay
from inspector.store.query import DISAGREEMENT_COUNTED
from inspector.store.schema import StoreError
from inspector.qt import theme
from inspector.qt.bridge import RenderSettings, to_qimage
from inspector.qt.jobs import JobRunner
from inspector.qt.review.grid import DISAGREE

log = logging.getLogger(__name__)

ARROWS = {Qt.Key_Left: (-1, 0), Qt.Key_Right: (1, 0), Qt.Key_Up: (0, -1), Qt.Key_Down: (0, 1)}
CHIP_MIN_WIDTH = 58       # px on screen: narrower tiles get no probability chip
FRAME_CACHE = 6           # full frames kept (current, the prefetched next one, a few back)


def load_frame(store, rec) -> tuple[np.ndarray, np.ndarray]:
    """(RGB frame, heat-map) of ``rec`` (a job thread); a missing heat-map is all zeros."""
    rgb = store.load_frame(rec)
    try:
        heat = store.load_heatmap(rec)
    except StoreError:
        heat = np.zeros(rgb.shape[:2], np.float32)
    return rgb, heat


class FrameLoader(QObject):
    """Full frames for the large view, decoded on ``runner`` and kept in a small LRU.

    ``load(rec)``: the frame wanted now; ``loaded(id, (rgb, heat))`` or ``failed(id, reason)``
    only for the newest one asked for (a frame that arrives after the inspector moved on is
    cached, not shown). ``prefetch(rec)``: decode quietly, after any frame wanted now.
    """

    loaded = Signal(int, object)
    failed = Signal(int, str)

    def __init__(self, store, runner: JobRunner, parent: QObject | None = None):
        super().__init__(parent)
        self.store, self.runner = store, runner
        self._cache: OrderedDict[int, tuple] = OrderedDict()
        self._in_flight: set[int] = set()
        self._wanted: int | None = None

    def cached(self, flag_id: int):
        return self._cache.get(flag_id)

    def load(self, rec) -> None:
        self._wanted = rec.id
        if rec.id in self._cache:
            self._cache.move_to_end(rec.id)
            self.loaded.emit(rec.id, self._cache[rec.id])
        elif rec.id not in self._in_flight:
            self._start(rec, priority=1)

    def prefetch(self, rec) -> None:
        if rec is not None and rec.id not in self._cache and rec.id not in self._in_flight:
            self._start(rec, priority=0)

    def _start(self, rec, priority: int) -> None:
        self._in_flight.add(rec.id)
        self.runner.run(load_frame, self.store, rec, priority=priority,
                        on_success=lambda value, i=rec.id: self._done(i, value),
                        on_failure=lambda exc, i=rec.id: self._fail(i, exc))

    def _done(self, flag_id: int, value) -> None:
        self._in_flight.discard(flag_id)
        self._cache[flag_id] = value
        while len(self._cache) > FRAME_CACHE:
            self._cache.popitem(last=False)
        if flag_id == self._wanted:
            self.loaded.emit(flag_id, value)

    def _fail(self, flag_id: int, exc: Exception) -> None:
        self._in_flight.discard(flag_id)
        if not isinstance(exc, StoreError):
            log.warning("review: frame of flag %d: %s: %s", flag_id, type(exc).__name__, exc)
        if flag_id == self._wanted:
            self.failed.emit(flag_id, str(exc))


class ReviewFrameView(QWidget):
    """``show_record(rec)``, then ``set_frame(rgb, heat)`` / ``set_preview`` / ``set_missing``."""

    tileClicked = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.setMinimumSize(320, 240)
        self.setFocusPolicy(Qt.StrongFocus)
        self.setAttribute(Qt.WA_OpaquePaintEvent)
        self.record = None
        self.threshold = 0.5
        self.settings = RenderSettings(False, 0.45)
        self.cursor = 0
        self.picture = "empty"        # "empty" | "loading" | "preview" | "frame" | "missing"
        self.placeholder = "No flag selected"
        self._frame: tuple[np.ndarray, np.ndarray] | None = None   # (rgb, heat) shown
        self._pixels: np.ndarray | None = None                      # keeps the QImage's buffer alive
        self._image: QImage | None = None

    # ---------------------------------------------------------------- state

    def show_record(self, rec, *, same_frame: bool = False) -> None:
        """Show ``rec``'s tiles and metadata-only state; keep the picture if it is the same frame."""
        self.record = rec
        if rec is None:
            self._frame = self._image = self._pixels = None
            self.picture, self.placeholder = "empty", "No flag selected — the filter matches nothing"
        elif not same_frame:
            self._frame = self._image = self._pixels = None
            self.picture, self.placeholder = "loading", "Loading…"
            self.cursor = min(self.cursor, max(0, len(rec.tiles) - 1))
        self.update()

    def set_frame(self, rgb: np.ndarray, heat: np.ndarray, *, preview: bool = False) -> None:
        self._frame = (rgb, heat)
        self.picture = "preview" if preview else "frame"
        self._compose()

    def set_preview(self, rgb: np.ndarray, heat: np.ndarray) -> None:
        """A decoded thumbnail, enlarged, while the full frame loads."""
        self.set_frame(rgb, heat, preview=True)

    def set_missing(self, reason: str = "") -> None:
        self._frame = self._image = self._pixels = None
        self.picture = "missing"
        self.placeholder = "Image missing — review from the metadata and tiles"
        self.setToolTip(reason)
        self.update()

    def set_settings(self, settings: RenderSettings) -> None:
        if settings != self.settings:
            self.settings = settings
            self._compose()

    def set_threshold(self, threshold: float) -> None:
        self.threshold = float(threshold)
        self.update()

    def move_cursor(self, dx: int, dy: int) -> None:
        """Move the tile cursor to the nearest tile in that direction (stays at an edge)."""
        rec = self.record
        if rec is None or not rec.tiles:
            return
        centres = [((t["box"][0] + t["box"][2]) / 2, (t["box"][1] + t["box"][3]) / 2) for t in rec.tiles]
        cx, cy = centres[min(self.cursor, len(centres) - 1)]
        best, best_score = self.cursor, None
        for i, (x, y) in enumerate(centres):
            along = (x - cx) * dx + (y - cy) * dy
            if along <= 0.5:
                continue
            score = along + 3 * abs((x - cx) * dy + (y - cy) * dx)
            if best_score is None or score < best_score:
                best, best_score = i, score
        self.cursor = best
        self.update()

    def image_rect(self) -> QRectF:
        """Where the frame is painted (the flag's own size, aspect kept, centred)."""
        rec = self.record
        if rec is None:
            return QRectF()
        scale = min(self.width() / rec.width, self.height() / rec.height)
        w, h = rec.width * scale, rec.height * scale
        return QRectF((self.width() - w) / 2, (self.height() - h) / 2, w, h)

    def tile_rect(self, i: int) -> QRectF:
        r, rec = self.image_rect(), self.record
        s = r.width() / rec.width
        x0, y0, x1, y1 = rec.tiles[i]["box"]
        return QRectF(r.x() + x0 * s, r.y() + y0 * s, (x1 - x0) * s, (y1 - y0) * s)

    def tile_at(self, pos: QPointF) -> int | None:
        """The tile under ``pos`` (overlapping tiles: the one whose centre is nearest)."""
        if self.record is None:
            return None
        hits = [(QPointF(self.tile_rect(i).center() - pos).manhattanLength(), i)
                for i in range(len(self.record.tiles)) if self.tile_rect(i).contains(pos)]
        return min(hits)[1] if hits else None

    def _compose(self) -> None:
        if self._frame is None:
            self.update()
            return
        rgb, heat = self._frame
        if self.settings.overlay and self.settings.opacity > 0:
            rgb = overlay(rgb, heat, alpha=self.settings.opacity)
        self._pixels = np.ascontiguousarray(rgb)
        self._image = to_qimage(self._pixels)
        self.update()

    # ---------------------------------------------------------------- input

    def event(self, e) -> bool:
        # the arrows move the tile cursor while this view has the focus, not to the next flag
        if e.type() == QEvent.ShortcutOverride and e.key() in ARROWS and not e.modifiers():
            e.accept()
            return True
        return super().event(e)

    def keyPressEvent(self, e) -> None:  # noqa: N802 - Qt API
        if e.key() in ARROWS and not e.modifiers():
            self.move_cursor(*ARROWS[e.key()])
        else:
            super().keyPressEvent(e)

    def mousePressEvent(self, e) -> None:  # noqa: N802 - Qt API
        self.setFocus(Qt.MouseFocusReason)
        if e.button() == Qt.LeftButton:
            tile = self.tile_at(e.position())
            if tile is not None:
                self.cursor = tile
                self.tileClicked.emit(tile)
                self.update()

    # ---------------------------------------------------------------- painting

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(theme.VIEW_BG))
        rec = self.record
        if rec is None:
            p.setPen(QColor(theme.TEXT_DIM))
            p.drawText(self.rect(), Qt.AlignCenter, self.placeholder)
            p.end()
            return
        target = self.image_rect()
        if self._image is not None:
            p.setRenderHint(QPainter.SmoothPixmapTransform, True)
            p.drawImage(target, self._image)
        else:
            p.fillRect(target, QColor("#1a1c20"))
            p.setPen(QColor(theme.TEXT_DIM))
            f = QFont(self.font())
            f.setPointSize(12)
            p.setFont(f)
            p.drawText(target, Qt.AlignCenter, self.placeholder)
        self._paint_tiles(p)
        p.end()

    def _paint_tiles(self, p: QPainter) -> None:
        rec = self.record
        labels = rec.effective_tile_labels(self.threshold)
        model = rec.model_tile_labels(self.threshold)
        p.setRenderHint(QPainter.Antialiasing, True)
        unknown = [rec.reviewed and (rec.tile_labels is None or rec.tile_labels[i] is None)
                   for i in range(len(rec.tiles))]
        for i in sorted(range(len(rec.tiles)), key=lambda k: labels[k] == "crack"):  # crack outlines on top
            r = self.tile_rect(i)
            if unknown[i]:
                p.setBrush(Qt.NoBrush)
                p.setPen(QPen(QColor(theme.CRACK) if labels[i] == "crack" else QColor(255, 255, 255, 120), 1.5,
                              Qt.DotLine))   # the student's verdict, not a label
                p.drawRect(r.adjusted(2.5, 2.5, -2.5, -2.5))
            elif labels[i] == "crack":
                fill = QColor(theme.CRACK)
                fill.setAlpha(16 if self.settings.overlay else 34)   # lighter over the heat colours
                p.fillRect(r, fill)
                p.setBrush(Qt.NoBrush)
                p.setPen(QPen(QColor(0, 0, 0, 150), 4.5))
                p.drawRect(r.adjusted(1.5, 1.5, -1.5, -1.5))
                p.setPen(QPen(theme.CRACK, 2.5))
                p.drawRect(r.adjusted(1.5, 1.5, -1.5, -1.5))
            else:
                p.setBrush(Qt.NoBrush)
                p.setPen(QPen(QColor(255, 255, 255, 55), 1))
                p.drawRect(r.adjusted(0.5, 0.5, -0.5, -0.5))
        for i in range(len(rec.tiles)):
            self._paint_chip(p, i, edited=rec.tile_source(i) == "marked" and labels[i] != model[i],
                             unknown=unknown[i])
        if rec.tiles:
            r = self.tile_rect(min(self.cursor, len(rec.tiles) - 1)).adjusted(5, 5, -5, -5)
            pen = QPen(QColor(255, 255, 255, 235 if self.hasFocus() else 150), 2 if self.hasFocus() else 1.3,
                       Qt.DashLine)
            p.setPen(pen)
            p.setBrush(Qt.NoBrush)
            p.drawRect(r)

    def _paint_chip(self, p: QPainter, i: int, *, edited: bool, unknown: bool = False) -> None:
        r = self.tile_rect(i)
        if r.width() < CHIP_MIN_WIDTH:
            return
        rec = self.record
        student = rec.student_probs[i]
        teacher = rec.teacher_probs[i] if rec.teacher_probs is not None else None
        lines = [f"S {student:.2f}", "T –" if teacher is None else f"T {teacher:.2f}"]
        p.setFont(theme.mono_font(8, bold=True))
        fm = p.fontMetrics()
        w = max(fm.horizontalAdvance(t) for t in lines) + 10 + (12 if edited or unknown else 0)
        chip = QRectF(r.x() + 5, r.y() + 5, w, 2 * fm.height() + 4)
        p.setBrush(QColor(12, 13, 15, 185))
        strong = teacher is not None and abs(teacher - student) >= DISAGREEMENT_COUNTED
        p.setPen(QPen(DISAGREE, 1.5) if strong else Qt.NoPen)
        p.drawRoundedRect(chip, 3, 3)
        p.setPen(QColor(theme.TEXT))
        for k, text in enumerate(lines):
            p.drawText(QRectF(chip.x() + 5, chip.y() + 2 + k * fm.height(), chip.width(), fm.height()),
                       Qt.AlignLeft | Qt.AlignVCenter, text)
        if edited or unknown:
            p.setPen(QColor(theme.ACCENT) if edited else QColor(theme.TEXT))
            p.drawText(QRectF(chip.right() - 14, chip.y() + 2, 12, fm.height()), Qt.AlignCenter,
                       "✎" if edited else "?")
