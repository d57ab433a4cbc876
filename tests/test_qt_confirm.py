"""A rollback asks first, and Enter or Esc on the question keep things as they are (issue 22)."""
from __future__ import annotations

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from inspector.qt import confirm


def answer_with(qtbot, act) -> None:
    """When the question is up: ``act(box)``."""
    def later():
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, later)
            return
        act(box)

    QTimer.singleShot(20, later)


@pytest.mark.parametrize("key", [Qt.Key_Return, Qt.Key_Escape])
def test_enter_and_escape_cancel(qtbot, key):
    answer_with(qtbot, lambda box: qtbot.keyClick(box, key))
    assert confirm.ask(None, "Roll back the device", "Roll pier-3 back?", "Roll back") is False


def test_the_named_action_goes_ahead(qtbot):
    def click_action(box):
        go = next(b for b in box.buttons() if b.text() == "Roll back")
        assert box.defaultButton() is not go and box.text() == "Roll pier-3 back?"
        go.click()

    answer_with(qtbot, click_action)
    assert confirm.ask(None, "Roll back the device", "Roll pier-3 back?", "Roll back") is True
