"""Screenshot of the app on its demo device for the docs: ``docs/screenshots/demo.png``.

What ``inspector --demo`` does: the window opens, the demo device (the device agent on loopback,
the sample video, the shipped model) is started, paired with the code it wrote to its data folder
and viewed. Waits until the device's verdicts are on screen with a crack, a flag has been taken
and the Device panel shows the device's status, then saves the window with ``QWidget.grab()``.
The pairing goes to a temporary store (the user's saved devices are not touched); the demo
device's data folder is the usual per-user one unless ``--data``. Needs a display; headless:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_demo.py [--out PATH]

Prints the time from the start of the demo device to its first frame on screen.
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
    p.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots" / "demo.png")
    p.add_argument("--data", type=Path, help="the demo device's data folder (default: the per-user one)")
    p.add_argument("--size", default="1600x1000", help="window size WxH")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--min-seconds", type=float, default=8.0,
                   help="run at least this long (the sample video's crack stretch starts at 5 s)")
    args = p.parse_args(argv)

    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from inspector.link.client import PairingStore
    from inspector.live.flagging import Flagger
    from inspector.paths import sample_video
    from inspector.qt import theme
    from inspector.qt.main import load_engine
    from inspector.qt.window import MainWindow
    from inspector.capture.sources import parse_source
    from inspector.store.database import FlagStore

    app = QApplication.instance() or QApplication(["inspector"])
    theme.apply(app)
    engine = load_engine(None, 1)
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="inspector-demo-screenshot-") as tmp:
        store = FlagStore(Path(tmp) / "flags")
        window = MainWindow(engine, store, Flagger(), parse_source(str(sample_video())),
                            pairings=PairingStore(Path(tmp) / "config"), browse=lambda timeout: [])
        window.resize(width, height)
        window.fields.location.setText("Demo: sample inspection video")
        window.show()
        window.start()
        t0 = time.monotonic()
        window.start_demo(**({"data": args.data} if args.data else {}))

        loop = QEventLoop()
        state = {"first": None, "manual": False, "ok": False}

        def tick():
            live = window.view.live
            on_device = window.device is not None and live is not None and live.link is not None
            if on_device and state["first"] is None:
                state["first"] = time.monotonic() - t0
            if on_device and not state["manual"] and window.frames_shown >= 3:
                state["manual"] = window.flag_now()
            cracks = 0 if not on_device else sum(t.crack_prob >= window.view.threshold for t in live.result.tiles)
            panel = window.device_panel
            enough = (on_device and time.monotonic() - t0 >= args.min_seconds and len(window.flags) >= 2
                      and cracks >= 4 and panel.fields["provider"].text() != "—")
            failed = window.demo.state == "off" and window.device is None and time.monotonic() - t0 > 5
            if enough or failed or time.monotonic() - t0 > args.timeout:
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
        first = f"{state['first']:.1f} s" if state["first"] is not None else "never"
        print(f"{'saved' if saved else 'could not save'} {args.out}: demo device start to first frame on screen "
              f"{first}; {window.frames_shown} frames shown, {len(window.flags)} flags"
              + ("" if state["ok"] else f" (did not get there: {window.error_banner.text.text()})"))
        window.shutdown()
        window.close()
        store.close()
    return 0 if saved and state["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
