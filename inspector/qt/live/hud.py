"""The HUD strip under the view: what the operator needs to trust what they see.

Displayed FPS (frames that actually reached the screen), end-to-end latency from capture to
paint (median of the last frames: one slow frame should not make the number jump), inference
time, the model (name + version), the execution provider and the source. Viewing a device, the
model and provider are the device's, inference is its time, and "Link" is the median agent →
app latency of the stream (see :mod:`inspector.link.client` on clocks). Refreshed a few
times a second, not per frame, so the numbers are readable.
"""
from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Callable

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QFrame, QLabel, QVBoxLayout, QWidget

from inspector.capture.rate import RateWindow
from inspector.qt import theme
from inspector.qt.flow import FlowLayout

REFRESH_MS = 400
WINDOW_S = 2.0          # FPS over the last 2 s
LATENCY_SAMPLES = 30
SHOWN_CHARS = 36        # the model and the source: longer names are elided, in full in the tooltip


class FrameMeter:
    """Displayed FPS and capture→paint latency from ``add(t_capture, t_painted)`` calls."""

    def __init__(self, window_s: float = WINDOW_S, samples: int = LATENCY_SAMPLES):
        self._painted = RateWindow(window_s)
        self._latency: deque[float] = deque(maxlen=samples)
        self.frames = 0

    def add(self, t_capture: float, t_painted: float) -> None:
        self.frames += 1
        self._painted.add(t_painted)
        self._latency.append(t_painted - t_capture)

    def fps(self, now: float | None = None) -> float:
        return self._painted.rate(time.perf_counter() if now is None else now)

    def latency_ms(self) -> float | None:
        return statistics.median(self._latency) * 1e3 if self._latency else None


def _short(text: str, limit: int = SHOWN_CHARS) -> str:
    """At most ``limit`` characters (the end elided)."""
    return text if len(text) <= limit else text[:limit - 2] + "…"


class _Field(QWidget):
    """A small caption over a value."""

    def __init__(self, caption: str, parent: QWidget | None = None, *, mono: bool = True):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(1)
        cap = QLabel(caption.upper(), objectName="sectionTitle")
        self.value = QLabel("—", objectName="value")
        if mono:
            self.value.setFont(theme.mono_font(11, bold=True))
        self.value.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(cap)
        lay.addWidget(self.value)

    def set(self, text: str, tooltip: str | None = None) -> None:
        self.value.setText(text)
        if tooltip is not None:
            self.value.setToolTip(tooltip)


class Hud(QFrame):
    """``on_frame_painted(live, t_painted)`` per frame on screen; ``set_model`` / ``set_source``
    / ``set_provider`` when those change."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, objectName="panel")
        self.meter = FrameMeter()
        self._infer_ms: float | None = None
        self._tiles: deque[tuple[int, int]] = deque(maxlen=LATENCY_SAMPLES)   # (inferred, shown) per frame
        self._frame_size: tuple[int, int] | None = None
        self._link_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.capture_fps: Callable[[], float] | None = None   # the source's own rate, polled
        self.flag_stats: Callable | None = None   # the flagger's FlagStats, polled
        # wraps onto a second row on a narrow screen (a 1366-px laptop) instead of widening the window
        lay = FlowLayout(self, spacing=28, row_spacing=6)
        lay.setContentsMargins(14, 8, 14, 8)
        self.fps = _Field("Display")
        self.latency = _Field("Latency capture→screen")
        self.inference = _Field("Inference")
        self.capture = _Field("Capture")
        self.link = _Field("Link")
        self.link.hide()
        self.model = _Field("Model", mono=False)
        self.provider = _Field("Provider", mono=False)
        self.source = _Field("Source", mono=False)
        self.flags = _Field("Flags")
        for f in (self.fps, self.latency, self.inference, self.capture, self.link, self.flags, self.model,
                  self.provider, self.source):
            lay.addWidget(f)
        self._timer = QTimer(self, interval=REFRESH_MS, timeout=self.refresh)
        self._timer.start()

    def on_frame_painted(self, live, t_painted: float) -> None:
        self.meter.add(live.frame.t_capture, t_painted)
        self._infer_ms = live.result.timings.get("total")
        tiles = live.result.tiles
        if tiles:
            self._tiles.append((len(live.result.fresh_tiles), len(tiles)))
        self._frame_size = (live.frame.rgb.shape[1], live.frame.rgb.shape[0])
        link = getattr(live, "link", None)
        if link is not None:
            self._link_ms.append(float(link.link_ms))

    def set_link_visible(self, on: bool) -> None:
        """Show the link latency field (viewing a device) or hide it (local source)."""
        self._link_ms.clear()
        self.link.setVisible(on)

    def set_model(self, name: str, version: str, sha256: str = "") -> None:
        self.model.set(_short(f"{name} {version}"), f"{name} {version}" + (f"\nsha256 {sha256}" if sha256 else ""))

    def set_provider(self, providers: list[str], fallback: str | None = None, *, isa: str = "",
                     precision: str = "", notes: list[str] | None = None) -> None:
        """The execution provider, the CPU's integer ISA (INT8 speed depends on it: AVX2,
        AVX-512 VNNI, AMX, NEON) and the model's ``precision`` (INT8, FP32: the variant chosen for
        this CPU); ``notes`` (the reference check, why this variant) go to the tooltip."""
        short = providers[0].replace("ExecutionProvider", "") if providers else "?"
        short = " · ".join(filter(None, [short, isa, precision]))
        self.provider.set(short, "\n".join(filter(None, [", ".join(providers), fallback, *(notes or [])])))

    def set_source(self, label: str) -> None:
        self.source.set(_short(label), label)

    def refresh(self) -> None:
        fps = self.meter.fps()
        self.fps.set(f"{fps:4.1f} fps")
        lat = self.meter.latency_ms()
        self.latency.set("—" if lat is None else f"{lat:4.0f} ms")
        shown = sum(t for _, t in self._tiles)
        share = f" · {100 * sum(f for f, _ in self._tiles) / shown:3.0f} % tiles" if shown else ""
        self.inference.set("—" if self._infer_ms is None else f"{self._infer_ms:4.0f} ms{share}",
                           "time per frame; share of the tiles inferred on recent frames (the others carried "
                           "over from earlier frames as the camera moved: tile reuse)")
        cap = self.capture_fps() if self.capture_fps is not None else 0.0
        size = f"  {self._frame_size[0]}×{self._frame_size[1]}" if self._frame_size else ""
        self.capture.set(f"{cap:4.1f} fps{size}" if cap > 0 else "—" + size)
        stats = self.flag_stats() if self.flag_stats is not None else None
        if stats is not None:
            self.flags.set(f"{stats.kept + stats.manual} kept · {stats.suppressed} suppressed",
                           f"automatic flags kept: {stats.kept}, manual: {stats.manual}; frames not flagged: "
                           f"{stats.same_view} showed a view or place already flagged (this session's flags and "
                           f"{stats.remembered} remembered from the store), {stats.outranked} were less "
                           f"informative than another frame of the same few seconds")
        if self.link.isVisibleTo(self):
            self.link.set(f"{statistics.median(self._link_ms):4.0f} ms" if self._link_ms else "—",
                          "agent sent → received here, median; as exact as the two clocks agree")
