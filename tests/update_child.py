"""Child process of test_update_view: a whole update run (the fake job) in a fresh app process,
then whether torch or the distillation engine was imported. Prints one JSON line.

    python tests/update_child.py STORE_DIR DATA_DIR
"""
import json
import sys
from pathlib import Path

from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QApplication

from inspector.edge.engine import InferenceEngine
from inspector.update.history import ModelHistory
from inspector.paths import default_model
from inspector.qt.update.view import UpdateDialog
from inspector.store.database import FlagStore

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    app = QApplication([])
    store = FlagStore(sys.argv[1])
    engines = [InferenceEngine(default_model(), threads=1)]
    dialog = UpdateDialog(store, engine=lambda: engines[-1], swap_engine=engines.append,
                          history=ModelHistory(sys.argv[2]), program=[sys.executable, str(REPO / "tests" / "fake_update.py")],
                          make_engine=lambda p: InferenceEngine(p, threads=1))
    out = {}
    loop = QEventLoop()
    dialog.updateFinished.connect(lambda outcome: out.update(outcome=outcome))
    dialog.deployed.connect(lambda text: (out.update(deployed=text), loop.quit()))
    dialog.deployFailed.connect(lambda text: (out.update(deployed=text), loop.quit()))
    dialog.show()
    QTimer(dialog, interval=100, timeout=lambda: dialog.start_button.isEnabled() and not dialog.state
           and dialog.start()).start()
    QTimer.singleShot(150000, loop.quit)
    loop.exec()
    out["torch"] = "torch" in sys.modules
    out["distill"] = any(m == "distill" or m.startswith("distill.") for m in sys.modules)
    store.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
