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

import sys
import time
from pathlib import Path

from shots import SCREENSHOTS, application, main_window, parser, sample_source, sandbox, save, shipped_engine, wait


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, SCREENSHOTS / "demo.png", size="1600x1000")
    p.add_argument("--data", type=Path, help="the demo device's data folder (default: the per-user one)")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--min-seconds", type=float, default=8.0,
                   help="run at least this long (the sample video's crack stretch starts at 5 s)")
    args = p.parse_args(argv)

    application()
    engine = shipped_engine(1)
    with sandbox("inspector-demo-screenshot-") as box, \
            main_window(box, engine, sample_source(), size=args.size,
                        location="Demo: sample inspection video") as window:
        t0 = time.monotonic()
        window.start_demo(**({"data": args.data} if args.data else {}))
        state = {"first": None, "manual": False, "ok": False}

        def done() -> bool:
            live = window.view.live
            on_device = window.device is not None and live is not None and live.link is not None
            if on_device and state["first"] is None:
                state["first"] = time.monotonic() - t0
            if on_device and not state["manual"] and window.frames_shown >= 3:
                state["manual"] = window.flag_now()
            cracks = 0 if not on_device else sum(t.crack_prob >= window.view.threshold for t in live.result.tiles)
            state["ok"] = (on_device and time.monotonic() - t0 >= args.min_seconds and len(window.flags) >= 2
                           and cracks >= 4 and window.device_panel.fields["provider"].text() != "—")
            failed = window.demo.state == "off" and window.device is None and time.monotonic() - t0 > 5
            return state["ok"] or failed

        wait(args.timeout, done, interval_ms=100)
        saved = save(window, args.out)
        first = f"{state['first']:.1f} s" if state["first"] is not None else "never"
        print(f"{'saved' if saved else 'could not save'} {args.out}: demo device start to first frame on screen "
              f"{first}; {window.frames_shown} frames shown, {len(window.flags)} flags"
              + ("" if state["ok"] else f" (did not get there: {window.error_banner.text.text()})"))
    return 0 if saved and state["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
