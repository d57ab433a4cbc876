"""Windows and dialogs open no larger than the screen they are on.

A dialog asked for 1180×820 on a 1366×768 laptop put its Start button below the screen (issue
22): every top-level window here takes :func:`fitted_size` of what it would like, which is bounded
by the screen's free area (the task bar already off) less the window manager's frame and title
bar, and never below the widget's own minimum size hint (the layouts then scroll or wrap).
"""
from __future__ import annotations

from PySide6.QtCore import QSize
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QWidget

FRAME_ALLOWANCE = (16, 40)   # the window manager's frame and title bar, not known before the window is shown


def free_area(widget: QWidget) -> QSize | None:
    """The free area of the screen ``widget`` is on (else the primary screen's); None headless."""
    screen = widget.screen() or QGuiApplication.primaryScreen()
    return None if screen is None else screen.availableGeometry().size()


def fitted_size(widget: QWidget, preferred: tuple[int, int], available: QSize | None = None) -> QSize:
    """``preferred`` (width, height) within ``available`` (default: :func:`free_area`) less
    ``FRAME_ALLOWANCE``, and at least the widget's minimum size (hint)."""
    want = QSize(*preferred)
    free = available if available is not None else free_area(widget)
    if free is not None:
        want = want.boundedTo(free - QSize(*FRAME_ALLOWANCE))
    return want.expandedTo(widget.minimumSizeHint()).expandedTo(widget.minimumSize())
