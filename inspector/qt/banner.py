"""A one-line banner over the view for source problems and notices: never a modal dialog.

``SourceBanner.set_status(SourceStatus)`` shows "reconnecting in N s" with a live countdown,
hides itself when the source is live again. A notice (e.g. "No camera found — playing the
sample video") can carry an action button ("Choose source…").
"""
from __future__ import annotations

import re
import time

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QWidget

from inspector.qt import theme


class Banner(QFrame):
    """A coloured strip: ``show_message(text, level, action=None)``; ``actionTriggered`` when
    its button is pressed; ``dismiss()``."""

    actionTriggered = Signal()

    def __init__(self, parent: QWidget | None = None, *, closable: bool = False):
        super().__init__(parent)
        self.level = "info"
        lay = QHBoxLayout(self)
        lay.setContentsMargins(12, 6, 8, 6)
        lay.setSpacing(10)
        self.icon = QLabel()
        self.icon.setFixedWidth(14)
        self.text = QLabel(wordWrap=True)
        self.text.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.detail = QLabel(objectName="value")
        self.detail.setFont(theme.mono_font(10, bold=True))
        self.action = QPushButton()
        self.action.clicked.connect(self.actionTriggered)
        self.action.hide()
        lay.addWidget(self.icon)
        lay.addWidget(self.text, 1)
        lay.addWidget(self.detail)
        lay.addWidget(self.action)
        if closable:
            close = QPushButton("✕", flat=True, toolTip="Dismiss")
            close.setFixedWidth(28)
            close.clicked.connect(self.dismiss)
            lay.addWidget(close)
        self.hide()

    def show_message(self, text: str, level: str = "info", action: str | None = None, detail: str = "") -> None:
        bg, edge, fg = theme.BANNER[level]
        self.level = level
        self.setStyleSheet(f"Banner {{ background: {bg}; border: 1px solid {edge}; border-radius: 6px; }}"
                           f"QLabel {{ color: {fg}; background: transparent; border: none; }}")
        self.icon.setText({"info": "ℹ", "warning": "⚠", "error": "✖"}[level])
        self.text.setText(text)
        self.detail.setText(detail)
        self.action.setVisible(action is not None)
        if action is not None:
            self.action.setText(action)
        self.show()

    def dismiss(self) -> None:
        self.hide()


# The grabber's message ends in "; retrying in 2.0 s (attempt 3)": the banner shows a live
# countdown and the attempt itself, so that tail is cut (a message without it is shown as is).
_RETRY_TAIL = re.compile(r";?\s*retrying in [0-9.]+ ?s\s*\(attempt \d+\)\s*$")


def problem_text(status) -> str:
    """The status message without its retry tail."""
    return _RETRY_TAIL.sub("", status.message or "").strip() or "source lost"


class SourceBanner(Banner):
    """Follows the grabber's :class:`~inspector.capture.newest.SourceStatus`."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.status = None
        self._retry_at: float | None = None
        self._tick = QTimer(self, interval=250, timeout=self._update_countdown)

    def set_status(self, status) -> None:
        self.status = status
        self._retry_at = None
        self._tick.stop()
        state = status.state
        if state in ("live", "stopped"):
            self.dismiss()
        elif state == "connecting":
            self.show_message(status.message or "Connecting…", "info")
        elif state == "reconnecting":
            if status.retry_in is not None:
                self._retry_at = time.monotonic() + float(status.retry_in)
                self._tick.start()
            self.show_message(problem_text(status), "warning", detail=self._countdown())
        elif state == "ended":
            self.show_message(status.message or "The video ended", "info", action="Choose source…")
        else:
            self.show_message(status.message or state, "warning")

    def _countdown(self) -> str:
        attempt = f"attempt {self.status.attempt} · " if self.status is not None and self.status.attempt else ""
        if self._retry_at is None:
            return f"{attempt}reconnecting…"
        left = self._retry_at - time.monotonic()
        return f"{attempt}reconnecting in {left:.0f} s" if left > 0.5 else f"{attempt}reconnecting…"

    def _update_countdown(self) -> None:
        self.detail.setText(self._countdown())
