"""Every dialog as it opens on a 1366×768 laptop: ``docs/screenshots/dialog-1366-<name>.png``.

Each dialog takes the size it takes on that screen (its wish, fitted to the free area less the
window frame: :func:`inspector.qt.screen_fit.fitted_size`), with real content: Update model's plan
on a store of real sample-video flags (the same as ``screenshot_update.py``), Model history with
the shipped model, the review keys, pairing, the expert override of a refused candidate, and the
rollback question. Offscreen is enough (``QWidget.grab()``):

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/screenshot_dialogs.py
"""
from __future__ import annotations

from shots import SCREENSHOTS, application, parser, sandbox, save, wait

FREE_1366 = (1366, 768 - 48)   # a 1366×768 screen less a task bar


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, SCREENSHOTS).parse_args(argv)

    from PySide6.QtCore import QSize
    from PySide6.QtWidgets import QWidget

    from inspector.edge.engine import InferenceEngine
    from inspector.paths import default_model
    from inspector.qt.device.override_dialog import ExpertOverrideDialog
    from inspector.qt.confirm import question_box
    from inspector.qt.device.pair_dialog import PairDialog
    from inspector.qt.review.keys import KeysDialog
    from inspector.qt.screen_fit import fitted_size
    from inspector.qt.update.history_view import PREFERRED_SIZE as HISTORY_SIZE, ModelHistoryDialog
    from inspector.qt.update.view import PREFERRED_SIZE as UPDATE_SIZE, UpdateDialog
    from inspector.update.history import ModelHistory
    from screenshot_update import fill_store

    application()
    engine = InferenceEngine(default_model(), threads=2)
    free = QSize(*FREE_1366)
    ok = True

    def shoot(name: str, dialog, preferred) -> None:
        nonlocal ok
        dialog.resize(fitted_size(dialog, preferred, available=free))
        dialog.show()
        wait(0.5)
        ok &= save(dialog, args.out / f"dialog-1366-{name}.png")
        dialog.close()

    with sandbox("dialog-screenshots-") as box:
        fill_store(box.store, engine)
        history = ModelHistory(box.root / "data")
        update = UpdateDialog(box.store, engine=lambda: engine, swap_engine=lambda e: None, history=history)
        update.show()
        wait(30.0, until=lambda: update.start_button.isEnabled() or update.plan is not None)
        shoot("update-plan", update, UPDATE_SIZE)
        shoot("model-history", ModelHistoryDialog(history, engine=lambda: engine, swap_engine=lambda e: None),
              HISTORY_SIZE)
        parent = QWidget()
        shoot("review-keys", KeysDialog(parent), (920, 720))
        pair = PairDialog("192.168.1.20:8443", "3f" * 32, parent, advertised="pier-3 (Jetson)")
        shoot("pair", pair, (pair.sizeHint().width(), pair.sizeHint().height()))
        override = ExpertOverrideDialog(["golden_mcc: the golden set's MCC fell 0.030 (at most 0.010)",
                                         "site_mcc: no gain on the site's validation part (0.950 → 0.950)"],
                                        "crack-student 1.2.0", parent, by="inspector")
        shoot("push-anyway", override, (override.sizeHint().width(), override.sizeHint().height()))
        question, _ = question_box(parent, "Roll back the device", "Roll pier-3 back to crack-student-1.1.1-int8?"
                                   "\n\nThe model active now stays stored on the device and can be made active "
                                   "again here.", "Roll back")
        shoot("rollback-question", question, (question.sizeHint().width(), question.sizeHint().height()))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
