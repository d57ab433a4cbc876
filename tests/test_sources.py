"""inspector.capture.sources: parsing source specs and the newest-frame-only, reconnecting grabber.

The videos are real MJPG .avi files written into tmp_path from real crack photographs; a
breaking stream is a factory that hands out real ``cv2.VideoCapture`` objects on such a file
for some opens and unopened ones for others (nothing of OpenCV is mocked).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector import paths
from inspector.capture.sources import (FrameGrabber, SourceError, SourceSpec, SourceStatus, gstreamer_available,
                               list_cameras, parse_source)

DATA = Path(os.environ["CRACK_DATA_DIR"])
SIZE = (160, 120)  # (width, height) of the test videos: small, so decoding is cheap on a busy machine


def _real_images(n: int) -> list[np.ndarray]:
    """``n`` real wall patches (BGR), cropped to SIZE, each distinguishable from the others."""
    files = sorted((DATA / "ozgenel_ccic_subset" / "crack").glob("*.jpg"))[:n]
    assert len(files) == n
    out = []
    for f in files:
        img = cv2.imread(str(f))
        out.append(np.ascontiguousarray(img[:SIZE[1], :SIZE[0]]))
    return out


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, SIZE)
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return _real_images(12)


@pytest.fixture
def video(tmp_path, images) -> Path:
    """12 distinct real frames at 30 fps (0.4 s)."""
    return write_video(tmp_path / "wall.avi", images, 30)


def which_image(rgb: np.ndarray, images: list[np.ndarray]) -> int:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.float32)
    return int(np.argmin([np.abs(bgr - im.astype(np.float32)).mean() for im in images]))


class Recorder:
    """on_status listener that keeps everything it was told (called on the grabber thread)."""

    def __init__(self):
        self.statuses: list[SourceStatus] = []
        self._cond = threading.Condition()

    def __call__(self, status: SourceStatus) -> None:
        with self._cond:
            self.statuses.append(status)
            self._cond.notify_all()

    def wait_for(self, pred, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: pred(self.statuses), timeout)

    def states(self) -> list[str]:
        with self._cond:
            return [s.state for s in self.statuses]


def drain(grabber: FrameGrabber, *, until_seq: int | None = None, timeout: float = 15.0,
          pause: float = 0.0) -> list:
    """Consume frames until the grabber ends (or seq reaches ``until_seq``); ``pause`` between reads."""
    frames, seq, t_end = [], 0, time.monotonic() + timeout
    while time.monotonic() < t_end:
        f = grabber.latest(seq, timeout=0.5)
        if f is None:
            if grabber.status.state in ("ended", "stopped"):
                break
            continue
        frames.append(f)
        seq = f.seq
        if until_seq is not None and seq >= until_seq:
            break
        if pause:
            time.sleep(pause)
    return frames


# --------------------------------------------------------------------------- parse_source

@pytest.mark.parametrize("spec, value", [(0, 0), (3, 3), ("1", 1), (" 2 ", 2), (np.int64(4), 4),
                                         ("/dev/video5", 5)])
def test_parse_camera(spec, value):
    s = parse_source(spec)
    assert (s.kind, s.value, s.label) == ("camera", value, f"camera {value}")


@pytest.mark.parametrize("url", ["rtsp://10.0.0.7:554/stream1", "http://cam.local/video.mjpg",
                                 "https://example.org/live/feed.m3u8", "RTSP://host/x"])
def test_parse_url(url):
    s = parse_source(url)
    assert s.kind == "url" and s.value == url
    assert "://" in s.label


def test_url_label_hides_credentials():
    s = parse_source("rtsp://admin:s3cret@192.168.1.20:554/Streaming/Channels/101")
    assert s.kind == "url"
    assert "s3cret" not in s.label and "admin" not in s.label
    assert s.label.startswith("rtsp://192.168.1.20:554")
    assert "s3cret" in s.value  # still needed to connect


def test_parse_gstreamer_jetson_csi():
    pipeline = ("nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! nvvidconv "
                "! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1")
    s = parse_source(pipeline)
    assert s.kind == "gstreamer" and s.value == pipeline
    assert "nvarguscamerasrc" in s.label


def test_parse_file(video, monkeypatch):
    for spec in (video, str(video)):
        s = parse_source(spec)
        assert s == SourceSpec("file", str(video.resolve()), "wall.avi")
    monkeypatch.chdir(video.parent)
    s = parse_source("wall.avi")
    assert s.kind == "file" and Path(s.value).is_absolute() and Path(s.value) == video.resolve()


def test_parse_shipped_sample_video():
    s = parse_source(paths.sample_video())
    assert s.kind == "file" and s.label == paths.SAMPLE_VIDEO_NAME


@pytest.mark.parametrize("spec, words", [
    (None, "camera index"),
    ("", "empty"),
    ("   ", "empty"),
    (-1, "0 or more"),
    (True, "camera index"),
    (1.5, "float"),
    (["0"], "list"),
    ("no_such_video.avi", "no video file"),
    ("rtsp://", "no host"),
    ("ftp://host/video.avi", "unsupported URL scheme"),
    ("v4l2src ! videoconvert ! autovideosink", "appsink"),
])
def test_parse_errors(spec, words):
    with pytest.raises(SourceError, match=words):
        parse_source(spec)


def test_parse_folder_is_not_a_video(tmp_path):
    with pytest.raises(SourceError, match="folder"):
        parse_source(tmp_path)


def test_source_error_is_a_value_error():
    assert issubclass(SourceError, ValueError)


def test_list_cameras_none_here_and_fast():
    if list(Path("/dev").glob("video*")):
        pytest.skip("this machine has video devices")
    t = time.perf_counter()
    assert list_cameras() == []
    assert time.perf_counter() - t < 1.0
    with pytest.raises(ValueError):
        list_cameras(-1)


# --------------------------------------------------------------------------- grabbing

def test_frames_are_owned_rgb_with_increasing_seq(tmp_path):
    red = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    red[..., 2] = 220  # BGR red
    path = write_video(tmp_path / "red.avi", [red] * 5, 30)
    rec = Recorder()
    g = FrameGrabber(parse_source(path), loop=False, realtime=False, on_status=rec)
    g.start()
    try:
        frames = drain(g, pause=0.0)
    finally:
        g.stop()
    assert frames, "no frame arrived"
    seqs = [f.seq for f in frames]
    assert seqs == sorted(set(seqs)) and seqs[0] >= 1
    for f in frames:
        assert f.rgb.dtype == np.uint8 and f.rgb.shape == (SIZE[1], SIZE[0], 3)
        assert f.rgb.flags.c_contiguous and f.rgb.flags.owndata
        assert f.source == "red.avi"
        r, gr, b = f.rgb.reshape(-1, 3).mean(0)
        assert r > 150 and gr < 60 and b < 60, "channels must be RGB"
    assert len({id(f.rgb) for f in frames}) == len(frames)
    assert rec.states()[:2] == ["connecting", "live"]
    assert "ended" in rec.states() and rec.states()[-1] == "stopped"


def test_slow_consumer_sees_only_the_newest_frame(tmp_path, images):
    frames = [images[i % len(images)] for i in range(240)]
    path = write_video(tmp_path / "long.avi", frames, 30)
    g = FrameGrabber(parse_source(path), loop=False, realtime=False)
    g.start()
    try:
        got = drain(g, pause=0.05)  # a consumer much slower than decoding
        assert g.status.state == "ended"
        last = g.latest(0, timeout=0)
    finally:
        g.stop()
    seqs = [f.seq for f in got]
    assert all(b > a for a, b in zip(seqs, seqs[1:]))
    assert len(got) < 240 and any(b - a > 1 for a, b in zip(seqs, seqs[1:])), "frames were queued, not dropped"
    # no backlog: once the file is done, what is waiting is the very last frame, not an old one
    assert last is not None and last.seq == 240
    assert which_image(last.rgb, images) == 239 % len(images)
    assert g.latest(last.seq, timeout=0.1) is None


def test_file_loops(video, images):
    g = FrameGrabber(parse_source(video), loop=True, realtime=True)
    g.start()
    try:
        got = drain(g, until_seq=30, timeout=20)
        state = g.status.state
    finally:
        g.stop()
    assert got[-1].seq >= 30, "a 12-frame file must go on past its end when looping"
    assert state == "live"
    shown = [which_image(f.rgb, images) for f in got]
    assert any(b < a for a, b in zip(shown, shown[1:])), f"never restarted from the beginning: {shown}"


def test_file_without_loop_ends(video):
    rec = Recorder()
    g = FrameGrabber(parse_source(video), loop=False, realtime=False, on_status=rec)
    g.start()
    try:
        assert rec.wait_for(lambda s: any(x.state == "ended" for x in s))
        t = time.perf_counter()
        assert g.latest(10**6, timeout=None) is None  # no hang after the end
        assert time.perf_counter() - t < 1.0
    finally:
        g.stop()
    assert g.status.state == "stopped"


def test_realtime_pacing_follows_the_file_fps(tmp_path, images):
    frames = [images[i % len(images)] for i in range(30)]
    path = write_video(tmp_path / "one_second.avi", frames, 30)  # 1 s of video
    g = FrameGrabber(parse_source(path), loop=False, realtime=True)
    t0 = time.perf_counter()
    g.start()
    try:
        got = drain(g)
        elapsed = time.perf_counter() - t0
        times = [f.t_capture for f in got]
    finally:
        g.stop()
    # unpaced, 30 small frames decode in a few ms; paced they take ~1 s. Generous margins.
    assert elapsed > 0.6, f"a 1 s file was consumed in {elapsed:.2f} s"
    assert len(got) >= 10
    assert times[-1] - times[0] > 0.5


def test_fps_is_the_measured_capture_rate(tmp_path, images):
    path = write_video(tmp_path / "fps.avi", images, 20)
    g = FrameGrabber(parse_source(path), loop=True, realtime=True)
    assert g.fps == 0.0
    g.start()
    try:
        drain(g, until_seq=30, timeout=20)
        fps = g.fps
    finally:
        g.stop()
    assert 8 < fps < 40, fps


def test_latest_waits_up_to_timeout(video):
    g = FrameGrabber(parse_source(video), loop=True, realtime=True)
    t = time.perf_counter()
    assert g.latest(0, timeout=0.2) is None  # not started: nothing arrives
    assert time.perf_counter() - t >= 0.15
    g.start()
    try:
        f = g.latest(0, timeout=10)
        assert f is not None and f.seq >= 1
    finally:
        g.stop()


def test_on_status_errors_do_not_kill_the_thread(video, caplog):
    def broken(status):
        raise RuntimeError("listener bug")

    g = FrameGrabber(parse_source(video), loop=True, realtime=True, on_status=broken)
    g.start()
    try:
        assert g.latest(0, timeout=10) is not None
        f = g.latest(g.latest(0, timeout=1).seq, timeout=10)
        assert f is not None
    finally:
        g.stop()
    assert "on_status callback failed" in caplog.text


class FlakyStream:
    """Opens a real capture on ``path`` for the opens listed in ``good`` (1-based) and an
    unopened ``cv2.VideoCapture()`` otherwise: a stream that drops out and comes back."""

    def __init__(self, path: Path, good: set[int]):
        self.path, self.good, self.opens = str(path), good, 0
        self.lock = threading.Lock()

    def __call__(self, spec: SourceSpec) -> cv2.VideoCapture:
        with self.lock:
            self.opens += 1
            n = self.opens
        return cv2.VideoCapture(self.path) if n in self.good else cv2.VideoCapture()


STREAM = SourceSpec("url", "rtsp://camera.test/stream", "rtsp://camera.test/stream")


def test_broken_stream_backs_off_and_recovers(video):
    # open 1 works (then the stream "drops": the file ends, which for a stream is a failed read),
    # opens 2-4 fail, open 5 works again.
    flaky = FlakyStream(video, good={1, 5})
    rec = Recorder()
    g = FrameGrabber(STREAM, backoff=(0.05, 0.15), on_status=rec, open_capture=flaky)
    g.start()
    try:
        first = g.latest(0, timeout=10)
        assert first is not None
        ok = rec.wait_for(lambda s: [x.state for x in s].count("live") >= 2)
        assert ok, rec.states()
        after = g.latest(0, timeout=0)
    finally:
        g.stop()
    st = rec.statuses
    i_live2 = [i for i, x in enumerate(st) if x.state == "live"][1]
    retries = [x for x in st[:i_live2] if x.state == "reconnecting"]
    assert [x.attempt for x in retries] == [1, 2, 3, 4]
    assert [x.retry_in for x in retries] == pytest.approx([0.05, 0.1, 0.15, 0.15])  # doubling, capped
    assert "disconnected" in retries[0].message and "retrying in" in retries[0].message
    assert "cannot open" in retries[1].message
    assert flaky.opens >= 5
    assert after.seq > first.seq  # seq goes on across reconnects


def test_stop_during_backoff_is_prompt(video):
    rec = Recorder()
    g = FrameGrabber(STREAM, backoff=(30.0, 60.0), on_status=rec, open_capture=FlakyStream(video, good=set()))
    g.start()
    assert rec.wait_for(lambda s: any(x.state == "reconnecting" for x in s))
    t = time.perf_counter()
    g.stop()
    assert time.perf_counter() - t < 1.0
    assert g.status.state == "stopped"
    assert rec.statuses[-1].state == "stopped"
    assert rec.states().count("stopped") == 1


def test_file_that_becomes_unreadable_reconnects(video):
    # the first open plays the file; reopening it at the loop fails (deleted, disk gone...)
    flaky = FlakyStream(video, good={1, 3})
    rec = Recorder()
    g = FrameGrabber(parse_source(video), loop=True, realtime=False, backoff=(0.05, 1.0), on_status=rec,
                     open_capture=flaky)
    g.start()
    try:
        assert rec.wait_for(lambda s: [x.state for x in s].count("live") >= 2), rec.states()
    finally:
        g.stop()
    states = rec.states()
    assert states.index("reconnecting") > states.index("live")
    assert "cannot open wall.avi" in next(x.message for x in rec.statuses if x.state == "reconnecting")


def test_open_raising_is_reported_not_fatal(video):
    calls = []

    def exploding(spec):
        calls.append(spec)
        if len(calls) == 1:
            raise OSError("device busy")
        return cv2.VideoCapture(str(video))

    rec = Recorder()
    g = FrameGrabber(parse_source(video), backoff=(0.05, 0.1), on_status=rec, open_capture=exploding)
    g.start()
    try:
        assert g.latest(0, timeout=10) is not None
    finally:
        g.stop()
    first_retry = next(x for x in rec.statuses if x.state == "reconnecting")
    assert "device busy" in first_retry.message


@pytest.mark.skipif(gstreamer_available(), reason="this OpenCV can run GStreamer pipelines")
def test_gstreamer_without_support_says_so():
    spec = parse_source("videotestsrc ! videoconvert ! appsink")
    rec = Recorder()
    g = FrameGrabber(spec, backoff=(5.0, 5.0), on_status=rec)
    g.start()
    try:
        assert rec.wait_for(lambda s: any(x.state == "reconnecting" for x in s))
    finally:
        g.stop()
    msg = next(x.message for x in rec.statuses if x.state == "reconnecting")
    assert "GStreamer" in msg


def test_missing_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="gone.avi"):
        parse_source(tmp_path / "gone.avi")


def test_bad_arguments():
    spec = SourceSpec("camera", 0, "camera 0")
    with pytest.raises(ValueError):
        FrameGrabber(spec, backoff=(0, 1))
    with pytest.raises(ValueError):
        FrameGrabber(spec, backoff=(2, 1))
    with pytest.raises(ValueError):
        FrameGrabber(spec, backoff="fast")
    with pytest.raises(TypeError):
        FrameGrabber("0")


def test_start_twice_and_stop_twice(video):
    g = FrameGrabber(parse_source(video))
    g.start()
    g.start()
    try:
        assert g.latest(0, timeout=10) is not None
    finally:
        g.stop()
        g.stop()
    assert g.status.state == "stopped"
    assert not any(t.name.startswith("FrameGrabber[") and t.is_alive() for t in threading.enumerate())


def test_a_file_that_is_not_a_video_is_an_error_at_once(tmp_path):
    """notes.txt renamed .mp4: refused by parse_source, naming the file; a grabber given one
    (replaced after parsing) ends with the reason instead of retrying forever."""
    notes = tmp_path / "notes.mp4"
    notes.write_text("pier 3: hairline crack near the bearing, check again in spring\n" * 50)
    with pytest.raises(SourceError, match=r"not a video OpenCV can read: .*notes\.mp4"):
        parse_source(notes)
    with pytest.raises(SourceError, match="not a video OpenCV can read"):
        parse_source(str(notes))
    rec = Recorder()
    g = FrameGrabber(SourceSpec("file", str(notes), "notes.mp4"), backoff=(0.05, 0.1), on_status=rec)
    g.start()
    try:
        assert rec.wait_for(lambda s: any(x.state == "ended" for x in s)), rec.states()
        time.sleep(0.3)  # would be several retries at this back-off
    finally:
        g.stop()
    assert "reconnecting" not in rec.states()
    ended = next(x for x in rec.statuses if x.state == "ended")
    assert ended.message == f"not a video OpenCV can read: {notes}"


def test_a_file_that_opens_but_gives_no_frame_ends_too(video):
    empty = SourceSpec("file", str(video), "wall.avi")
    rec = Recorder()
    g = FrameGrabber(empty, backoff=(0.05, 0.1), on_status=rec, open_capture=lambda spec: EmptyCapture())
    g.start()
    try:
        assert rec.wait_for(lambda s: any(x.state == "ended" for x in s)), rec.states()
    finally:
        g.stop()
    assert "reconnecting" not in rec.states()
    assert next(x for x in rec.statuses if x.state == "ended").message == f"not a video OpenCV can read: {video}"


class EmptyCapture:
    """Opens, but has no frame to give (a container without a decodable stream)."""

    def isOpened(self):
        return True

    def read(self):
        return False, None

    def get(self, prop):
        return 0.0

    def release(self):
        pass
