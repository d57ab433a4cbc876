"""Asking before a step that changes which model runs: one question, the safe answer the default.

Rolling back swapped the device's model on one click (issue 22). :func:`ask` shows a question
with the action named on its button and **Cancel as the default** (Enter or Esc keep things as
they are). Tests replace :data:`ask` to answer without a modal dialog.
"""
from __future__ import annotations

from PySide6.QtWidgets import QMessageBox, QWidget


def question_box(parent: QWidget | None, title: str, text: str, action: str):
    """The question (not shown): ``(box, the action's button)``, Cancel the default and Esc."""
    box = QMessageBox(QMessageBox.Icon.Question, title, text, QMessageBox.StandardButton.NoButton, parent)
    go = box.addButton(action, QMessageBox.ButtonRole.AcceptRole)
    cancel = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(cancel)
    box.setEscapeButton(cancel)
    return box, go


def _ask(parent: QWidget | None, title: str, text: str, action: str) -> bool:
    box, go = question_box(parent, title, text, action)
    box.exec()
    return box.clickedButton() is go


ask = _ask   # (parent, title, text, action label) -> True to go ahead
