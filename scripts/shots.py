"""What the screenshot scripts share: the themed application, a sandbox, the app window, waiting, saving.

Each ``screenshot*.py`` keeps only what it shows. Here: the command line every one of them has
(``--out``, ``--size``), the ``QApplication`` with the app's theme, a sandbox (a temporary folder
with a flag store; the saved devices there too, so a screenshot never shows the user's), the
main window as ``inspector`` opens it (shown and started, shut down on exit), waiting on the
event loop until something is on screen, and saving a widget with ``QWidget.grab()``.
Imported from the scripts' folder (``from shots import ...``); Qt is imported in the functions.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "docs" / "screenshots"
sys.path.insert(0, str(REPO))


def parser(doc: str | None, out: Path, size: str | None = None, out_help: str | None = None) -> argparse.ArgumentParser:
    """The script's command line with ``--out`` (default ``out``) and, given a default, ``--size WxH``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=out, help=out_help)
    if size is not None:
        p.add_argument("--size", default=size, help="window size WxH")
    return p


def window_size(text: str) -> tuple[int, int]:
    """``"1600x1000"`` → ``(1600, 1000)``."""
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def application():
    """The ``QApplication`` (made once) with the app's theme."""
    from PySide6.QtWidgets import QApplication

    from inspector.qt import theme

    app = QApplication.instance() or QApplication(["inspector"])
    theme.apply(app)
    return app


def shipped_engine(threads: int):
    """The shipped student, loaded as the ``inspector`` command loads it."""
    from inspector.qt.startup import load_engine

    return load_engine(None, threads)


def sample_source():
    """The sample inspection video as a source."""
    from inspector.capture.sources import parse_source
    from inspector.paths import sample_video

    return parse_source(str(sample_video()))


@dataclass
class Sandbox:
    """A temporary folder (``root``) and the flag store in it."""

    root: Path
    store: object


@contextmanager
def sandbox(prefix: str) -> Iterator[Sandbox]:
    """A temporary folder with a flag store in ``flags``; the store is closed and the folder removed on exit."""
    from inspector.store.database import FlagStore

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        store = FlagStore(Path(tmp) / "flags")
        try:
            yield Sandbox(Path(tmp), store)
        finally:
            store.close()


@contextmanager
def main_window(box: Sandbox, engine, source, *, size: str, location: str | None = None,
                notice: str | None = None, flagger=None) -> Iterator:
    """The main window on ``box``'s store (default flagging rules unless ``flagger``), its saved devices
    in the sandbox and no device discovery, resized, shown and started; shut down and closed on exit."""
    from inspector.link.pairing import PairingStore
    from inspector.live.flagging import Flagger
    from inspector.qt.window import MainWindow

    window = MainWindow(engine, box.store, flagger or Flagger(), source, notice=notice,
                        pairings=PairingStore(box.root / "config"), browse=lambda timeout: [])
    window.resize(*window_size(size))
    if location is not None:
        window.fields.location.setText(location)
    window.show()
    window.start()
    try:
        yield window
    finally:
        window.shutdown()
        window.close()


def wait(seconds: float, until: Callable[[], bool] | None = None, interval_ms: int = 50) -> bool:
    """Run the event loop until ``until()`` holds (asked every ``interval_ms``; it may act, e.g. take
    a flag) or ``seconds`` have passed; returns whether it held. Without ``until``: just ``seconds``."""
    from PySide6.QtCore import QEventLoop, QTimer

    t0 = time.monotonic()
    loop = QEventLoop()
    held = False

    def tick() -> None:
        nonlocal held
        if until is not None and until():
            held = True
            loop.quit()
        elif time.monotonic() - t0 >= seconds:
            loop.quit()

    timer = QTimer(interval=interval_ms, timeout=tick)
    timer.start()
    loop.exec()
    timer.stop()
    return held


def save(widget, path: Path) -> bool:
    """Save ``widget`` as it is on screen (the main window's HUD refreshed first) to ``path``."""
    from PySide6.QtWidgets import QApplication

    hud = getattr(widget, "hud", None)
    if hud is not None:
        hud.refresh()
    QApplication.processEvents()
    path.parent.mkdir(parents=True, exist_ok=True)
    return widget.grab().save(str(path))
