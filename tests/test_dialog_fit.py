"""Every dialog fits a field laptop's screen (1366×768, 1280×720) with each control reachable, and
Enter does the obvious thing (issue 22: the Update plan dialog was 1180×820 with Start below a
768 px screen, and Enter opened Model history)."""
from __future__ import annotations

import pytest
from PySide6.QtCore import QSize, Qt

from layout_check import themed, unreachable  # noqa: F401 - fixture
from inspector.qt.screen_fit import FRAME_ALLOWANCE, fitted_size
from support import engine  # noqa: F401 - fixture
from update_support import frames, history, make_dialog, store  # noqa: F401 - fixtures

SCREENS = ((1366, 768), (1280, 720))
TASK_BAR = 48


def fit_problems(dialog, preferred, app) -> list[str]:
    """On each screen: the size the dialog opens at, within the screen, and every control reachable."""
    problems = []
    for w, h in SCREENS:
        free = QSize(w, h - TASK_BAR)
        size = fitted_size(dialog, preferred, available=free)
        room = free - QSize(*FRAME_ALLOWANCE)
        if size.width() > room.width() or size.height() > room.height():
            problems.append(f"{(w, h)}: opens at {size.width()}×{size.height()}, the screen has room for "
                            f"{room.width()}×{room.height()}; widest: {widest(dialog)}")
            continue
        dialog.resize(size)
        app.processEvents()
        problems += [f"{(w, h)}: {p}" for p in unreachable(dialog, app)]
    return problems


def widest(dialog) -> str:
    """The visible widgets whose minimum width is largest: what to look at when a dialog is too wide."""
    from PySide6.QtWidgets import QWidget

    kids = [c for c in dialog.findChildren(QWidget) if c.isVisibleTo(dialog)]
    kids.sort(key=lambda c: -c.minimumSizeHint().width())
    return ", ".join(f"{type(c).__name__}({c.objectName() or getattr(c, 'text', lambda: '')()[:40]!r}) "
                     f"{c.minimumSizeHint().width()}" for c in kids[:4])


def test_fitted_size_is_bounded_by_the_screen_and_the_minimum(qtbot):
    from PySide6.QtWidgets import QWidget

    w = QWidget()
    qtbot.addWidget(w)
    w.setMinimumSize(300, 200)
    assert fitted_size(w, (1180, 820), available=QSize(1366, 720)) == QSize(1180, 680)
    assert fitted_size(w, (800, 600), available=QSize(1920, 1040)) == QSize(800, 600)
    assert fitted_size(w, (1180, 820), available=QSize(200, 100)) == QSize(300, 200)   # the minimum wins


def test_the_update_dialog_fits_and_enter_starts(qtbot, themed, store, history, engine):  # noqa: F811
    from inspector.qt.update.view import PREFERRED_SIZE

    dialog = make_dialog(qtbot, store, history, engine)
    assert fit_problems(dialog, PREFERRED_SIZE, themed) == []
    plan = dialog.plan_page
    assert plan.start_button.isDefault()
    assert not plan.history_button.autoDefault() and not plan.close_button.autoDefault()
    started = []
    dialog.start = lambda: started.append(True)          # Enter, not a click: what the key does
    plan.start_button.clicked.disconnect()
    plan.start_button.clicked.connect(dialog.start)
    dialog.activateWindow()
    qtbot.keyClick(dialog, Qt.Key_Return)
    assert started == [True]


def test_the_model_history_dialog_fits_and_enter_only_closes(qtbot, themed, history, engine):  # noqa: F811
    from inspector.qt.update.history_view import PREFERRED_SIZE, ModelHistoryDialog

    dialog = ModelHistoryDialog(history, engine=lambda: engine, swap_engine=lambda e: None)
    qtbot.addWidget(dialog)
    dialog.show()
    assert fit_problems(dialog, PREFERRED_SIZE, themed) == []
    assert not dialog.laptop_rollback.autoDefault() and not dialog.device_rollback.autoDefault()
    qtbot.waitUntil(lambda: dialog.laptop.rowCount() >= 1, timeout=10000)
    for table in (dialog.laptop, dialog.device_table):       # every column on screen, none cut off
        width = sum(table.columnWidth(c) for c in range(table.columnCount()))
        assert width <= table.viewport().width() + 1, (width, table.viewport().width())
    assert "port quay test: recall 1.000 (one class" in dialog.laptop.item(0, 3).toolTip()


@pytest.mark.parametrize("name", ["keys", "pair", "override"])
def test_the_small_dialogs_fit(qtbot, themed, name):  # noqa: F811
    from PySide6.QtWidgets import QWidget

    parent = QWidget()
    qtbot.addWidget(parent)
    if name == "keys":
        from inspector.qt.review.keys import KeysDialog
        dialog = KeysDialog(parent)
    elif name == "pair":
        from inspector.qt.device.pair_dialog import PairDialog
        dialog = PairDialog("192.168.1.20:8443", "ab" * 32, parent)
    else:
        from inspector.qt.device.override_dialog import ExpertOverrideDialog
        dialog = ExpertOverrideDialog(["golden_mcc: the golden set's MCC fell 0.03 (at most 0.01)",
                                       "site_mcc: no gain on the site's validation part"], "crack-student 1.2.0",
                                      parent, by="tester")
    dialog.show()
    hint = dialog.sizeHint()
    assert fit_problems(dialog, (hint.width(), hint.height()), themed) == []
