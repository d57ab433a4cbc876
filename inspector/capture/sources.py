"""Video sources: what the user typed → :class:`SourceSpec`; a :class:`FrameGrabber` thread that
keeps only the newest frame and reconnects on its own.

Source specs (:func:`parse_source`)
-----------------------------------
* ``0``, ``"1"``, ``"/dev/video2"``: a camera index.
* ``rtsp://``, ``rtsps://``, ``http://``, ``https://``: a network stream (FFmpeg). Credentials in
  the URL are kept in ``value`` but never shown in ``label`` (the HUD, logs, the flag store).
* anything containing ``" ! "``: a GStreamer pipeline ending in ``appsink`` (needs an OpenCV built
  with GStreamer, as on a Jetson; the pip wheels are not). A Jetson CSI camera::

      nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! nvvidconv
      ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1

  ``drop=1 max-buffers=1`` matters: without it appsink queues frames and the picture lags.
* otherwise a video file that must exist.

The grabber
-----------
One daemon thread per source reads frames and publishes only the newest (a condition variable:
:meth:`FrameGrabber.latest`); a slow consumer skips frames, it never works through a backlog,
so what it shows is what the camera sees now. Frames are converted BGR → RGB once, here, into a
new array the consumer owns. Files are paced at their own frame rate (``realtime``) and loop;
cameras and streams pace themselves.

A local file that OpenCV cannot decode (a text file renamed ``.mp4``) is an error at once, not
something to wait for: :func:`parse_source` refuses it (``"not a video OpenCV can read"``), and
a grabber whose file opens without a single frame ever (replaced since) ends in state
``"ended"`` with that message. Only what can come back reconnects: cameras, network streams,
pipelines, and a file that has played and then fails (deleted, disk gone).

Other failures never end the thread: a source that does not open, or a camera / stream / pipeline
whose read fails (unplugged, network gone), goes to state ``"reconnecting"`` and is retried with
exponential back-off (``backoff[0]`` doubling up to ``backoff[1]``) until :meth:`stop`. The
attempt counter resets once a frame arrives. Back-off sleeps wait on an Event so ``stop()`` is
prompt; a read that blocks inside OpenCV cannot be interrupted, which is why network streams are
opened with open/read time-outs (:data:`STREAM_TIMEOUT_MS`).
"""
from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import cv2
import numpy as np

from inspector.capture.newest import NewestItemSource, SourceStatus
from inspector.errors import InspectorError

log = logging.getLogger(__name__)

URL_SCHEMES = ("rtsp", "rtsps", "http", "https")
# A dead network stream otherwise blocks read() for FFmpeg's default (tens of seconds), and
# neither stop() nor the reconnect logic can run meanwhile.
STREAM_TIMEOUT_MS = 5000
DEFAULT_FILE_FPS = 30.0       # when a file does not say (or says nonsense)
CAMERA_READ_RETRIES = 3       # consecutive failed reads before a camera counts as disconnected
RESYNC_LATE_S = 0.25          # a paced file this far behind schedule restarts its clock (no burst)


class SourceError(InspectorError, ValueError):
    """A bad source spec; the message says which and why."""


@dataclass(frozen=True)
class SourceSpec:
    kind: str          # "camera" | "file" | "url" | "gstreamer"
    value: str | int   # camera index, absolute file path, URL or pipeline
    label: str         # short human text for the HUD


@dataclass(frozen=True)
class Frame:
    seq: int              # 1, 2, 3 ... per grabber, never reused (also across reconnects)
    rgb: np.ndarray       # uint8 H×W×3 RGB, C-contiguous, owned by the consumer
    t_capture: float      # time.perf_counter() when the frame was read (for files: when it was due)
    source: str           # SourceSpec.label


# --------------------------------------------------------------------------- parsing

def _url_label(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    path = parts.path.strip("/")
    tail = "" if not path else (f"/{path}" if len(path) <= 24 else f"/…{path[-20:]}")
    return f"{parts.scheme}://{host}{tail}"


def parse_source(spec: str | int | os.PathLike) -> SourceSpec:
    """Camera index, URL, GStreamer pipeline or existing video file (see the module doc)."""
    if isinstance(spec, bool) or spec is None:
        raise SourceError(f"a video source is a camera index, a file, a URL or a GStreamer pipeline; got {spec!r}")
    if isinstance(spec, (int, np.integer)):
        if spec < 0:
            raise SourceError(f"a camera index must be 0 or more, got {spec}")
        return SourceSpec("camera", int(spec), f"camera {int(spec)}")
    if isinstance(spec, os.PathLike):
        return _file_spec(Path(spec))
    if not isinstance(spec, str):
        raise SourceError(f"a video source is a camera index, a file, a URL or a GStreamer pipeline; "
                          f"got {type(spec).__name__} {spec!r}")
    text = spec.strip()
    if not text:
        raise SourceError("empty video source: give a camera index (0), a video file, a URL or a GStreamer pipeline")
    if text.isdigit():
        return parse_source(int(text))
    m = re.fullmatch(r"/dev/video(\d+)", text)
    if m:
        return parse_source(int(m.group(1)))
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in URL_SCHEMES:
        if not urlsplit(text).hostname:
            raise SourceError(f"the URL {_url_label(text)!r} has no host")
        return SourceSpec("url", text, _url_label(text))
    if " ! " in text and not Path(text).expanduser().is_file():
        if "appsink" not in text.rsplit("!", 1)[-1]:
            raise SourceError("a GStreamer pipeline for OpenCV must end in appsink "
                              "(e.g. '... ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1')")
        first = text.split("!", 1)[0].split()[0]
        return SourceSpec("gstreamer", text, f"GStreamer {first}")
    if scheme:
        raise SourceError(f"unsupported URL scheme {scheme!r} (use one of {', '.join(URL_SCHEMES)})")
    return _file_spec(Path(text))


def _file_spec(path: Path) -> SourceSpec:
    path = path.expanduser()
    if path.is_dir():
        raise SourceError(f"{path} is a folder, not a video file")
    if not path.is_file():
        raise SourceError(f"not a camera index, URL or GStreamer pipeline, and no video file {str(path)!r} exists")
    if not _decodes(path):
        raise SourceError(f"not a video OpenCV can read: {path} (give a video file, e.g. .mp4 or .avi, "
                          "a camera index, a URL or a GStreamer pipeline)")
    return SourceSpec("file", str(path.resolve()), path.name)


def _decodes(path: Path) -> bool:
    """Whether OpenCV opens ``path`` and decodes its first frame (a few ms for a real video)."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return False
        ok, img = cap.read()
        return bool(ok) and img is not None and img.size > 0
    finally:
        cap.release()


# --------------------------------------------------------------------------- opening

def gstreamer_available() -> bool:
    """Whether this OpenCV build can run GStreamer pipelines (pip wheels cannot)."""
    return re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()) is not None


def open_capture(spec: SourceSpec) -> cv2.VideoCapture:
    """A ``cv2.VideoCapture`` for ``spec`` (possibly not opened: the caller checks ``isOpened()``)."""
    if spec.kind == "camera":
        backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        cap = cv2.VideoCapture(int(spec.value), backend)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's queue is latency; not every backend obeys
        return cap
    if spec.kind == "url":
        return cv2.VideoCapture(str(spec.value), cv2.CAP_FFMPEG,
                                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
                                 cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS])
    if spec.kind == "gstreamer":
        return cv2.VideoCapture(str(spec.value), cv2.CAP_GSTREAMER)
    if spec.kind == "file":
        return cv2.VideoCapture(str(spec.value))
    raise SourceError(f"unknown source kind {spec.kind!r}")


_default_open_capture = open_capture


def _v4l2_name(index: int) -> str:
    try:
        return Path(f"/sys/class/video4linux/video{index}/name").read_text(encoding="utf-8").strip()
    except OSError:
        return f"camera {index}"


def list_cameras(max_index: int = 8) -> list[tuple[int, str]]:
    """``(index, name)`` of the cameras that open, indices below ``max_index``.

    On Linux only the ``/dev/videoN`` nodes that exist are tried (no devices: instant, no OpenCV
    warnings); elsewhere indices are tried in order until the first that does not open.
    """
    if isinstance(max_index, bool) or not isinstance(max_index, int) or max_index < 0:
        raise ValueError(f"max_index must be a non-negative integer, got {max_index!r}")
    linux = sys.platform.startswith("linux")
    if linux:
        nodes = (re.fullmatch(r"video(\d+)", p.name) for p in Path("/dev").glob("video*"))
        candidates = sorted(int(m.group(1)) for m in nodes if m and int(m.group(1)) < max_index)
    else:
        candidates = list(range(max_index))
    found = []
    for index in candidates:
        cap = open_capture(SourceSpec("camera", index, f"camera {index}"))
        try:
            ok = cap.isOpened()
        finally:
            cap.release()
        if ok:
            found.append((index, _v4l2_name(index) if linux else f"camera {index}"))
        elif not linux:
            break
    return found


# --------------------------------------------------------------------------- the grabber

_STOP, _EOF, _FAILED = "stop", "eof", "failed"


def _to_rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class FrameGrabber(NewestItemSource[Frame]):
    """Reads ``spec`` on its own daemon thread; :meth:`latest` hands out the newest frame only
    (the slot, stop, status and ``fps`` come from :class:`~inspector.capture.newest.NewestItemSource`).

    ``loop``: files restart at the end (else state ``"ended"``). ``realtime``: files are paced at
    their FPS (a camera paces itself). ``backoff``: first and longest wait between reconnect
    attempts, doubling. ``on_status``: called on the grabber thread at every state change; its
    exceptions are logged, never raised into the thread. ``open_capture``: how a spec becomes a
    ``cv2.VideoCapture`` (default :func:`open_capture`; tests inject breaking sources).
    """

    _log = log
    _kind = "capture"
    _busy = "blocked in a read"

    def __init__(self, spec: SourceSpec, *, loop: bool = True, realtime: bool = True,
                 backoff: tuple[float, float] = (0.5, 10.0),
                 on_status: Callable[[SourceStatus], None] | None = None,
                 open_capture: Callable[[SourceSpec], cv2.VideoCapture] | None = None):
        if not isinstance(spec, SourceSpec):
            raise TypeError(f"spec must be a SourceSpec (see parse_source), got {type(spec).__name__}")
        super().__init__(spec.label, thread_name=f"FrameGrabber[{spec.label}]", backoff=backoff,
                         on_status=on_status)
        self.spec = spec
        self.loop = bool(loop)
        self.realtime = bool(realtime)
        self._open = open_capture or _default_open_capture
        self._due: float | None = None  # when a paced file's next frame is due (survives loop reopens)

    def __repr__(self) -> str:
        return f"FrameGrabber({self.spec.label!r}, state={self._status.state!r})"

    # ---------------------------------------------------------------- the thread

    def _publish_frame(self, bgr: np.ndarray, t: float) -> None:
        rgb = np.ascontiguousarray(_to_rgb(bgr))
        self._publish(lambda seq: Frame(seq, rgb, t, self.spec.label), t)

    def _open_or_none(self) -> tuple[cv2.VideoCapture | None, str]:
        try:
            cap = self._open(self.spec)
        except Exception as exc:  # noqa: BLE001 - cv2.error, OSError, a test's factory...
            return None, f"{type(exc).__name__}: {exc}"
        if cap is None:
            return None, "no capture"
        if not cap.isOpened():
            cap.release()
            hint = ""
            if self.spec.kind == "gstreamer" and not gstreamer_available():
                hint = " (this OpenCV build has no GStreamer support)"
            return None, "does not open" + hint
        return cap, ""

    def _serve(self) -> None:
        label = self.spec.label
        attempt = 0
        self._due = None
        self._set_status(SourceStatus("connecting", f"opening {label}"))
        played = False  # a file that never gave a frame is not a video; one that did may come back
        while not self._stop.is_set():
            cap, why = self._open_or_none()
            if cap is None and why.startswith("does not open") and self._not_a_video(played):
                break
            if cap is None:
                attempt += 1
                self._wait_backoff(attempt, f"cannot open {label}: {why}")
                continue
            try:
                outcome, n = self._pump(cap)
            finally:
                cap.release()
            if n:
                attempt, played = 0, True
            if outcome == _STOP:
                break
            if outcome == _EOF and not n and self._not_a_video(played):
                break
            if outcome == _EOF and n:
                if self.loop:
                    continue  # reopen: cheap, and the same path as a real reconnect
                self._set_status(SourceStatus("ended", f"{label}: end of file"))
                break
            attempt += 1
            what = (f"cannot read frames from {label}" if self.spec.kind == "file" or not n
                    else f"{label} disconnected")
            self._wait_backoff(attempt, what)

    def _not_a_video(self, played: bool) -> bool:
        """For a local file that never gave a frame: end with the reason (True); else False."""
        if self.spec.kind != "file" or played:
            return False
        self._set_status(SourceStatus("ended", f"not a video OpenCV can read: {self.spec.value}"))
        return True

    def _pump(self, cap: cv2.VideoCapture) -> tuple[str, int]:
        """Read until the end, a failure or stop; returns (outcome, frames read)."""
        paced = self.realtime and self.spec.kind == "file"
        period = 1.0 / self._file_fps(cap) if paced else 0.0
        n = failures = 0
        while not self._stop.is_set():
            if paced and self._due is not None:
                # Decode a file's frame when it is due, not ahead of time: decoded ahead, it
                # would take a core from the inference still running on the previous frame
                # (and a camera hands over its frames this way too).
                wait = self._due - time.perf_counter()
                if wait > 0 and self._stop.wait(wait):
                    break
            ok, bgr = cap.read()
            if not ok or bgr is None or bgr.size == 0:
                if self.spec.kind == "file":
                    return _EOF, n
                failures += 1
                if failures >= CAMERA_READ_RETRIES or self.spec.kind != "camera":
                    return _FAILED, n
                if self._stop.wait(0.02):
                    break
                continue
            failures = 0
            if paced:
                now = time.perf_counter()
                due = self._due
                if due is None or now - due > RESYNC_LATE_S:
                    due = now
                self._due = due + period
            self._publish_frame(bgr, time.perf_counter())
            n += 1
            if n == 1:
                self._set_status(SourceStatus("live", f"{self.spec.label} live"))
        return _STOP, n

    def _file_fps(self, cap: cv2.VideoCapture) -> float:
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not (math.isfinite(fps) and 1.0 <= fps <= 1000.0):
            log.info("%s: frame rate %r not usable, pacing at %.0f fps", self.spec.label, fps, DEFAULT_FILE_FPS)
            return DEFAULT_FILE_FPS
        return float(fps)
