"""The desktop window (offscreen, pytest-qt): frames, verdicts, flags, controls, broken sources,
and ``inspector --selftest`` as a subprocess."""
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.edge.numerics import int8_isa
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage

from inspector.edge.engine import FrameResult, TileResult, overlay
from inspector.live.flagging import Flagger, FlagPolicy
from inspector.live.loop import LiveResult
from inspector.paths import sample_video
from inspector.qt.bridge import LiveBridge
from inspector.qt.startup import NO_CAMERA
from inspector.qt.live.view import LiveView
from inspector.qt.window import MainWindow
from inspector.capture.sources import Frame, FrameGrabber, parse_source
from layout_check import field_layout_problems, themed  # noqa: F401  (fixture)
from support import engine, store  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
NO_AUTO = FlagPolicy(auto=False)


@pytest.fixture
def open_window(qtbot, engine, store):
    """``open_window(flagger=..., grabber=..., notice=...)``: a shown, started window on the
    sample video; shut down (flags drained) before the store closes."""
    windows = []

    def make(*, flagger=None, grabber=None, notice=None):
        w = MainWindow(engine, store, flagger or Flagger(NO_AUTO), parse_source(sample_video()),
                       grabber=grabber, notice=notice)
        qtbot.addWidget(w)
        w.show()
        w.start()
        windows.append(w)
        return w

    yield make
    for w in windows:
        w.shutdown()


def as_array(img: QImage) -> np.ndarray:
    img = img.convertToFormat(QImage.Format_RGB888)
    h, w = img.height(), img.width()
    return np.frombuffer(img.constBits(), np.uint8).reshape(h, img.bytesPerLine())[:, : w * 3].reshape(h, w, 3).copy()


def test_window_opens_on_the_sample_video_and_shows_verdicts(open_window, qtbot, engine):
    w = open_window(notice=NO_CAMERA)
    assert w.notice.isVisible() and "No camera found" in w.notice.text.text()
    assert w.notice.action.isVisible()                     # "Choose source…"
    qtbot.waitUntil(lambda: w.frames_shown >= 3, timeout=20000)
    live = w.view.live
    assert live.frame.source == "sample_inspection.avi" and live.result.tiles
    w.hud.refresh()
    assert w.hud.model.value.text() == f"{engine.manifest.name} {engine.manifest.version}"
    precision = engine.manifest.quantization.type.split("-")[0].upper()
    # provider, the CPU's integer ISA and the variant's precision
    assert w.hud.provider.value.text() == f"CPU · {int8_isa()} · {precision}"
    qtbot.waitUntil(lambda: w.frames_shown >= 10, timeout=20000)
    w.hud.refresh()
    share = w.hud.inference.value.text()                              # "  12 ms ·  25 % tiles"
    assert share.endswith("% tiles") and 0 < float(share.split("·")[1].split("%")[0]) < 100
    stats = w.flagger.stats
    assert w.hud.flags.value.text() == f"{stats.kept + stats.manual} kept · {stats.suppressed} suppressed"
    assert "rule cpu-" in w.hud.provider.value.toolTip() and "passed" in w.hud.provider.value.toolTip()
    assert w.hud.source.value.text() == "sample_inspection.avi"
    assert w.hud.fps.value.text().endswith("fps") and w.hud.meter.latency_ms() > 0
    assert w.errors == []


def test_space_flags_the_frame_on_screen(open_window, qtbot, store):
    w = open_window()
    qtbot.waitUntil(lambda: w.frames_shown >= 1, timeout=20000)
    w.fields.location.setText("Pier 3, north face")
    w.activateWindow()
    w.view.setFocus()
    with qtbot.waitSignal(w.flagShown, timeout=10000) as blocker:
        qtbot.keyClick(w.view, Qt.Key_Space)
    record = blocker.args[0]
    assert record.reason == "manual" and record.location == "Pier 3, north face"
    assert store.get(record.id) == record
    assert w.flags_panel.ids[0] == record.id and w.flags_panel.count_label.text() == "1 stored"
    assert w.view._toast is not None and f"#{record.id}" in w.view._toast[0]


def test_the_window_remembers_the_stores_flags(open_window, qtbot, store, engine):
    """A session on a store with flags: their views are loaded into the flagger in the
    background, so the automatic rules do not flag them again; the HUD says how many."""
    from inspector.store.database import ModelRef

    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[200:280, :, :] = 200                              # some structure: not a featureless view
    for _ in range(2):
        store.add(frame, np.zeros((480, 640), np.float32), [{"box": [0, 0, 640, 480], "crack_prob": 0.9}],
                  reason="manual", source="camera 0", model=ModelRef("m", "1", "cd" * 32), crack_prob_max=0.9)
    w = open_window(flagger=Flagger())
    qtbot.waitUntil(lambda: w.flagger.stats.remembered == 2, timeout=20000)
    assert w.flag_memory.wait(10) and w.flag_memory.loaded == 2
    w.hud.refresh()
    assert "2 remembered from the store" in w.hud.flags.value.toolTip()


def test_automatic_flags_appear_in_the_panel(open_window, qtbot, store):
    w = open_window(flagger=Flagger(FlagPolicy(crack_threshold=1e-6, window_s=0.3, duplicate_memory=0)))
    qtbot.waitUntil(lambda: len(w.flags) >= 2, timeout=20000)
    assert {r.reason for r in w.flags} == {"crack"}
    assert set(w.flags_panel.ids) >= {r.id for r in w.flags}
    assert w.flags_panel.list.count() >= 2
    icon = w.flags_panel.list.item(0).icon()
    assert not icon.isNull()                               # the thumbnail made it across


def _synthetic(threshold=0.5) -> LiveResult:
    """A 192×128 grey frame: left tile p 0.95 with a hot heat-map, middle 0.45, right 0.10."""
    rgb = np.full((128, 192, 3), 128, np.uint8)
    heat = np.zeros((128, 192), np.float32)
    heat[32:96, 16:48] = 0.95
    tiles = [TileResult((x, 0, x + 64, 128), np.array([1 - p, p], np.float32), p, np.zeros((3, 3), np.float32))
             for x, p in ((0, 0.95), (64, 0.45), (128, 0.10))]
    result = FrameResult(tiles, heat, 0.95, {"total": 1.0})
    t = time.perf_counter()
    return LiveResult(Frame(1, rgb, t, "synthetic"), result, threshold, t)


def test_view_paints_the_frame_in_its_own_colours(qtbot):
    """compose hands the view 32-bit BGRA (the backing store's format): the channel order must
    come out right on screen, with and without the heat-map."""
    view = LiveView()
    qtbot.addWidget(view)
    view.resize(384, 256)
    live = _synthetic()
    live.frame.rgb[:] = (200, 60, 20)                      # a clearly orange frame
    view.set_boxes(False)
    view.set_overlay(False)
    view.show_result(live)
    r = view.image_rect()
    shown = as_array(view.grab().toImage())[int(r.y()) + 4:int(r.bottom()) - 4, int(r.x()) + 4:int(r.right()) - 4]
    assert np.abs(shown.reshape(-1, 3).astype(int) - (200, 60, 20)).max() <= 1
    view.set_overlay(True)
    expected = overlay(live.frame.rgb, live.result.heatmap, alpha=view.settings.opacity)
    shown = as_array(view.grab().toImage())
    s = r.width() / 192
    y, x = round(r.y() + 64 * s), round(r.x() + 32 * s)    # inside the hot spot
    assert np.abs(shown[y, x].astype(int) - expected[64, 32]).max() <= 3


def test_an_auto_flag_toast_goes_with_its_crack(qtbot):
    """"Auto-flag #2: crack" is about what the frame shows: it stays while later frames show a
    crack and goes with the first one that shows none; a manual flag's toast goes after its time."""
    from inspector.qt.live.view import TOAST_MS

    view = LiveView()
    qtbot.addWidget(view)
    view.resize(384, 256)
    view.show_result(_synthetic())                         # a p 0.95 tile: crack
    view.toast("Auto-flag #2: crack  p 0.95", verdict="crack")
    view.show_result(_synthetic())                         # a later frame, still a crack
    assert view._toast is not None and view._toast[0].startswith("Auto-flag #2")
    clean = _synthetic()
    for tile in clean.result.tiles:
        tile.crack_prob = 0.1
    view.show_result(clean)
    assert view._toast is None                             # not written over a clean picture
    view.set_overlay(False)                                # the same frame re-composed is not a later frame
    view.toast("Auto-flag #3: uncertain  p 0.45", verdict="uncertain")
    view.set_overlay(True)
    assert view._toast is not None
    view.show_result(clean)
    assert view._toast is None

    view.toast("⚑ Flag #4 saved")                          # manual: about the moment, not the picture
    view.show_result(clean)
    assert view._toast is not None
    qtbot.waitUntil(lambda: view._toast is None, timeout=TOAST_MS + 5000)


def test_display_controls_change_what_is_painted(qtbot):
    view = LiveView()
    qtbot.addWidget(view)
    view.resize(384, 256)
    live = _synthetic()
    view.show_result(live)
    r = view.image_rect()
    s = r.width() / 192

    def area(x0, y0, x1, y1):                              # frame pixels -> a slice of the painted view
        return (slice(round(r.y() + y0 * s), round(r.y() + y1 * s)),
                slice(round(r.x() + x0 * s), round(r.x() + x1 * s)))

    def painted():
        return as_array(view.grab().toImage()).astype(int)

    with_heat = painted()
    view.set_overlay(False)
    plain = painted()
    hot = area(20, 40, 44, 90)                             # inside the hot spot, away from outlines
    assert np.abs(with_heat[hot] - plain[hot]).mean() > 20
    view.set_overlay(True)
    view.set_opacity(0.9)
    strong = painted()
    assert np.abs(strong[hot] - plain[hot]).mean() > np.abs(with_heat[hot] - plain[hot]).mean() + 10

    def reddish(img, box):                                 # mean red minus green inside a tile
        return float((img[box][..., 0] - img[box][..., 1]).mean())

    middle = area(80, 20, 112, 108)                        # the p 0.45 tile, away from its edges
    view.set_overlay(False)
    view.set_threshold(0.9)
    neutral = painted()                                    # 0.45 is "uncertain": amber outline only
    view.set_threshold(0.3)
    red = painted()                                        # 0.45 is now a crack: red tint
    assert reddish(red, middle) > reddish(neutral, middle) + 5
    assert view.verdict_regions()["crack"].boundingRect().width() == 128
    view.set_threshold(0.99)
    assert view.verdict_regions()["crack"].isEmpty()
    view.set_threshold(0.5)
    view.set_boxes(False)                                  # no verdicts, no overlay: the bare frame
    assert np.abs(painted()[middle] - 128).max() <= 1


def test_window_controls_reach_the_view_and_the_pipeline(open_window, qtbot):
    w = open_window()
    qtbot.waitUntil(lambda: w.frames_shown >= 1, timeout=20000)
    w.display.overlay.setChecked(False)
    assert w.view.settings.overlay is False
    w.display.opacity.set_value(0.8)
    assert w.view.settings.opacity == pytest.approx(0.8)
    w.display.threshold.set_value(0.75)
    assert w.inspector.threshold == pytest.approx(0.75) and w.view.threshold == pytest.approx(0.75)
    assert "0.75" in w.display.crack_text.text()
    shown = w.frames_shown
    qtbot.waitUntil(lambda: w.frames_shown > shown and w.view.live.threshold == pytest.approx(0.75), timeout=20000)


def test_broken_source_shows_the_message_and_recovers(open_window, qtbot):
    calls = []

    def flaky_open(spec):
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise OSError("device unplugged")
        return cv2.VideoCapture(str(spec.value))

    grabber = FrameGrabber(parse_source(sample_video()), backoff=(0.3, 0.6), open_capture=flaky_open)
    w = open_window(grabber=grabber)
    banner = w.status_banner
    qtbot.waitUntil(lambda: banner.isVisible() and banner.level == "warning", timeout=10000)
    assert "device unplugged" in banner.text.text() and "reconnecting" in banner.detail.text()
    assert w.view.live is None and "No picture from sample_inspection.avi" in w.view.placeholder
    qtbot.waitUntil(lambda: w.frames_shown >= 2, timeout=20000)
    qtbot.waitUntil(lambda: not banner.isVisible(), timeout=5000)
    assert not w.view.stale
    assert len(calls) >= 4 and w.errors == []


class DyingCapture:
    """A real capture that stops delivering frames after ``frames`` reads (a camera unplugged)."""

    def __init__(self, path, frames):
        self.cap, self.left = cv2.VideoCapture(str(path)), frames

    def read(self):
        self.left -= 1
        return self.cap.read() if self.left >= 0 else (False, None)

    def __getattr__(self, name):                          # isOpened, get, release, ...
        return getattr(self.cap, name)


def test_source_lost_mid_stream_marks_the_picture_stale_and_recovers(open_window, qtbot):
    calls = []

    def open_capture(spec):
        calls.append(spec)
        if len(calls) == 1:
            return DyingCapture(spec.value, frames=15)
        if len(calls) <= 3:
            raise OSError("device unplugged")
        return cv2.VideoCapture(str(spec.value))

    grabber = FrameGrabber(parse_source(sample_video()), backoff=(0.3, 0.6), open_capture=open_capture)
    w = open_window(grabber=grabber)
    qtbot.waitUntil(lambda: w.frames_shown >= 1, timeout=20000)
    qtbot.waitUntil(lambda: w.view.stale and w.status_banner.isVisible(), timeout=10000)
    assert w.view.live is not None                         # the last picture stays, veiled
    stale = as_array(w.view.grab().toImage()).astype(int).mean()
    qtbot.waitUntil(lambda: not w.view.stale and not w.status_banner.isVisible(), timeout=20000)
    shown = w.frames_shown
    qtbot.waitUntil(lambda: w.frames_shown > shown, timeout=20000)
    assert as_array(w.view.grab().toImage()).astype(int).mean() > stale + 10   # the veil is gone
    assert len(calls) >= 4


def test_source_chooser_explains_bad_input_and_switches_source(open_window, qtbot, tmp_path):
    w = open_window(notice=NO_CAMERA)
    qtbot.waitUntil(lambda: w.frames_shown >= 1, timeout=20000)
    assert not w.chooser.choose(str(tmp_path / "missing.avi"))
    assert w.chooser.error.isVisible() and "missing.avi" in w.chooser.error.text()
    old = w.inspector.grabber
    t_switch = time.perf_counter()
    with qtbot.waitSignal(w.resultShown, timeout=20000, check_params_cb=lambda live: live.frame.t_capture > t_switch):
        assert w.chooser.choose(str(sample_video()))
    assert w.inspector.grabber is not old and not w.notice.isVisible()
    assert not w.chooser.error.isVisible()


def test_bridge_keeps_only_the_newest_result(qtbot):
    bridge = LiveBridge(store=None)
    got = []
    bridge.resultReady.connect(lambda: got.append(bridge.take()))
    results = [_synthetic() for _ in range(20)]
    t = threading.Thread(target=lambda: [bridge.on_result(r) for r in results])
    t.start()
    t.join()
    qtbot.waitUntil(lambda: bool(got), timeout=2000)
    qtbot.wait(50)
    items = [g for g in got if g is not None]
    assert items[-1] is results[-1]                        # the newest one reached the GUI
    assert len(items) <= 2 and bridge.dropped >= 18        # the rest were never queued


def test_selftest_runs_and_reports():
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.run([sys.executable, "-m", "inspector", "--selftest", "--threads", "1",
                           "--source", str(sample_video())],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "frames" in out and "shown" in out and "CPUExecutionProvider" in out
    assert "manual 1" in out and out.rstrip().endswith("OK")


def test_selftest_fails_with_a_reason(tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.run([sys.executable, "-m", "inspector", "--selftest", "--model", str(tmp_path / "none.crackpkg")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "FAILED: cannot load the model" in proc.stdout and "none.crackpkg" in proc.stdout


def test_many_qt_calls_do_not_exhaust_none_or_true():
    """PySide6 6.12 on Python 3.11 drops a reference to None per void call and to True per
    emit (hence the pin in pyproject.toml); an hour of live view is millions of calls."""
    code = ("import inspector.qt\n"
            "from PySide6.QtCore import QObject, Signal\n"
            "class O(QObject):\n    s = Signal()\n"
            "o = O()\n"
            "for _ in range(200_000):\n    o.setObjectName('x'); o.s.emit()\n"
            "print('survived')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "survived" in proc.stdout, proc.stderr[-2000:]


# ---------------------------------------------------------------------------- a field laptop's screen

def test_the_window_fits_a_field_laptop_and_every_control_is_reachable(open_window, qtbot, themed):
    w = open_window()
    qtbot.waitUntil(lambda: w.frames_shown >= 1, timeout=20000)
    with qtbot.waitSignal(w.flagShown, timeout=10000):      # the flags list shows (it is hidden while empty)
        w.flag_now()
    problems = field_layout_problems(w, themed)
    assert not problems, "\n".join(problems)


def test_buttons_wait_for_what_they_act_on(open_window, qtbot):
    """Flag this frame: not before a frame is on screen (nor after a switch, until the new
    source's first frame); Connect (a URL): not before there is one."""
    w = open_window()                                      # no event processed yet: no frame shown
    assert not w.fields.flag.isEnabled()
    qtbot.waitUntil(lambda: w.frames_shown >= 1, timeout=20000)
    assert w.fields.flag.isEnabled()
    assert not w.chooser.connect_url.isEnabled()
    w.chooser.url.setText("  ")
    assert not w.chooser.connect_url.isEnabled()
    w.chooser.url.setText(str(sample_video()))
    assert w.chooser.connect_url.isEnabled()
    w.chooser.connect_url.click()
    assert not w.fields.flag.isEnabled()                   # the old picture is gone, the new one not there yet
    qtbot.waitUntil(w.fields.flag.isEnabled, timeout=20000)
