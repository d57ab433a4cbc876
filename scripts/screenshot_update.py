"""Screenshots of Update model for the docs: ``docs/screenshots/update-progress.png`` (mid-run, with
the curves) and ``update-result.png`` (the before/after table and the verdict).

A temporary flag store of real frames of the sample video (36 flags: 24 reviewed, 4 unsure, 8
unreviewed; a few tiles corrected by the "inspector"), the real ``distill update`` on a short
run with several small epochs (so the curves have points; a few minutes on 2 cores), no device
(a passed gate swaps the model into this process's engine holder). Needs a display; headless:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_update.py
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RUN = ["--epochs", "5", "--teacher-epochs", "3", "--max-steps", "4", "--max-unlabelled", "64", "--replay-ratio", "0.25"]


def make_store(root: Path, engine):
    import cv2

    from inspector.paths import sample_video
    from inspector.store.database import FlagStore, ModelRef

    store = FlagStore(root)
    m = engine.manifest
    model = ModelRef(m.name, m.version, m.model_sha256)
    cap = cv2.VideoCapture(str(sample_video()))
    k = i = 0
    while k < 36:
        ok, bgr = cap.read()
        if not ok:
            break
        i += 1
        if i % 15:
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        result = engine.inspect(rgb)
        rec = store.add(rgb, result.heatmap, result.tiles, reason="manual", source="camera 0", model=model,
                        crack_prob_max=result.crack_prob_max, location="Quay wall, bay 4")
        if k < 24:
            tiles = ["crack" if t.crack_prob >= 0.5 else "no_crack" for t in result.tiles]
            if k % 5 == 0:   # the inspector corrects the model's least sure tile
                j = min(range(len(tiles)), key=lambda n: abs(result.tiles[n].crack_prob - 0.5))
                tiles[j] = "no_crack" if tiles[j] == "crack" else "crack"
            store.set_review(rec.id, label="crack" if "crack" in tiles else "no_crack", tile_labels=tiles,
                             reviewer="inspector")
        elif k < 28:
            store.set_review(rec.id, label="unsure", reviewer="inspector")
        k += 1
    cap.release()
    return store


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    p.add_argument("--program", nargs="+", help="stand-in for distill (e.g. python tests/fake_update.py)")
    p.add_argument("--timeout", type=float, default=1800.0)
    args = p.parse_args(argv)

    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from inspector.edge.engine import InferenceEngine
    from inspector.update.history import ModelHistory
    from inspector.paths import default_model
    from inspector.qt import theme
    from inspector.qt.update.view import UpdateDialog

    app = QApplication.instance() or QApplication(["inspector"])
    theme.apply(app)
    engines = [InferenceEngine(default_model(), threads=2)]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="update-screenshot-") as tmp:
        store = make_store(Path(tmp) / "flags", engines[0])
        dialog = UpdateDialog(store, engine=lambda: engines[-1], swap_engine=engines.append,
                              history=ModelHistory(Path(tmp) / "data"), program=args.program, extra_args=RUN,
                              make_engine=lambda path: InferenceEngine(path, threads=2))
        dialog.resize(1280, 900)
        dialog.show()
        loop = QEventLoop()
        state = {"progress": False, "end": False}

        def tick():
            if dialog.state is None and dialog.start_button.isEnabled():
                dialog.start()
            if dialog.state is None:
                return
            student = dialog.state.curves.get("student", [])
            if not state["progress"] and len(student) >= 3:
                state["progress"] = True
                QTimer.singleShot(300, lambda: dialog.grab().save(str(args.out / "update-progress.png")))
            if dialog.state.finished and (dialog.deploy_text or dialog.override_button.isVisible()
                                          or dialog.deploy_label.text().startswith("✗")
                                          or dialog.state.outcome in ("error", "cancelled")):
                if not state["end"]:
                    state["end"] = True
                    QTimer.singleShot(500, lambda: (dialog.grab().save(str(args.out / "update-result.png")),
                                                    loop.quit()))

        timer = QTimer(interval=250, timeout=tick)
        timer.start()
        QTimer.singleShot(int(args.timeout * 1000), loop.quit)
        loop.exec()
        timer.stop()
        print(f"outcome: {dialog.state.outcome if dialog.state else 'not started'}; {dialog.verdict.text()}; "
              f"{dialog.deploy_label.text()}")
        dialog.shutdown()
        store.close()
    return 0 if state["end"] else 1


if __name__ == "__main__":
    sys.exit(main())
