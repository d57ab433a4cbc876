"""The ``inspector`` command: the live inspection window (and ``--selftest``).

    inspector [--source CAMERA|FILE|URL|PIPELINE] [--model PKG.crackpkg] [--store DIR]
              [--threads N] [--teachers PKG | --no-teachers] [--selftest]
    inspector --device HOST:PORT [...]
    inspector --demo [...]
    inspector [--store DIR] --export-flags OUT_DIR [--include-unreviewed]
    inspector [--store DIR] --report OUT.pdf|OUT.html [--report-location L]
              [--report-since DATE] [--report-until DATE] [--report-title TITLE]

Without ``--source`` the first camera found is used, else the shipped sample video (the window
then says so and offers the source chooser). ``--device`` opens on a device paired earlier
(Device panel → Pair…): its stream, verdicts and model; "Disconnect" goes to ``--source`` or the
sample video. ``--demo`` starts a device agent on this laptop (loopback, the sample video, the
shipped model; :mod:`inspector.link.demo`), pairs with it with the code it wrote to its data folder and
opens on it, as ``--device`` would; it is stopped when the window closes. Stored flags are
scored by the teacher ensemble on a low-priority background thread
(``inspector/review/teacher_scorer.py``; the shipped ``models/crack-teachers-X.Y.Z.crackpkg`` unless
``--teachers`` or ``--no-teachers``), for the review's disagreement ranking.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from inspector.qt.startup import (
    load_engine,
    make_scorer,
    resolve_device,
    resolve_source,
    resolve_teachers,
)

def at_least_one(text: str) -> int:
    """argparse type: a whole number ≥ 1 (``--threads 0`` would leave inference no thread)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (1 or more)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def configure_logging(quiet: bool = False) -> None:
    """The app logs what it does (INFO; ``quiet``: the self-test, whose report is its output, only
    warnings); the libraries it uses only their warnings: fontTools alone wrote 75 INFO lines per
    report when the root logger was at INFO."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("inspector").setLevel(logging.WARNING if quiet else logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inspector", description="Live concrete-crack inspection.")
    p.add_argument("--source", help="camera index, video file, rtsp/http URL or GStreamer pipeline "
                                    "(default: the first camera, else the sample video)")
    p.add_argument("--device", metavar="HOST:PORT",
                   help="open on this paired device agent (pair first in the Device panel)")
    p.add_argument("--demo", action="store_true",
                   help="no device at hand: start a demo device agent on this laptop (loopback, the sample video, "
                        "the shipped model), pair with it and open on it; it stops with the app")
    p.add_argument("--model", type=Path, help="model package (.crackpkg; default: the shipped INT8 student)")
    p.add_argument("--store", type=Path, help="flag store folder (default: per-user data folder)")
    p.add_argument("--threads", type=at_least_one, default=None,
                   help="inference threads, 1 or more (default: the usable cores, max 4)")
    p.add_argument("--no-tile-reuse", action="store_true",
                   help="infer every tile of every frame (default: only the tiles whose content changed since "
                        "they were last inferred; the HUD shows the share)")
    p.add_argument("--teachers", type=Path, metavar="PKG",
                   help="teacher-ensemble package that scores stored flags in the background "
                        "(default: the shipped crack-teachers package, if present)")
    p.add_argument("--no-teachers", action="store_true", help="do not score flags with the teachers")
    p.add_argument("--selftest", action="store_true",
                   help="open the window offscreen, run a few seconds of the source, flag into a temporary "
                        "store, print a report; exit status 0 only if all of it worked")
    p.add_argument("--selftest-seconds", type=float, default=4.0, help=argparse.SUPPRESS)
    p.add_argument("--export-flags", type=Path, metavar="OUT_DIR",
                   help="export the store's flags as a dataset folder the distillation engine reads "
                        "(crack/, no_crack/ patches + metadata.csv/json) and exit; no window")
    p.add_argument("--include-unreviewed", action="store_true",
                   help="with --export-flags: also export unreviewed and 'unsure' frames, into unlabelled/ "
                        "(for distillation through the teachers); by default only reviewed frames are exported")
    p.add_argument("--report", type=Path, metavar="OUT.pdf|OUT.html",
                   help="write the inspection report of the store's flags (summary, then every frame reviewed "
                        "as crack) as PDF or self-contained HTML, by the extension, and exit; no window")
    p.add_argument("--report-location", metavar="L", help="with --report: only the flags of this location")
    p.add_argument("--report-since", metavar="DATE", help="with --report: flags from this ISO date or time on (UTC)")
    p.add_argument("--report-until", metavar="DATE",
                   help="with --report: flags up to this ISO date (that day included) or time (UTC)")
    p.add_argument("--report-title", metavar="TITLE", help="with --report: the report's title (e.g. the structure)")
    p.add_argument("--check-model", type=Path, metavar="PKG",
                   help="check a model package on this machine: identity, then its reference images along every "
                        "numeric path here, each against its rule, and where its references came from; no window")
    return p


def check_model(args) -> int:
    """``--check-model``: no Qt; the report on stdout; 0 if the package passes on this machine."""
    from inspector.edge.check import check_report

    ok, report = check_report(args.check_model)
    print(report)
    return 0 if ok else 1


def export_flags(args) -> int:
    """``--export-flags``: no Qt, no model; the report on stdout, a reason on stderr."""
    from inspector.store.database import FlagStore, StoreError, existing_store

    try:
        with FlagStore(existing_store(args.store)) as store:
            report = store.export_dataset(args.export_flags, include_unreviewed=args.include_unreviewed)
    except (StoreError, ValueError, OSError) as exc:
        print(f"inspector: cannot export flags: {exc}", file=sys.stderr)
        return 2
    print(f"exported {report.flags} reviewed flags as {report.patches} patches to {report.out_dir}: "
          f"{report.crack} crack, {report.no_crack} no_crack, {report.unlabelled} unlabelled "
          "(labels from the inspector's review, never the model's verdict)")
    if report.left_out:
        print(f"left out {report.left_out} unreviewed or 'unsure' flags (--include-unreviewed exports them "
              "to unlabelled/)")
    if report.needs_tiles:
        print(f"left out {len(report.needs_tiles)} frames labelled crack without tile labels: mark their "
              f"crack tiles in the review view: {', '.join(report.needs_tiles)}")
    if report.skipped:
        print(f"skipped {len(report.skipped)} flags whose frame could not be read: {', '.join(report.skipped)}")
    return 0


def write_report(args) -> int:
    """``--report``: no Qt, no model; what was written on stdout, a reason on stderr (exit 2)."""
    from inspector.report.build import build_report
    from inspector.report.content import ReportError
    from inspector.store.database import FlagStore, StoreError, existing_store

    try:
        with FlagStore(existing_store(args.store)) as store:
            summary = build_report(store, args.report, location=args.report_location, since=args.report_since,
                                   until=args.report_until, title=args.report_title)
    except (ReportError, StoreError, ValueError) as exc:
        print(f"inspector: cannot write the report: {exc}", file=sys.stderr)
        return 2
    print(summary.message())
    return 0


# Qt messages that say nothing to an operator: the offscreen platform (self-test) cannot
# resize native windows and says so for every window shown.
_QT_NOISE = ("This plugin does not support propagateSizeHints()",)


def _route_qt_messages() -> None:
    """Qt's own warnings into Python logging (one place, one format), minus known noise."""
    from PySide6.QtCore import QtMsgType, qInstallMessageHandler

    qt_log = logging.getLogger("qt")
    levels = {QtMsgType.QtDebugMsg: logging.DEBUG, QtMsgType.QtInfoMsg: logging.INFO,
              QtMsgType.QtWarningMsg: logging.WARNING, QtMsgType.QtCriticalMsg: logging.ERROR,
              QtMsgType.QtFatalMsg: logging.CRITICAL}

    def handler(kind, context, message):
        if message not in _QT_NOISE:
            qt_log.log(levels.get(kind, logging.WARNING), "%s", message)

    qInstallMessageHandler(handler)


def _quit_on_signals(app) -> None:
    """Ctrl+C / SIGTERM close the window normally (flags drained) instead of killing the process.
    Python runs signal handlers only between bytecodes, so a timer wakes the interpreter."""
    import signal

    from PySide6.QtCore import QTimer

    def quit_app(signum, frame):
        logging.getLogger(__name__).info("signal %d: closing", signum)
        app.closeAllWindows()
        app.quit()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, quit_app)
    app._signal_timer = QTimer(interval=250, timeout=lambda: None)
    app._signal_timer.start()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    report_options = [f"--report-{o}" for o in ("location", "since", "until", "title")
                      if getattr(args, f"report_{o}") is not None]
    if args.report is None and report_options:
        parser.error(f"{', '.join(report_options)} only go with --report")
    if args.report is not None and args.export_flags is not None:
        parser.error("--report and --export-flags are separate runs: give one of them")
    if args.demo and args.device:
        parser.error("--demo and --device: give one of them (the demo device is a device on this laptop)")
    if args.check_model is not None:
        return check_model(args)
    if args.export_flags is not None:
        return export_flags(args)
    if args.report is not None:
        return write_report(args)
    configure_logging(quiet=args.selftest)
    if args.selftest:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from inspector.qt.platform_check import check  # Qt aborts without its xcb libraries: name them instead
    if (missing := check()) is not None:
        print(f"inspector: {missing}", file=sys.stderr)
        return 1
    from PySide6.QtWidgets import QApplication, QMessageBox

    from inspector.qt import theme

    _route_qt_messages()
    app = QApplication.instance() or QApplication(["inspector"])
    app.setApplicationName("Crack Inspector")
    theme.apply(app)
    if args.selftest:
        from inspector.qt.selftest import run_selftest

        return run_selftest(app, args)
    try:
        device = resolve_device(args.device) if args.device else None
        engine = load_engine(args.model, args.threads)
        teachers = resolve_teachers(args.teachers, args.no_teachers)
        if (device is not None or args.demo) and args.source is None:
            from inspector.paths import sample_video
            from inspector.capture.sources import parse_source

            source, notice = parse_source(str(sample_video())), None   # no camera probing: a device is viewed
        else:
            source, notice = resolve_source(args.source)
        from inspector.store.database import FlagStore

        store = FlagStore(args.store)
    except Exception as exc:  # noqa: BLE001 - startup: say why in a dialog and on stderr, exit 2
        msg = str(exc) or type(exc).__name__      # the message, not the class (StoreError: ...)
        print(f"inspector: {msg}", file=sys.stderr)
        if app.platformName() not in ("offscreen", "minimal"):
            QMessageBox.critical(None, "Crack Inspector cannot start", msg)
        return 2
    try:
        from inspector.qt.window import make_window

        window = make_window(engine, store, source, notice, device=device, scorer=make_scorer(store, teachers),
                             tile_reuse=not args.no_tile_reuse)
        window.show()
        window.start()
        if args.demo:
            window.start_demo()       # on a job thread; the window opens meanwhile
        _quit_on_signals(app)
        rc = app.exec()
        window.shutdown()
    finally:
        store.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
