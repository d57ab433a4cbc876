"""Does the window fit a field laptop's screen, and can every control on it be reached?

A field laptop: 1366×768 or 1280×800 at 100 % scaling. A maximised window there does not get the
whole screen: a task bar or panel (up to 48 px) and the title bar (some 32 px) come off the
height, so the window's client area is the screen minus ``DECORATION`` in height.

A control is *reachable* when, after every scroll area around it has scrolled to it
(``QScrollArea.ensureVisible`` on its whole rectangle: what the wheel or the
scroll bar does), its whole rectangle
lies inside each of its ancestors' rectangles up to the window (a widget is clipped by each of
its parents) and inside the window's; and it has at least its minimum size hint (not squashed).
Controls are the widgets an inspector operates: buttons (incl. check boxes), line edits, combo
boxes, spin boxes, sliders and item views; their own sub-widgets (a spin box's line edit, a line
edit's clear button, a view's scroll bars) are checked through them, not one by one. Hidden
widgets (another tab, a panel not shown) are not on screen and not checked.
"""
from __future__ import annotations

import pytest

FIELD_SCREENS = ((1366, 768), (1280, 800))
DECORATION = 48 + 32          # task bar + title bar, in height


def client_sizes():
    """The client areas of a maximised window on the field screens, (width, height)."""
    return [(w, h - DECORATION) for w, h in FIELD_SCREENS]


def _controls():
    from PySide6.QtWidgets import (QAbstractButton, QAbstractItemView, QAbstractSlider, QAbstractSpinBox, QComboBox,
                                   QLineEdit, QScrollBar)

    return (QAbstractButton, QLineEdit, QComboBox, QAbstractSpinBox, QAbstractSlider, QAbstractItemView), QScrollBar


def visible_controls(window) -> list:
    from PySide6.QtWidgets import QWidget

    kinds, scroll_bar = _controls()
    found = []
    for w in window.findChildren(QWidget):
        if not isinstance(w, kinds) or isinstance(w, scroll_bar) or not w.isVisibleTo(window):
            continue
        parent, inside_control = w.parentWidget(), False
        while parent is not None and parent is not window:
            if isinstance(parent, kinds):
                inside_control = True
                break
            parent = parent.parentWidget()
        if not inside_control:
            found.append(w)
    return found


def _describe(w) -> str:
    text = w.text() if hasattr(w, "text") and callable(w.text) else ""
    hint = w.placeholderText() if hasattr(w, "placeholderText") else ""
    return f"{type(w).__name__}({w.objectName() or text or hint or w.toolTip()[:30]!r})"


def unreachable(window, app) -> list[str]:
    """Every visible control of ``window`` that cannot be brought fully on screen, with why."""
    from PySide6.QtCore import QPoint, QRect
    from PySide6.QtWidgets import QScrollArea

    problems = []
    app.processEvents()                                        # layouts and scroll ranges up to date
    for w in visible_controls(window):
        parent = w.parentWidget()
        while parent is not None and parent is not window:    # scroll every enclosing area to it
            area = parent.parentWidget()
            if isinstance(area, QScrollArea) and parent is area.viewport():
                # the whole rectangle (ensureWidgetVisible would settle for a line edit's cursor)
                centre = w.mapTo(area.widget(), w.rect().center())
                area.ensureVisible(centre.x(), centre.y(), w.width() // 2 + 1, w.height() // 2 + 1)
            parent = parent.parentWidget()
        app.processEvents()
        rect = QRect(w.mapTo(window, QPoint(0, 0)), w.size())
        hint = w.minimumSizeHint()
        if hint.isValid() and (w.width() < hint.width() or w.height() < hint.height()):
            problems.append(f"{_describe(w)} squashed to {w.width()}×{w.height()} < {hint.width()}×{hint.height()}")
            continue
        if not window.rect().contains(rect):
            problems.append(f"{_describe(w)} at {rect.getRect()} outside the window {window.rect().getRect()}")
            continue
        parent = w.parentWidget()
        while parent is not None and parent is not window:
            clip = QRect(parent.mapTo(window, QPoint(0, 0)), parent.size())
            if not clip.contains(rect):
                problems.append(f"{_describe(w)} at {rect.getRect()} cut off by {type(parent).__name__} "
                                f"{clip.getRect()}")
                break
            parent = parent.parentWidget()
    return problems


@pytest.fixture
def themed(qapp):
    """The app's own theme (fonts, paddings: what sizes really are); the previous look restored after."""
    from inspector.qt import theme

    style, sheet, palette, font = qapp.style().name(), qapp.styleSheet(), qapp.palette(), qapp.font()
    theme.apply(qapp)
    yield qapp
    qapp.setStyleSheet(sheet)
    qapp.setStyle(style)
    qapp.setPalette(palette)
    qapp.setFont(font)


def field_layout_problems(w, app) -> list[str]:
    """Resized to each field laptop's client area: what does not fit, or cannot be reached, on
    each workspace and each side tab (reachable: as the module docstring defines it)."""
    from PySide6.QtCore import QSize

    problems = []
    for size in client_sizes():
        hint = w.minimumSizeHint()
        if hint.width() > size[0] or hint.height() > size[1]:
            problems.append(f"minimum {hint.width()}×{hint.height()} does not fit {size}")
        w.resize(*size)
        app.processEvents()
        if w.size() != QSize(*size):
            problems.append(f"asked {size}, the window is {w.width()}×{w.height()}")
        for workspace, side in ((0, 0), (0, 1), (1, 0)):
            w.workspaces.setCurrentIndex(workspace)
            w.source_tabs.setCurrentIndex(side)
            app.processEvents()
            problems += [f"{size} {w.workspaces.tabText(workspace).split()[0]}/{w.source_tabs.tabText(side)}: {p}"
                         for p in unreachable(w, app)]
    w.workspaces.setCurrentIndex(0)
    return problems
