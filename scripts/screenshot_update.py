"""Screenshots of Update model for the docs: ``docs/screenshots/update-progress.png`` (mid-run, with
the curves) and ``update-result.png`` (the before/after table and the verdict).

A temporary flag store of real frames of the sample video (36 flags: 24 reviewed, 4 unsure, 8
unreviewed; a few tiles corrected by the "inspector"), the real ``distill update`` on a short
run with several small epochs (so the curves have points; a few minutes on 2 cores), no device
(a passed gate swaps the model into this process's engine holder). Needs a display; headless:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_update.py
"""
from __future__ import annotations

import sys
import time

from shots import SCREENSHOTS, application, parser, sandbox, save, wait

RUN = ["--epochs", "5", "--teacher-epochs", "3", "--max-steps", "4", "--max-unlabelled", "64", "--replay-ratio", "0.25"]


def fill_store(store, engine) -> None:
    """36 flags of sample-video frames: 24 reviewed (a few tiles corrected), 4 unsure, 8 unreviewed."""
    import cv2

    from inspector.paths import sample_video
    from inspector.store.database import ModelRef

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


def finished(dialog) -> bool:
    """The run is over and the dialog shows its end: the deploy result, the override, a refusal or an error."""
    return dialog.state is not None and dialog.state.finished and (
        dialog.deploy_text or dialog.override_button.isVisible() or dialog.deploy_label.text().startswith("✗")
        or dialog.state.outcome in ("error", "cancelled"))


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, SCREENSHOTS)
    p.add_argument("--program", nargs="+", help="stand-in for distill (e.g. python tests/fake_update.py)")
    p.add_argument("--timeout", type=float, default=1800.0)
    args = p.parse_args(argv)

    from inspector.edge.engine import InferenceEngine
    from inspector.paths import default_model
    from inspector.qt.update.view import UpdateDialog
    from inspector.update.history import ModelHistory

    application()
    engines = [InferenceEngine(default_model(), threads=2)]
    deadline = time.monotonic() + args.timeout
    with sandbox("update-screenshot-") as box:
        fill_store(box.store, engines[0])
        dialog = UpdateDialog(box.store, engine=lambda: engines[-1], swap_engine=engines.append,
                              history=ModelHistory(box.root / "data"), program=args.program, extra_args=RUN,
                              make_engine=lambda path: InferenceEngine(path, threads=2))
        dialog.resize(1280, 900)
        dialog.show()

        def curves_or_end() -> bool:
            if dialog.state is None and dialog.start_button.isEnabled():
                dialog.start()
            if dialog.state is None:
                return False
            return len(dialog.state.curves.get("student", [])) >= 3 or finished(dialog)

        if wait(deadline - time.monotonic(), curves_or_end, interval_ms=250) and not finished(dialog):
            wait(0.3)
            save(dialog, args.out / "update-progress.png")
        ended = wait(deadline - time.monotonic(), lambda: finished(dialog), interval_ms=250)
        if ended:
            wait(0.5)
            save(dialog, args.out / "update-result.png")
        print(f"outcome: {dialog.state.outcome if dialog.state else 'not started'}; {dialog.verdict.text()}; "
              f"{dialog.deploy_label.text()}")
        dialog.shutdown()
    return 0 if ended else 1


if __name__ == "__main__":
    sys.exit(main())
