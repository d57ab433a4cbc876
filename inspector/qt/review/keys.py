"""The review workspace's keys: one table drives the shortcuts and the F1 list."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget

from inspector.qt.screen_fit import fitted_size

PREFERRED_SIZE = (920, 720)   # the whole list unwrapped-ish; fitted to the screen (inspector.qt.screen_fit)

# (keys, method of ReviewWorkspace, what it does)
KEYS = (
    (("C", "1"), "label_crack", "Crack: there is a crack here. Tiles you marked stay; the others are unknown "
                                "(never trained as clean) until you mark the crack tiles (the frame 'needs tiles')"),
    (("N", "2"), "label_no_crack", "No crack: the frame and every tile clean (trained as clean)"),
    (("U",), "label_unsure", "Unsure: left out of training exports"),
    (("Space",), "accept", "Accept the verdicts shown: every tile you did not mark takes the model's verdict"),
    (("Left",), "previous", "Previous flag"),
    (("Right",), "next", "Next flag"),
    (("Ctrl+Right",), "next_unreviewed", "Next unreviewed flag, or crack frame that needs its tiles"),
    (("Ctrl+Z",), "undo", "Undo (also after a restart)"),
    (("Ctrl+Shift+Z", "Ctrl+Y"), "redo", "Redo"),
    (("Delete",), "delete", "Delete the flag (Ctrl+Z brings it back until the app closes)"),
    (("T",), "toggle_tile", "Toggle the tile under the tile cursor (crack ↔ clean): your label for that tile"),
    (("H",), "toggle_heat", "Heat-map on / off"),
    (("F1",), "show_keys", "This list"),
)
# what the grid, the frame and the fields do with keys of their own
MORE_KEYS = (
    ("↑ ↓  PgUp PgDn  Home End", "Move through the grid"),
    ("Shift / Ctrl + click, Shift + arrows, Ctrl+A", "Select several flags: C N U Space Delete apply to all, "
                                                      "as one undo step"),
    ("Tab, or click the frame", "The frame takes the arrows: they move the tile cursor; Tab again to leave"),
    ("Click a tile", "Toggle it (a dotted outline: a tile nobody labelled yet, shown with the model's verdict)"),
    ("Enter / Esc in Location or Note", "Save / revert the field (it saves when you leave it, too)"),
    ("Ctrl+1  /  Ctrl+2", "Live / Review workspace (the live view keeps running)"),
)


def install_shortcuts(workspace: QWidget) -> list[QShortcut]:
    """A QShortcut on ``workspace`` for every key of :data:`KEYS`, calling its method: they work
    only while the workspace is shown, and a text field with the focus takes letters as text."""
    return [QShortcut(QKeySequence(key), workspace, activated=getattr(workspace, method), context=Qt.WindowShortcut)
            for keys, method, _ in KEYS for key in keys]


class KeysDialog(QDialog):
    """F1: every key of the review workspace."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Review keys")
        rows = [(" / ".join(QKeySequence(k).toString(QKeySequence.NativeText) for k in keys), text)
                for keys, _, text in KEYS] + list(MORE_KEYS)
        html = "".join(f"<tr><td style='padding:3px 14px 3px 0'><b>{k}</b></td><td>{t}</td></tr>" for k, t in rows)
        lay = QVBoxLayout(self)
        # the cells wrap (unwrapped, the longest line made the dialog 1,350 px wide: issue 22) and
        # the list scrolls on a short screen
        table = QLabel(f"<table>{html}</table>", textFormat=Qt.RichText, wordWrap=True)
        table.setAlignment(Qt.AlignTop | Qt.AlignLeft)
        area = QScrollArea(widgetResizable=True, frameShape=QFrame.NoFrame)
        area.setWidget(table)
        lay.addWidget(area, 1)
        lay.addWidget(QLabel("Letters type text while Location or Note has the focus.", objectName="dim"))
        box = QDialogButtonBox(QDialogButtonBox.Close)
        box.rejected.connect(self.reject)
        lay.addWidget(box)
        self.resize(fitted_size(self, PREFERRED_SIZE))
