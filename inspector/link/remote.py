"""A paired device's result stream as a source for the live loop: :class:`DeviceFeed`, the
:class:`DeviceLink` that says how each result travelled, and the :class:`FrameResult` rebuilt
from the stream (:func:`rebuild_result`).

The stream as a live source
---------------------------
:class:`DeviceFeed` is to a device what :class:`~inspector.capture.sources.FrameGrabber` is to a camera:
one thread that reads the stream, keeps only the newest result (``latest(after_seq)``), reports
``SourceStatus`` changes and reconnects on its own with exponential back-off when the link is
lost. Its results are already inspected (the device ran the model), so it is a *result source*
for :class:`~inspector.live.loop.LiveInspector` (``latest`` + ``inspect``).

Latency across two clocks
-------------------------
The stream header carries the agent's ``time.time()`` at capture and at sending; the feed
compares them with this machine's ``time.time()`` at reception. On loopback (tests) both are
the same clock and the numbers are exact. Between a laptop and a real device they are only as
good as the two clocks' agreement (NTP/chrony typically keep it within a few ms on a LAN; an
unsynchronised device can be seconds off): a negative link latency is shown as 0 and a frame
never appears to have been captured after it arrived. The on-device part (capture → sent) is
measured on one clock and is always exact.
"""
from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from inspector.capture.newest import NewestItemSource
from inspector.capture.sources import Frame, SourceStatus
from inspector.edge.engine import FrameResult, TileResult
from inspector.link import framing
from inspector.link import protocol as P
from inspector.link.client import DeviceClient, Pairing
from inspector.link.connection import DeviceError, DeviceStream, FingerprintMismatch
from inspector.live.loop import Inspected
from inspector.store.database import ModelRef

log = logging.getLogger(__name__)

LATENCY_SAMPLES = 30
MODEL_REFRESH_S = 5.0                   # an unknown model_id in the stream re-reads the models at most this often
_NO_CAM = np.zeros((0, 0), np.float32)  # the stream carries no per-tile CAM (the heat-map is stitched on the device)
_NO_CAM.setflags(write=False)


@dataclass(frozen=True)
class DeviceLink:
    """How a result travelled: the agent's stream ``header``, the one-way ``link_ms`` (agent sent →
    received here) and ``capture_ms`` (agent capture → received here), both across two clocks
    (see the module doc); ``agent_ms`` (capture → sent, on the device's clock only); the device's
    ``provider``, CPU integer ``isa`` and ``agent_name`` as last read from its status."""

    header: P.StreamHeader
    link_ms: float
    capture_ms: float
    agent_ms: float
    provider: str | None
    agent_name: str
    isa: str = ""


def model_ref(info: P.ModelInfo | dict) -> ModelRef:
    d = info.to_dict() if isinstance(info, P.ModelInfo) else info
    return ModelRef(name=str(d["name"]), version=str(d["version"]), sha256=str(d["sha256"]))


def rebuild_result(header: P.StreamHeader, heat: np.ndarray, labels: tuple[str, ...] | None = None) -> FrameResult:
    """The :class:`FrameResult` the device computed, from the stream: tiles with their crack
    probability (``probs`` rebuilt for two classes; ``cam`` empty: it stays on the device), the
    heat-map at frame size, ``crack_prob_max`` and ``timings`` (the device's stages; ``total`` =
    its inference time, tile → stitch)."""
    crack_at = labels.index("crack") if labels and "crack" in labels and len(labels) == 2 else 1
    tiles = []
    for i, t in enumerate(header.tiles):
        try:
            box = tuple(int(v) for v in t["box"])
            p = float(t["crack_prob"])
            fresh = t.get("fresh", True)
        except (KeyError, TypeError, ValueError):
            raise P.ProtocolError(f"stream: tile {i} is not {{'box': [x0, y0, x1, y1], 'crack_prob': p}}: {t!r}") from None
        if len(box) != 4 or not 0.0 <= p <= 1.0 or not isinstance(fresh, bool):
            raise P.ProtocolError(f"stream: tile {i} has box {box} / crack_prob {p} / fresh {fresh!r}")
        probs = np.empty(2, np.float32)
        probs[crack_at], probs[1 - crack_at] = p, 1.0 - p
        tiles.append(TileResult(box=box, probs=probs, crack_prob=p, cam=_NO_CAM, fresh=fresh))
    timings = {str(k): float(v) for k, v in header.timings_ms.items() if isinstance(v, (int, float))}
    if "total" not in timings:
        timings["total"] = sum(timings.get(k, 0.0) for k in ("tile", "preprocess", "infer", "stitch"))
    return FrameResult(tiles=tiles, heatmap=framing.heat_from_wire(heat, header.width, header.height),
                       crack_prob_max=float(header.crack_prob_max), timings=timings)


class DeviceFeed(NewestItemSource[Inspected]):
    """A paired device's result stream as a live source (see the module doc).

    ``latest(after_seq, timeout)`` → the newest :class:`~inspector.live.loop.Inspected` (``frame``: the
    device's camera frame as RGB, ``result``: its verdicts and heat-map, ``model``: the device's
    model, ``link``: a :class:`DeviceLink`); ``inspect(item)`` returns it unchanged (the device
    already ran the model). ``status`` (:class:`~inspector.capture.newest.SourceStatus`: "connecting",
    "live", "reconnecting", "ended" when re-pairing is needed, "stopped"), ``fps`` (results
    received per second), ``link_ms`` (median), ``device_status`` (the last
    :class:`~inspector.link.protocol.Status` read). ``on_status(SourceStatus)`` and
    ``on_device(Status)`` are called on the feed's thread. The slot, stop, status reporting and
    ``fps`` come from :class:`~inspector.capture.newest.NewestItemSource`.
    """

    _log = log
    _kind = "feed"
    _busy = "a request in progress"

    def __init__(self, pairing: Pairing, *, backoff: tuple[float, float] = (0.5, 10.0),
                 on_status: Callable[[SourceStatus], None] | None = None,
                 on_device: Callable[[P.Status], None] | None = None,
                 client: DeviceClient | None = None):
        super().__init__(f"device {pairing.agent_name}", thread_name=f"DeviceFeed[{pairing.address}]",
                         backoff=backoff, on_status=on_status)
        self.pairing = pairing
        self.client = client or DeviceClient.from_pairing(pairing)
        self._on_device = on_device
        self._stream: DeviceStream | None = None
        self._link: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._models: dict[str, ModelRef] = {}
        self._labels: dict[str, tuple[str, ...]] = {}
        self._models_read_at = -1e9
        self.device_status: P.Status | None = None
        self.bad_frames = 0

    def __repr__(self) -> str:
        return f"DeviceFeed({self.pairing.address}, state={self._status.state!r})"

    # ---------------------------------------------------------------- public

    def inspect(self, item: Inspected) -> Inspected:
        return item

    @property
    def link_ms(self) -> float | None:
        """Median agent-sent → received latency of the last frames (see the module doc's caveat)."""
        with self._cond:
            samples = list(self._link)
        return statistics.median(samples) if samples else None

    # ---------------------------------------------------------------- the thread

    def _interrupt(self) -> None:
        stream = self._stream
        if stream is not None:
            stream.close()               # wakes a read blocked on the socket

    def _serve(self) -> None:
        attempt = 0
        addr = self.pairing.address
        self._set_status(SourceStatus("connecting", f"connecting to {self.label} at {addr}"))
        while not self._stop.is_set():
            n, why = 0, ""
            try:
                self._read_device(force=True)
                stream = self._stream = self.client.stream()
                if self._stop.is_set():
                    break
                for header, jpeg, heat in stream:
                    if self._accept(header, jpeg, heat):
                        n += 1
                        if n == 1:
                            attempt = 0
                            self._set_status(SourceStatus("live", f"{self.label} live"))
                why = f"{addr} closed the stream"
            except FingerprintMismatch as exc:
                self._set_status(SourceStatus("ended", str(exc)))
                break
            except DeviceError as exc:
                if exc.api is not None and exc.api.status == 401:
                    self._set_status(SourceStatus("ended", f"{self.label} no longer accepts this app's "
                                                           f"pairing: pair again ({exc.api.message})"))
                    break
                why = str(exc)
            finally:
                stream, self._stream = self._stream, None
                if stream is not None:
                    stream.close()
            if self._stop.is_set():
                break
            attempt += 1
            lost = "link lost" if n else "cannot connect"
            self._wait_backoff(attempt, f"{self.label} {lost}: {why}")

    def _read_device(self, force: bool = False) -> None:
        """Status + stored models: the model refs flags are stored with, the provider for the HUD."""
        now = time.monotonic()
        if not force and now - self._models_read_at < MODEL_REFRESH_S:
            return
        self._models_read_at = now
        status = self.client.status()
        models = self.client.models()
        for info in models.infos():
            self._models[info.id] = model_ref(info)
            self._labels[info.id] = tuple(info.labels)
        if status.model is not None:
            info = P.ModelInfo.from_dict(status.model)
            self._models[info.id] = model_ref(info)
            self._labels[info.id] = tuple(info.labels)
        self.device_status = status
        camera = status.camera.get("source") if isinstance(status.camera, dict) else None
        if camera:
            self.label = f"device {status.agent_name} / {camera}"
        self._notify(self._on_device, status, "on_device")

    def _accept(self, header: P.StreamHeader, jpeg: bytes, heat: np.ndarray) -> bool:
        t_perf, t_wall = time.perf_counter(), time.time()
        if header.model_id not in self._models:
            try:
                self._read_device()
            except DeviceError as exc:
                log.info("%s: cannot read the models for %s: %s", self.label, header.model_id, exc)
        try:
            bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            if bgr is None or bgr.shape[:2] != (header.height, header.width):
                raise P.ProtocolError(f"stream: the JPEG is not a {header.width}×{header.height} image")
            result = rebuild_result(header, heat, self._labels.get(header.model_id))
        except (P.ProtocolError, cv2.error) as exc:
            self.bad_frames += 1
            log.warning("%s: frame %d skipped: %s", self.label, header.seq, exc)
            return False
        rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        link_ms = max(0.0, (t_wall - header.t_sent) * 1e3)
        capture_ms = max(0.0, (t_wall - header.t_capture) * 1e3)
        status = self.device_status
        link = DeviceLink(header=header, link_ms=link_ms, capture_ms=capture_ms,
                          agent_ms=(header.t_sent - header.t_capture) * 1e3,
                          provider=status.provider if status is not None else None,
                          agent_name=self.pairing.agent_name, isa=status.isa if status is not None else "")
        model = self._models.get(header.model_id) or ModelRef(header.model_id, "unknown", "unknown")

        def make(seq: int) -> Inspected:
            self._link.append(link_ms)
            # the capture instant on this machine's perf_counter clock (clamped: never after reception)
            frame = Frame(seq, rgb, t_perf - capture_ms / 1e3, self.label)
            return Inspected(frame=frame, result=result, model=model, t_inferred=t_perf, link=link)

        self._publish(make, t_perf)
        return True
