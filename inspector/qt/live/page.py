"""The live workspace's page: the video with its banners and HUD on the left; on the right the
source (a local camera or a device, one at a time, in tabs), the display and flag controls, which
scroll when the screen is short, and the flags list under them, which stays on screen.

It only arranges widgets the window made (the device panel included): what they do is wired by
:class:`~inspector.qt.window.MainWindow`.
"""
from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import QHBoxLayout, QScrollArea, QTabBar, QVBoxLayout, QWidget

SIDEBAR_WIDTH = 370
FLAGS_MIN_HEIGHT = 220   # the flags list keeps two or three rows on a 768-px screen


class ControlsScroll(QScrollArea):
    """The side controls: as tall as they want where the screen allows (QScrollArea's own hint
    stops at 24 text lines), scrolled where it does not."""

    def sizeHint(self):  # noqa: N802 - Qt API
        inner = self.widget()
        if inner is None:
            return super().sizeHint()
        return inner.sizeHint() + QSize(self.verticalScrollBar().sizeHint().width(), 0)


class LivePage(QWidget):
    """``banners`` and ``view`` and ``hud`` on the left, top to bottom; ``chooser`` (Camera tab)
    or ``device_panel`` (Device tab), then ``controls``, then ``flags_panel`` on the right."""

    def __init__(self, *, banners, view, hud, chooser, device_panel, controls, flags_panel,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.chooser, self.device_panel = chooser, device_panel
        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(10, 10, 5, 10)
        lv.setSpacing(8)
        for w in banners:
            lv.addWidget(w)
        lv.addWidget(view, 1)
        lv.addWidget(hud)

        # a local camera or a device: one at a time, so they share the space. The flags list is
        # what an inspector looks at most: it stays on screen under the controls, which scroll
        # when the screen is short (a 768-px laptop: the device panel alone is ~400 px)
        self.source_tabs = QTabBar()
        self.source_tabs.setDocumentMode(True)
        self.source_tabs.setExpanding(False)
        self.source_tabs.addTab("Camera")
        self.source_tabs.addTab("Device")
        self.source_tabs.currentChanged.connect(self.show_source_tab)
        inner = QWidget()
        cv = QVBoxLayout(inner)
        cv.setContentsMargins(0, 0, 0, 0)
        cv.setSpacing(8)
        cv.addWidget(chooser)
        cv.addWidget(device_panel)
        self.show_source_tab(0)
        for w in controls:
            cv.addWidget(w)
        cv.addStretch(1)
        self.side_scroll = ControlsScroll(widgetResizable=True, frameShape=QScrollArea.NoFrame)
        self.side_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.side_scroll.setWidget(inner)
        flags_panel.setMinimumHeight(FLAGS_MIN_HEIGHT)
        side = QWidget()
        side.setFixedWidth(SIDEBAR_WIDTH)
        sv = QVBoxLayout(side)
        sv.setContentsMargins(5, 10, 10, 10)
        sv.setSpacing(8)
        sv.addWidget(self.source_tabs)
        sv.addWidget(self.side_scroll)
        sv.addWidget(flags_panel, 1)

        h = QHBoxLayout(self)
        h.setContentsMargins(0, 0, 0, 0)
        h.setSpacing(0)
        h.addWidget(left, 1)
        h.addWidget(side)

    def show_source_tab(self, index: int) -> None:
        """Camera or device: one panel at a time (hidden, the other takes no room)."""
        self.chooser.setVisible(index == 0)
        self.device_panel.setVisible(index == 1)
