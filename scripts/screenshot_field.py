"""Screenshots of the window on a field laptop's screen: ``docs/screenshots/window-1366-{live,review,device}.png``.

The window at the client area a maximised window gets on a 1366×768 screen at 100 % scaling (a
48-px task bar and a 32-px title bar off the height: 1366×688, see ``tests/layout_check.py``):
the Live workspace on the sample video with its automatic flags, the Review workspace, and the
Live workspace's Device tab connected to the demo device (``inspector --demo``; the pairing goes
to a temporary store, the demo device's data folder is a temporary one). Runs offscreen or on a
display:

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/screenshot_field.py [--size 1366x688]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def wait(app, cond, timeout: float) -> bool:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return False
        app.processEvents()
        time.sleep(0.05)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    p.add_argument("--size", default="1366x688", help="window client size WxH")
    p.add_argument("--timeout", type=float, default=180.0)
    args = p.parse_args(argv)

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
    tag = f"window-{width}"
    args.out.mkdir(parents=True, exist_ok=True)
    ok = True
    with tempfile.TemporaryDirectory(prefix="inspector-field-screenshot-") as tmp:
        store = FlagStore(Path(tmp) / "flags")
        w = MainWindow(engine, store, Flagger(), parse_source(str(sample_video())),
                       pairings=PairingStore(Path(tmp) / "config"), browse=lambda timeout: [])
        w.resize(width, height)
        w.fields.location.setText("Quay wall, bay 4")
        w.show()
        w.start()

        def shot(name: str) -> None:
            nonlocal ok
            w.hud.refresh()
            app.processEvents()
            path = args.out / f"{tag}-{name}.png"
            saved = w.grab().save(str(path))
            ok = ok and saved
            print(f"{'saved' if saved else 'could not save'} {path}: window {w.width()}×{w.height()}, "
                  f"minimum {w.minimumSizeHint().width()}×{w.minimumSizeHint().height()}")

        ok &= wait(app, lambda: len(w.flags) >= 3 and w.frames_shown >= 10, args.timeout)
        shot("live")
        w.workspaces.setCurrentIndex(1)
        wait(app, lambda: False, 3.0)                   # thumbnails decode in the background
        shot("review")
        w.workspaces.setCurrentIndex(0)
        w.start_demo(data=Path(tmp) / "demo", threads=1)
        ok &= wait(app, lambda: w.device is not None and w.view.live is not None and w.view.live.link is not None
                   and w.device_panel.fields["provider"].text() != "—", args.timeout)
        wait(app, lambda: False, 2.0)
        shot("device")
        w.shutdown()
        w.close()
        store.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
