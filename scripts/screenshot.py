"""Screenshot of the live window for the docs: ``docs/screenshots/live.png``.

Starts the real app window on the default source (the sample video where there is no camera),
flags into a temporary store, waits until results and flags have arrived and a crack is on
screen, saves the window with ``QWidget.grab()`` and exits. Needs a display; headless:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot.py [--out PATH]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots" / "live.png")
    p.add_argument("--source", help="as for the inspector command (default: camera, else the sample video)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", default="1600x1000", help="window size WxH")
    p.add_argument("--timeout", type=float, default=90.0)
    p.add_argument("--min-seconds", type=float, default=7.0,
                   help="run at least this long (the sample video's crack stretch starts at 5 s)")
    args = p.parse_args(argv)

    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from inspector.qt import theme
    from inspector.qt.main import load_engine, make_window, resolve_source
    from inspector.store.database import FlagStore

    app = QApplication.instance() or QApplication(["inspector"])
    theme.apply(app)
    engine = load_engine(None, args.threads)
    source, notice = resolve_source(args.source)
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="inspector-screenshot-") as tmp:
        store = FlagStore(Path(tmp) / "flags")
        window = make_window(engine, store, source, notice)
        window.resize(width, height)
        window.fields.location.setText("Quay wall, bay 4")
        window.show()
        window.start()

        t0 = time.monotonic()
        loop = QEventLoop()
        state = {"manual": False, "ok": False}

        def tick():
            live = window.view.live
            if not state["manual"] and window.frames_shown >= 3:
                state["manual"] = window.flag_now()
            cracks = 0 if live is None else sum(t.crack_prob >= window.view.threshold for t in live.result.tiles)
            enough = (time.monotonic() - t0 >= args.min_seconds and window.frames_shown >= 10
                      and len(window.flags) >= 3 and cracks >= 6)
            if enough or time.monotonic() - t0 > args.timeout:
                state["ok"] = enough
                loop.quit()

        timer = QTimer(interval=100, timeout=tick)
        timer.start()
        loop.exec()
        timer.stop()
        window.hud.refresh()
        app.processEvents()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        saved = window.grab().save(str(args.out))
        meter = window.hud.meter
        print(f"{'saved' if saved else 'could not save'} {args.out}: {window.frames_shown} frames shown, "
              f"{len(window.flags)} flags, {meter.fps():.1f} fps displayed, "
              f"latency {meter.latency_ms() or 0:.0f} ms" + ("" if state["ok"] else " (timed out waiting)"))
        window.shutdown()
        window.close()
        store.close()
    return 0 if saved and state["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
