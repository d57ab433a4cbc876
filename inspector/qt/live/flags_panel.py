"""The flags panel: the latest flags with thumbnail, reason, time, max crack probability; the count."""
from __future__ import annotations

from datetime import datetime

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPixmap
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QVBoxLayout, QWidget

from inspector.qt import theme

MAX_SHOWN = 200
THUMB = QSize(96, 72)


def local_time(iso: str) -> str:
    """``HH:MM:SS`` in local time of an ISO-8601 timestamp (the raw text if unparsable)."""
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    except (ValueError, AttributeError):
        return str(iso)


def _icon(thumb: QImage | None, reason: str) -> QIcon:
    """The thumbnail with a stripe in the reason's colour on its left edge."""
    pm = QPixmap(THUMB)
    pm.fill(QColor("#0e0f11"))
    p = QPainter(pm)
    if thumb is not None and not thumb.isNull():
        scaled = thumb.scaled(THUMB, Qt.KeepAspectRatio, Qt.SmoothTransformation)
        p.drawImage((THUMB.width() - scaled.width()) // 2, (THUMB.height() - scaled.height()) // 2, scaled)
    else:
        p.setPen(QColor(theme.TEXT_DIM))
        p.drawText(pm.rect(), Qt.AlignCenter, "no image")
    p.fillRect(0, 0, 5, THUMB.height(), theme.REASON_COLOURS.get(reason, QColor(theme.TEXT_DIM)))
    p.end()
    icon = QIcon(pm)
    icon.addPixmap(pm, QIcon.Selected)   # no selection tint over the photo
    return icon


class FlagsPanel(QFrame):
    """``add(record, thumbnail)`` per stored flag (newest on top); ``set_history(items, count)``."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, objectName="panel")
        self.count = 0
        self.ids: list[int] = []     # newest first, as shown
        lay = QVBoxLayout(self)
        lay.setContentsMargins(12, 10, 12, 12)
        lay.setSpacing(8)
        head = QHBoxLayout()
        head.addWidget(QLabel("FLAGS", objectName="sectionTitle"))
        head.addStretch(1)
        self.count_label = QLabel("0 stored", objectName="dim")
        head.addWidget(self.count_label)
        lay.addLayout(head)
        self.list = QListWidget()
        self.list.setIconSize(THUMB)
        self.list.setUniformItemSizes(True)
        self.list.setFocusPolicy(Qt.ClickFocus)
        self.list.setVerticalScrollMode(QListWidget.ScrollPerPixel)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)   # a long location is elided instead
        self.empty = QLabel("No flags yet.\n\nPress Space to flag the frame on screen; confident and "
                            "uncertain cracks are flagged automatically.",
                            objectName="dim", wordWrap=True, alignment=Qt.AlignHCenter | Qt.AlignTop)
        self.empty.setContentsMargins(8, 24, 8, 8)
        lay.addWidget(self.empty, 1)
        lay.addWidget(self.list, 1)
        self.list.hide()

    def set_history(self, items, count: int) -> None:
        """The store's newest flags (newest first) and its total count; flags already shown stay."""
        known = set(self.ids)
        for record, thumb in reversed(list(items)):
            if record.id not in known:
                self._insert(record, thumb, announce=False)
        self.count = max(count, len(self.ids))
        self._update_count()

    def add(self, record, thumb: QImage | None) -> None:
        if record.id in self.ids:
            return
        self._insert(record, thumb)
        self.count += 1
        self._update_count()

    def _insert(self, record, thumb, announce: bool = True) -> None:
        where = f" · {record.location}" if record.location else ""
        text = (f"{record.reason.upper()}   p_max {record.crack_prob_max:.2f}\n"
                f"{local_time(record.created)}  #{record.id}{where}")
        item = QListWidgetItem(_icon(thumb, record.reason), text)
        item.setData(Qt.UserRole, record.id)
        tip = [f"flag #{record.id} ({record.reason}) at {record.created}", f"source: {record.source}",
               f"model: {record.model.name} {record.model.version}", f"frame: {record.frame_file}"]
        if record.note:
            tip.append(f"note: {record.note}")
        item.setToolTip("\n".join(tip))
        # newest on top; history items arrive oldest first, so both paths insert at row 0
        self.list.insertItem(0, item)
        self.ids.insert(0, record.id)
        while self.list.count() > MAX_SHOWN:
            self.list.takeItem(self.list.count() - 1)
            self.ids.pop()
        if announce:
            self.list.setCurrentRow(0)
        self.empty.hide()
        self.list.show()

    def _update_count(self) -> None:
        self.count_label.setText(f"{self.count} stored")
