"""The review grid: a virtual list of flag thumbnails with their review state.

:class:`ReviewGridModel` is a list model over the ids of a :class:`~inspector.review.queue.ReviewQueue`
(10,000 ids cost a list of ints). A row's :class:`~inspector.store.schema.FlagRecord` is read when the
view first asks for it, a page of :data:`PAGE` rows at once through ``store.get_many``, and kept
in a small LRU. Thumbnails are decoded off the GUI thread (:class:`ThumbnailLoader`, its own
low-priority job runner) only for rows the view paints, newest request first, and kept
downscaled in an LRU; a row shows a placeholder until its thumbnail is ready, "image missing"
if its frame cannot be read (it can still be reviewed from its metadata).

:class:`ReviewGridDelegate` paints a cell: thumbnail (heat-map blended in when on), the review
state badge, the teachers' disagreement badge, id and p max. :class:`ReviewGridView` is the
QListView (icon mode, extended selection) and says when every visible cell has its thumbnail
(``firstPageShown`` once, ``pageShown(rows)`` each time a scrolled-to page is complete).
"""
from __future__ import annotations

import logging
from collections import OrderedDict, deque

import cv2
import numpy as np
from PySide6.QtCore import QAbstractListModel, QModelIndex, QObject, QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen
from PySide6.QtWidgets import QAbstractItemView, QListView, QStyle, QStyledItemDelegate

from inspector.edge.engine import overlay
from inspector.store.query import DISAGREEMENT_COUNTED
from inspector.store.schema import StoreError
from inspector.qt import theme
from inspector.qt.jobs import JobRunner

log = logging.getLogger(__name__)

PAGE = 64                   # records read per store round trip
RECORD_CACHE = 4096         # records kept
THUMB_CACHE = 500           # thumbnails kept (61 kB each with the heat-map: ~30 MB)
THUMB = QSize(144, 108)     # 4:3, the camera's aspect
CELL = QSize(THUMB.width() + 10, THUMB.height() + 28)
GAP = 6
MAX_PENDING = 96            # thumbnail requests kept; older ones (scrolled past) are dropped

RecordRole = Qt.UserRole + 1
ThumbRole = Qt.UserRole + 2
MISSING = "missing"         # ThumbRole of a flag whose frame cannot be read

STATE_TEXT = {None: "unreviewed", "crack": "crack", "no_crack": "no crack", "unsure": "unsure"}
STATE_COLOURS = {None: QColor(theme.TEXT_DIM), "crack": theme.CRACK, "no_crack": theme.CLEAN,
                 "unsure": theme.UNCERTAIN}
DISAGREE = QColor(214, 92, 255)   # the teachers disagree: violet, apart from every verdict colour


def decode_thumbnail(store, rec, size: QSize = THUMB) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8, heat uint8 = heat · 255) of ``rec`` shrunk to fit ``size`` (a pool thread;
    StoreError if the frame cannot be read; a missing heat-map only costs the overlay)."""
    rgb = store.load_frame(rec)
    h, w = rgb.shape[:2]
    scale = min(size.width() / w, size.height() / h)
    dsize = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(rgb, dsize, interpolation=cv2.INTER_AREA)
    try:
        heat = cv2.resize(store.load_heatmap(rec), dsize, interpolation=cv2.INTER_AREA)
    except StoreError:
        heat = np.zeros(small.shape[:2], np.float32)
    return np.ascontiguousarray(small), np.rint(heat * 255).astype(np.uint8)


class ThumbnailLoader(QObject):
    """``request(rec)``: decode its thumbnail on a low-priority runner; ``loaded(id, (rgb, heat)
    | None)`` on the GUI thread (None: the frame cannot be read). The newest request goes first,
    at most ``runner.threads`` decode at once, and requests beyond :data:`MAX_PENDING` are
    forgotten (the rows were scrolled past; they are asked for again if painted again)."""

    loaded = Signal(int, object)

    def __init__(self, store, runner: JobRunner, parent: QObject | None = None):
        super().__init__(parent)
        self.store, self.runner = store, runner
        self._pending: deque = deque()
        self._queued: set[int] = set()
        self._in_flight: set[int] = set()

    def request(self, rec) -> None:
        if rec.id in self._queued or rec.id in self._in_flight:
            return
        self._pending.append(rec)
        self._queued.add(rec.id)
        while len(self._pending) > MAX_PENDING:
            self._queued.discard(self._pending.popleft().id)
        self._start()

    def forget(self) -> None:
        """Drop every queued request (a new list is on screen)."""
        self._pending.clear()
        self._queued.clear()

    @property
    def idle(self) -> bool:
        return not self._pending and not self._in_flight

    def _start(self) -> None:
        while self._pending and len(self._in_flight) < self.runner.threads and not self.runner.closed:
            rec = self._pending.pop()              # newest first: what the view shows now
            self._queued.discard(rec.id)
            self._in_flight.add(rec.id)
            self.runner.run(decode_thumbnail, self.store, rec,
                            on_success=lambda value, i=rec.id: self._done(i, value),
                            on_failure=lambda exc, i=rec.id: self._failed(i, exc))

    def _done(self, flag_id: int, value) -> None:
        self._in_flight.discard(flag_id)
        self.loaded.emit(flag_id, value)
        self._start()

    def _failed(self, flag_id: int, exc: Exception) -> None:
        if not isinstance(exc, StoreError):
            log.warning("thumbnail of flag %d: %s: %s", flag_id, type(exc).__name__, exc)
        self._done(flag_id, None)


class ReviewGridModel(QAbstractListModel):
    """Rows = ``ids`` (kept in step with the queue by :meth:`sync`); roles: DisplayRole "#id",
    :data:`RecordRole` the FlagRecord (None if gone), :data:`ThumbRole` a QImage, :data:`MISSING`
    or None (not decoded yet: requested)."""

    def __init__(self, store, thumbs: ThumbnailLoader, parent: QObject | None = None):
        super().__init__(parent)
        self.store = store
        self.ids: list[int] = []
        self.heat, self.opacity = False, 0.45
        self._rows: dict[int, int] | None = None
        self._records: OrderedDict[int, object] = OrderedDict()
        self._thumbs: OrderedDict[int, tuple | str] = OrderedDict()   # id -> (rgb, heat) | MISSING
        self._images: dict[int, tuple] = {}        # id -> (pixels, QImage viewing them) as painted now
        self.loader = thumbs
        thumbs.loaded.connect(self._on_thumb)

    # ---------------------------------------------------------------- Qt model API

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802 - Qt API
        return 0 if parent.isValid() else len(self.ids)

    def data(self, index: QModelIndex, role: int = Qt.DisplayRole):
        if not index.isValid() or not 0 <= index.row() < len(self.ids):
            return None
        flag_id = self.ids[index.row()]
        if role == Qt.DisplayRole:
            return f"#{flag_id}"
        if role == RecordRole:
            return self.record(index.row())
        if role == ThumbRole:
            return self.thumbnail(index.row())
        if role == Qt.ToolTipRole:
            rec = self.record(index.row())
            return None if rec is None else tooltip(rec)
        return None

    # ---------------------------------------------------------------- rows

    def row_of(self, flag_id: int) -> int | None:
        if self._rows is None:
            self._rows = {fid: row for row, fid in enumerate(self.ids)}
        return self._rows.get(flag_id)

    def record(self, row: int):
        flag_id = self.ids[row]
        if flag_id in self._records:
            self._records.move_to_end(flag_id)
            return self._records[flag_id]
        start = row - row % PAGE
        page = [i for i in self.ids[start:start + PAGE] if i not in self._records]
        try:
            found = {r.id: r for r in self.store.get_many(page)}
        except StoreError as err:   # the store closed under a late repaint: draw the cell empty
            log.info("review grid: %s", err)
            return None
        for i in page:
            self._records[i] = found.get(i)
        while len(self._records) > RECORD_CACHE:
            self._records.popitem(last=False)
        return self._records[flag_id]

    def thumbnail(self, row: int):
        """The row's thumbnail as painted now; None while it is decoded (the request is made here,
        so only rows the view paints are decoded)."""
        flag_id = self.ids[row]
        thumb = self._thumbs.get(flag_id)
        if thumb is None:
            rec = self.record(row)
            if rec is None:
                return MISSING
            self.loader.request(rec)
            return None
        self._thumbs.move_to_end(flag_id)
        if thumb == MISSING:
            return MISSING
        shown = self._images.get(flag_id)
        if shown is None:
            rgb, heat = thumb
            if self.heat and self.opacity > 0:
                rgb = overlay(rgb, heat.astype(np.float32) / 255, alpha=self.opacity)
            h, w = rgb.shape[:2]
            shown = (rgb, QImage(rgb.data, w, h, rgb.strides[0], QImage.Format_RGB888))  # a view: no copy
            self._images[flag_id] = shown
        return shown[1]

    def thumb_ready(self, row: int) -> bool:
        return self.ids[row] in self._thumbs

    def cached_thumbnail(self, flag_id: int):
        """(rgb, heat float32) if decoded, else None (the large view shows it while the frame loads)."""
        thumb = self._thumbs.get(flag_id)
        if thumb is None or thumb == MISSING:
            return None
        return thumb[0], thumb[1].astype(np.float32) / 255

    # ---------------------------------------------------------------- changes

    def sync(self, ids: list[int]) -> None:
        """Follow the queue's new list: rows inserted or removed in place when the change is only
        that (selection and scroll stay), else a reset."""
        new = list(ids)
        if new == self.ids:
            return
        if len(new) > len(self.ids) and _is_subsequence(self.ids, new):
            self._insert_runs(new)
        elif len(new) < len(self.ids) and _is_subsequence(new, self.ids):
            self._remove_runs(new)
        else:
            self.beginResetModel()
            self.ids = new
            self._rows = None
            self.loader.forget()
            self.endResetModel()

    def update_records(self, records) -> None:
        """Flags changed (a verdict, undo): repaint their cells with the new records."""
        for rec in records:
            row = self.row_of(rec.id)
            if row is not None or rec.id in self._records:
                self._records[rec.id] = rec
            if row is not None:
                idx = self.index(row)
                self.dataChanged.emit(idx, idx, [RecordRole, Qt.ToolTipRole])

    def forget_records(self) -> None:
        """Read every record again when next painted (the teachers may have scored them meanwhile)."""
        self._records.clear()
        if self.ids:
            self.dataChanged.emit(self.index(0), self.index(len(self.ids) - 1), [RecordRole])

    def set_heat(self, on: bool, opacity: float) -> None:
        if (bool(on), float(opacity)) == (self.heat, self.opacity):
            return
        self.heat, self.opacity = bool(on), float(opacity)
        self._images.clear()
        if self.ids:
            self.dataChanged.emit(self.index(0), self.index(len(self.ids) - 1), [ThumbRole])

    def _on_thumb(self, flag_id: int, value) -> None:
        self._thumbs[flag_id] = MISSING if value is None else value
        self._images.pop(flag_id, None)
        while len(self._thumbs) > THUMB_CACHE:
            old, _ = self._thumbs.popitem(last=False)
            self._images.pop(old, None)
        row = self.row_of(flag_id)
        if row is not None:
            idx = self.index(row)
            self.dataChanged.emit(idx, idx, [ThumbRole])

    def _insert_runs(self, new: list[int]) -> None:
        i = 0
        while i < len(new):
            if i < len(self.ids) and self.ids[i] == new[i]:
                i += 1
                continue
            target = self.ids[i] if i < len(self.ids) else None
            k = i
            while k < len(new) and new[k] != target:
                k += 1
            self.beginInsertRows(QModelIndex(), i, k - 1)
            self.ids[i:i] = new[i:k]
            self._rows = None
            self.endInsertRows()
            i = k

    def _remove_runs(self, new: list[int]) -> None:
        i = 0
        while i < len(self.ids):
            if i < len(new) and self.ids[i] == new[i]:
                i += 1
                continue
            target = new[i] if i < len(new) else None
            k = i
            while k < len(self.ids) and self.ids[k] != target:
                k += 1
            self.beginRemoveRows(QModelIndex(), i, k - 1)
            del self.ids[i:k]
            self._rows = None
            self.endRemoveRows()


def _is_subsequence(short: list[int], long: list[int]) -> bool:
    it = iter(long)
    return all(x in it for x in short)


def tooltip(rec) -> str:
    lines = [f"flag #{rec.id} · {rec.reason} · p max {rec.crack_prob_max:.2f}",
             f"review: {STATE_TEXT.get(rec.label, rec.label)}" + (f" by {rec.reviewer}" if rec.reviewer else "")]
    if rec.disagreement is not None:
        lines.append(f"teachers vs student: {rec.disagreement:.2f}")
    if rec.location:
        lines.append(f"location: {rec.location}")
    return "\n".join(lines)


class ReviewGridDelegate(QStyledItemDelegate):
    """Paints one cell: see the module docstring."""

    def sizeHint(self, option, index) -> QSize:  # noqa: N802 - Qt API
        return CELL

    def paint(self, p: QPainter, option, index) -> None:
        rec = index.data(RecordRole)
        thumb = index.data(ThumbRole)
        r = option.rect
        selected = bool(option.state & QStyle.State_Selected)
        view = self.parent()
        current = view is not None and view.currentIndex() == index
        p.save()
        p.setRenderHint(QPainter.Antialiasing, True)
        p.setPen(Qt.NoPen)
        p.setBrush(QColor("#1f3350") if selected else QColor(theme.PANEL))
        p.drawRoundedRect(r.adjusted(1, 1, -1, -1), 5, 5)
        box = QRect(r.x() + 5, r.y() + 5, THUMB.width(), THUMB.height())
        self._paint_thumb(p, box, thumb)
        if rec is not None:
            self._paint_badges(p, box, rec)
            self._paint_caption(p, QRect(r.x() + 6, box.bottom() + 3, r.width() - 12, 18), rec)
        if current or selected:
            p.setBrush(Qt.NoBrush)
            p.setPen(QPen(QColor(theme.ACCENT), 2.5 if current else 1.2))
            p.drawRoundedRect(r.adjusted(2, 2, -2, -2), 5, 5)
        p.restore()

    def _paint_thumb(self, p: QPainter, box: QRect, thumb) -> None:
        p.fillRect(box, QColor(theme.VIEW_BG))
        if isinstance(thumb, QImage) and not thumb.isNull():
            x = box.x() + (box.width() - thumb.width()) // 2
            y = box.y() + (box.height() - thumb.height()) // 2
            p.drawImage(QPoint(x, y), thumb)
        elif thumb == MISSING:
            p.setPen(QPen(QColor(theme.TEXT_DIM), 1, Qt.DashLine))
            p.drawRect(box.adjusted(4, 4, -5, -5))
            p.setFont(_font(8))
            p.drawText(box, Qt.AlignCenter, "image missing")

    def _paint_badges(self, p: QPainter, box: QRect, rec) -> None:
        p.setFont(_font(7.5, bold=True))
        colour = STATE_COLOURS.get(rec.label, QColor(theme.TEXT_DIM))
        text = STATE_TEXT.get(rec.label, str(rec.label))
        if rec.label is None:
            _pill(p, QPoint(box.x() + 4, box.y() + 4), text, QColor(14, 15, 17, 200), QColor(theme.TEXT), colour)
        else:
            _pill(p, QPoint(box.x() + 4, box.y() + 4), text, colour, QColor(15, 15, 15), None)
        if rec.disagreement is not None:
            strong = rec.disagreement >= DISAGREEMENT_COUNTED
            text = f"Δ {rec.disagreement:.2f}"
            w = p.fontMetrics().horizontalAdvance(text) + 10
            at = QPoint(box.right() - w - 3, box.y() + 4)
            if strong:
                _pill(p, at, text, DISAGREE, QColor(255, 255, 255), None)
            else:
                _pill(p, at, text, QColor(14, 15, 17, 190), QColor(theme.TEXT_DIM), None)

    def _paint_caption(self, p: QPainter, line: QRect, rec) -> None:
        p.setPen(Qt.NoPen)
        p.setBrush(theme.REASON_COLOURS.get(rec.reason, QColor(theme.TEXT_DIM)))
        p.drawEllipse(QPoint(line.x() + 4, line.center().y() + 1), 3, 3)
        p.setFont(theme.mono_font(8))
        fm = p.fontMetrics()
        ident, prob = f"#{rec.id}", f"p {rec.crack_prob_max:.2f}"
        text = line.adjusted(12, 0, 0, 0)
        p.setPen(QColor(theme.TEXT))
        p.drawText(text, Qt.AlignVCenter | Qt.AlignLeft, ident)
        p.setPen(QColor(theme.TEXT_DIM))
        p.drawText(line, Qt.AlignVCenter | Qt.AlignRight, prob)
        room = text.width() - fm.horizontalAdvance(ident) - fm.horizontalAdvance(prob) - 14
        if rec.location and room > 24:   # the location, shortened to the room between id and p
            where = text.adjusted(fm.horizontalAdvance(ident) + 7, 0, 0, 0)
            p.drawText(where, Qt.AlignVCenter | Qt.AlignLeft, fm.elidedText(rec.location, Qt.ElideRight, room))


def _font(size: float, bold: bool = False):
    f = theme.mono_font(9, bold)
    f.setFamily("DejaVu Sans")
    f.setPointSizeF(size)
    return f


def _pill(p: QPainter, at: QPoint, text: str, fill: QColor, fg: QColor, edge: QColor | None) -> None:
    fm = p.fontMetrics()
    rect = QRect(at.x(), at.y(), fm.horizontalAdvance(text) + 10, fm.height() + 2)
    p.setBrush(fill)
    p.setPen(QPen(edge, 1.2) if edge is not None else Qt.NoPen)
    p.drawRoundedRect(rect, 4, 4)
    p.setPen(fg)
    p.drawText(rect, Qt.AlignCenter, text)


class ReviewGridView(QListView):
    """The thumbnail grid (icon mode, extended selection, per-pixel scrolling).

    ``firstPageShown()`` once, after the first paint in which every visible cell had its
    thumbnail (or its "image missing"); ``pageShown(rows)`` after every paint that completes a
    page that was incomplete before (scrolling). ``selected_ids()`` in list order.
    """

    firstPageShown = Signal()
    pageShown = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setViewMode(QListView.IconMode)
        self.setFlow(QListView.LeftToRight)
        self.setWrapping(True)
        self.setResizeMode(QListView.Adjust)
        self.setMovement(QListView.Static)
        self.setUniformItemSizes(True)
        self.setGridSize(QSize(CELL.width() + GAP, CELL.height() + GAP))
        self.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.setVerticalScrollMode(QAbstractItemView.ScrollPerPixel)
        self.verticalScrollBar().setSingleStep(24)
        self.setMouseTracking(False)
        self.setItemDelegate(ReviewGridDelegate(self))
        self.setStyleSheet(f"QListView {{ background: {theme.VIEW_BG}; border: 1px solid {theme.PANEL_EDGE}; }}")
        self.first_page_shown = False
        self._complete = False

    def keyboardSearch(self, search: str) -> None:  # noqa: N802 - Qt API
        """Letters are verdict keys here, never a jump to a matching item."""

    def selected_ids(self) -> list[int]:
        model = self.model()
        rows = sorted(i.row() for i in self.selectionModel().selectedIndexes())
        return [model.ids[r] for r in rows if r < len(model.ids)]

    def visible_rows(self) -> range:
        """Rows whose cells intersect the viewport (binary search: the layout is row-major)."""
        model = self.model()
        n = 0 if model is None else model.rowCount()
        if n == 0:
            return range(0)
        height = self.viewport().height()
        lo, hi = 0, n
        while lo < hi:   # first row whose cell ends below the top edge
            mid = (lo + hi) // 2
            if self.visualRect(model.index(mid)).bottom() < 0:
                lo = mid + 1
            else:
                hi = mid
        end = lo
        while end < n and self.visualRect(model.index(end)).top() < height:
            end += 1
        return range(lo, end)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().paintEvent(event)
        model = self.model()
        rows = self.visible_rows()
        complete = model is not None and all(model.thumb_ready(r) for r in rows)
        if complete and not self._complete:
            if not self.first_page_shown:
                self.first_page_shown = True
                self.firstPageShown.emit()
            self.pageShown.emit(len(rows))
        self._complete = complete
