"""Screenshot of the live window for the docs: ``docs/screenshots/live.png``.

Starts the real app window on the default source (the sample video where there is no camera),
flags into a temporary store, waits until results and flags have arrived and a crack is on
screen, saves the window with ``QWidget.grab()`` and exits. Needs a display; headless:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot.py [--out PATH]
"""
from __future__ import annotations

import sys
import time

from shots import SCREENSHOTS, application, main_window, parser, sandbox, save, shipped_engine, wait


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, SCREENSHOTS / "live.png", size="1600x1000")
    p.add_argument("--source", help="as for the inspector command (default: camera, else the sample video)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=90.0)
    p.add_argument("--min-seconds", type=float, default=7.0,
                   help="run at least this long (the sample video's crack stretch starts at 5 s)")
    args = p.parse_args(argv)

    from inspector.qt.startup import resolve_source

    application()
    engine = shipped_engine(args.threads)
    source, notice = resolve_source(args.source)
    with sandbox("inspector-screenshot-") as box, \
            main_window(box, engine, source, size=args.size, location="Quay wall, bay 4", notice=notice) as window:
        t0 = time.monotonic()
        manual = False

        def ready() -> bool:
            nonlocal manual
            live = window.view.live
            if not manual and window.frames_shown >= 3:
                manual = window.flag_now()
            cracks = 0 if live is None else sum(t.crack_prob >= window.view.threshold for t in live.result.tiles)
            return (time.monotonic() - t0 >= args.min_seconds and window.frames_shown >= 10
                    and len(window.flags) >= 3 and cracks >= 6)

        ok = wait(args.timeout, ready, interval_ms=100)
        saved = save(window, args.out)
        meter = window.hud.meter
        print(f"{'saved' if saved else 'could not save'} {args.out}: {window.frames_shown} frames shown, "
              f"{len(window.flags)} flags, {meter.fps():.1f} fps displayed, "
              f"latency {meter.latency_ms() or 0:.0f} ms" + ("" if ok else " (timed out waiting)"))
    return 0 if saved and ok else 1


if __name__ == "__main__":
    sys.exit(main())
