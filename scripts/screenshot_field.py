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

import sys

from shots import (SCREENSHOTS, application, main_window, parser, sample_source, sandbox, save, shipped_engine,
                   wait, window_size)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, SCREENSHOTS, size="1366x688")
    p.add_argument("--timeout", type=float, default=180.0)
    args = p.parse_args(argv)

    application()
    engine = shipped_engine(1)
    tag = f"window-{window_size(args.size)[0]}"
    ok = True
    with sandbox("inspector-field-screenshot-") as box, \
            main_window(box, engine, sample_source(), size=args.size, location="Quay wall, bay 4") as w:

        def shot(name: str) -> None:
            nonlocal ok
            path = args.out / f"{tag}-{name}.png"
            saved = save(w, path)
            ok = ok and saved
            print(f"{'saved' if saved else 'could not save'} {path}: window {w.width()}×{w.height()}, "
                  f"minimum {w.minimumSizeHint().width()}×{w.minimumSizeHint().height()}")

        ok &= wait(args.timeout, lambda: len(w.flags) >= 3 and w.frames_shown >= 10)
        shot("live")
        w.workspaces.setCurrentIndex(1)
        wait(3.0)                                       # thumbnails decode in the background
        shot("review")
        w.workspaces.setCurrentIndex(0)
        w.start_demo(data=box.root / "demo", threads=1)
        ok &= wait(args.timeout, lambda: w.device is not None and w.view.live is not None
                   and w.view.live.link is not None and w.device_panel.fields["provider"].text() != "—")
        wait(2.0)
        shot("device")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
