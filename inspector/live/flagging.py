"""When a frame becomes a flag: the automatic rules (confident crack, uncertain) and the manual
button, with de-duplication so a camera resting on one crack makes one flag, not thirty a second.

Decision (:meth:`Flagger.decide`)
---------------------------------
1. ``manual``: always flagged ("manual"), never suppressed (the user asked); its view is
   remembered, so the automatic rules will not flag the same view again right after.
2. Automatic (only if ``policy.auto``): "crack" if any tile's crack probability is
   ``>= crack_threshold``; else "uncertain" if any tile lies inside ``uncertain_band``
   (inclusive at both ends). Uncertain frames are the valuable ones for relabelling and
   fine-tuning. If the band reaches above ``crack_threshold`` (e.g. the user lowered the
   threshold), the crack rule simply wins for those tiles: the policy allows it rather than
   refusing a threshold a slider can produce.
3. De-duplication of automatic flags, both required:
   * at least ``min_interval_s`` since the last *automatic* flag, and
   * the frame's thumbnail differs from each thumbnail flagged in this session (manual ones
     included; ``duplicate_memory`` = N: only the last N) by more than ``duplicate_distance``.
   The second rule is what keeps a camera held still on a crack at one flag however long it
   stays, and a walk past the same stretch of wall again at the flags it already made (it
   compared with the last 8 flags only: 1,472 flags in 67 minutes of a looping video, exact
   repeats among them); the first limits the rate while the camera sweeps. Walking past again,
   the camera is rarely framed as before: a view also counts as seen when its phase correlation
   with a flagged one peaks at ``same_place_peak`` or more (the same place, shifted; see
   :func:`same_place_peaks` for the measured peaks). Both comparisons run over the whole
   session's flags at once (a matrix product and a batch of 64×48 inverse FFTs: 0.3 ms with a
   dozen flags stored, measured on the sample video; it grows with the flags kept), and only for
   a frame that would otherwise be flagged.
   :attr:`Flagger.stats` counts the flags kept and the frames suppressed, and why.

Thumbnails and distance
-----------------------
A thumbnail is the frame shrunk to 32×24 grey (``INTER_AREA``, which averages away sensor
noise and JPEG blocks), blurred a little (so a shift of a few pixels changes little) and
normalised to mean 0, standard deviation 1 (so exposure changes do not make a new view). The
distance of two thumbnails is ``(1 - r) / 2`` with ``r`` their correlation coefficient: 0 for
the same view, about 0.5 for unrelated views, 1 for an inverted one. The default 0.06 means
``r > 0.88``. Measured on the shipped sample video: frames of the 3 s held still on a crack
(slight wobble, JPEG noise) are at most 0.005 apart; frames 2 s apart anywhere else have a
median distance of 0.47 and are all above 0.1, except where the camera eases into the hold. A featureless view (std ≈ 0)
has no structure to compare; it counts as the same view as another featureless one.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from inspector.edge.engine import FrameResult

REASONS = ("manual", "crack", "uncertain")
THUMB_SIZE = (32, 24)        # (width, height)
PLACE_SIZE = (64, 48)        # (width, height) of the grey copy whose phase correlation finds the same place
_FLAT_STD = 1.0              # grey levels: below this a thumbnail has no structure to compare


def _fraction(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a number, got {v!r}")
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {v!r}")
    return float(v)


@dataclass(frozen=True)
class FlagPolicy:
    crack_threshold: float = 0.90             # a tile at or above: confident crack -> "crack"
    uncertain_band: tuple[float, float] = (0.40, 0.60)  # a tile inside (inclusive): "uncertain"
    min_interval_s: float = 2.0               # between two automatic flags
    duplicate_distance: float = 0.06          # thumbnail distance under which a frame is "the same view"
    duplicate_memory: int | None = None       # flagged thumbnails compared against: None every one of the
                                              # session, N the last N, 0 no view check
    same_place_peak: float | None = 0.2       # phase-correlation peak at or above which a view shows a
                                              # place already flagged, shifted (None: not checked)
    auto: bool = True                         # automatic flagging on/off

    def __post_init__(self):
        thr = _fraction("crack_threshold", self.crack_threshold)
        if thr <= 0.0:
            raise ValueError("crack_threshold must be above 0 (at 0 every frame would be a crack)")
        band = self.uncertain_band
        if not isinstance(band, (tuple, list)) or len(band) != 2:
            raise ValueError(f"uncertain_band must be (low, high), got {band!r}")
        lo, hi = (_fraction("uncertain_band", b) for b in band)
        if not lo < hi:
            raise ValueError(f"uncertain_band must have low < high, got {band!r}")
        interval = self.min_interval_s
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not math.isfinite(interval) \
                or interval < 0:
            raise ValueError(f"min_interval_s must be a non-negative number of seconds, got {interval!r}")
        dist = self.duplicate_distance
        if isinstance(dist, bool) or not isinstance(dist, (int, float)) or not 0.0 <= dist <= 1.0:
            raise ValueError(f"duplicate_distance must be in [0, 1] (0: never a duplicate), got {dist!r}")
        mem = self.duplicate_memory
        if mem is not None and (isinstance(mem, bool) or not isinstance(mem, int) or mem < 0):
            raise ValueError(f"duplicate_memory must be a non-negative integer or None (all), got {mem!r}")
        peak = self.same_place_peak
        if peak is not None and (isinstance(peak, bool) or not isinstance(peak, (int, float))
                                 or not 0.0 < peak <= 1.0):
            raise ValueError(f"same_place_peak must be in (0, 1] or None, got {peak!r}")
        if not isinstance(self.auto, bool):
            raise ValueError(f"auto must be True or False, got {self.auto!r}")
        # normalised types, so policies compare and serialise the same however they were written
        object.__setattr__(self, "crack_threshold", thr)
        object.__setattr__(self, "uncertain_band", (lo, hi))
        object.__setattr__(self, "min_interval_s", float(interval))
        object.__setattr__(self, "duplicate_distance", float(dist))

    def reason_for(self, result: FrameResult) -> str | None:
        """"crack", "uncertain" or None for an inference result (no de-duplication). Only tiles
        inferred on this frame count: a result carried over by tile reuse was judged when it was
        fresh (inspector.edge.reuse), so a frame with no fresh tile is never flagged."""
        if not result.tiles:
            probs = [result.crack_prob_max]
        else:
            probs = [t.crack_prob for t in result.fresh_tiles]
        if any(p >= self.crack_threshold for p in probs):
            return "crack"
        lo, hi = self.uncertain_band
        if any(lo <= p <= hi for p in probs):
            return "uncertain"
        return None


def thumbnail(frame_rgb: np.ndarray) -> np.ndarray | None:
    """32×24 float32, mean 0 / std 1 (see the module doc); None for a featureless frame."""
    if not isinstance(frame_rgb, np.ndarray) or frame_rgb.dtype != np.uint8 or frame_rgb.ndim != 3 \
            or frame_rgb.shape[2] != 3 or frame_rgb.shape[0] < 1 or frame_rgb.shape[1] < 1:
        got = frame_rgb.shape if isinstance(frame_rgb, np.ndarray) else type(frame_rgb).__name__
        raise ValueError(f"frame_rgb must be a uint8 H×W×3 RGB array, got {got}")
    grey = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, THUMB_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)
    small = cv2.GaussianBlur(small, (3, 3), 0)
    std = float(small.std())
    if std < _FLAT_STD:
        return None
    return (small - small.mean()) / std


_PLACE_WINDOW: np.ndarray | None = None


def place_signature(frame_rgb: np.ndarray) -> np.ndarray:
    """The spectrum (``rfft2``) of the frame's grey copy at ``PLACE_SIZE``, normalised and
    Hann-windowed: what :func:`same_place_peaks` correlates."""
    global _PLACE_WINDOW
    if _PLACE_WINDOW is None:
        _PLACE_WINDOW = cv2.createHanningWindow(PLACE_SIZE, cv2.CV_32F)
    grey = cv2.resize(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY), PLACE_SIZE, interpolation=cv2.INTER_AREA)
    g = grey.astype(np.float32)
    g = (g - g.mean()) / (g.std() + 1e-6) * _PLACE_WINDOW
    return np.fft.rfft2(g).astype(np.complex64)


def same_place_peaks(signature: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Phase-correlation peak of ``signature`` with each of ``stored`` (N signatures): about 1 for
    the same view, 0.3–0.5 for the same place shifted by a quarter of the frame, under 0.11 for
    99 % of pairs of views that do not overlap (the 640×480 field video; the largest of 5,686
    such pairs 0.21)."""
    cross = signature[None] * np.conj(stored)
    cross /= np.abs(cross) + 1e-9
    r = np.fft.irfft2(cross, s=(PLACE_SIZE[1], PLACE_SIZE[0]), axes=(1, 2))
    return r.reshape(len(stored), -1).max(axis=1)


def thumbnail_distance(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """``(1 - r) / 2`` of two thumbnails; featureless ones are 0 from each other and 0.5 from the rest."""
    if a is None or b is None:
        return 0.0 if a is None and b is None else 0.5
    return _distance(float(np.mean(a * b)))


def _distance(r: float) -> float:
    """The distance of two thumbnails whose correlation is ``r``."""
    return min(1.0, max(0.0, (1.0 - r) / 2.0))


@dataclass
class FlagStats:
    """What the automatic rules did this session: flags ``kept``; frames that would have been
    flagged but were ``same_view`` (a view or a place already flagged) or ``too_soon`` (within
    ``min_interval_s`` of the last automatic flag); ``manual`` flags."""

    kept: int = 0
    same_view: int = 0
    too_soon: int = 0
    manual: int = 0

    @property
    def suppressed(self) -> int:
        return self.same_view + self.too_soon


class _Views:
    """The flagged thumbnails of the session, as rows of one matrix (featureless ones counted apart)."""

    def __init__(self):
        self._rows = np.zeros((0, THUMB_SIZE[0] * THUMB_SIZE[1]), np.float32)
        self._places = np.zeros((0, PLACE_SIZE[1], PLACE_SIZE[0] // 2 + 1), np.complex64)
        self._n = 0
        self.flat = 0

    def add(self, thumb: np.ndarray | None, place: np.ndarray | None) -> None:
        if thumb is None:
            self.flat += 1
            return
        if self._n == len(self._rows):          # grow by doubling: amortised O(1) per flag
            size = max(64, 2 * len(self._rows))
            rows, places = np.zeros((size, self._rows.shape[1]), np.float32), np.zeros(
                (size, *self._places.shape[1:]), np.complex64)
            rows[:self._n], places[:self._n] = self._rows[:self._n], self._places[:self._n]
            self._rows, self._places = rows, places
        self._rows[self._n] = thumb.ravel()
        if place is not None:
            self._places[self._n] = place
        self._n += 1

    def seen_place(self, place: np.ndarray, last: int | None, peak: float) -> bool:
        """Whether a flagged view (the ``last`` N; None: all) shows the place of ``place``, shifted."""
        start = 0 if last is None else max(0, self._n - last)
        return self._n > start and bool((same_place_peaks(place, self._places[start:self._n]) >= peak).any())

    def nearest(self, thumb: np.ndarray | None, last: int | None) -> float:
        """The smallest :func:`thumbnail_distance` to the session's thumbnails (the ``last`` N of
        them; None: all); 1.0 when there are none."""
        if thumb is None:
            return 0.0 if self.flat else (0.5 if self._n else 1.0)
        rows = self._rows[:self._n] if last is None else self._rows[max(0, self._n - last):self._n]
        if not len(rows):
            return 0.5 if self.flat else 1.0
        d = _distance(float((rows @ thumb.ravel()).max()) / rows.shape[1])
        return min(d, 0.5) if self.flat else d


class Flagger:
    """Applies a :class:`FlagPolicy` to a stream of results; remembers what it flagged (every view
    of the session) and counts what it kept and suppressed (:attr:`stats`).

    Thread-safe (the inference worker decides automatic flags while the GUI asks for manual ones).
    """

    def __init__(self, policy: FlagPolicy = FlagPolicy()):
        if not isinstance(policy, FlagPolicy):
            raise TypeError(f"policy must be a FlagPolicy, got {type(policy).__name__}")
        self._policy = policy
        self._lock = threading.Lock()
        self._views = _Views()
        self._last_auto: float | None = None
        self.stats = FlagStats()

    @property
    def policy(self) -> FlagPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: FlagPolicy) -> None:
        """Swap the policy (e.g. the user moved a slider); the flagged views are kept."""
        if not isinstance(policy, FlagPolicy):
            raise TypeError(f"policy must be a FlagPolicy, got {type(policy).__name__}")
        with self._lock:
            self._policy = policy

    def reset(self) -> None:
        """Forget the flagged views and the counts (a new inspection)."""
        with self._lock:
            self._views = _Views()
            self._last_auto = None
            self.stats = FlagStats()

    def decide(self, frame_rgb: np.ndarray, result: FrameResult, now: float, *, manual: bool = False) -> str | None:
        """The flag reason ("manual" | "crack" | "uncertain") for this frame, or None.

        ``now``: a monotonic time in seconds (``time.perf_counter()`` or the frame's capture time).
        """
        if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
            raise ValueError(f"now must be a time in seconds, got {now!r}")
        if manual:
            thumb = thumbnail(frame_rgb)
            place = place_signature(frame_rgb) if thumb is not None else None
            with self._lock:
                self._views.add(thumb, place)
                self.stats.manual += 1
            return "manual"
        with self._lock:
            policy = self._policy
            if not policy.auto:
                return None
            reason = policy.reason_for(result)
            if reason is None:
                return None
            if self._last_auto is not None and now - self._last_auto < policy.min_interval_s:
                self.stats.too_soon += 1
                return None
            thumb = thumbnail(frame_rgb)
            place = place_signature(frame_rgb) if thumb is not None else None
            if policy.duplicate_memory != 0 and (
                    self._views.nearest(thumb, policy.duplicate_memory) < policy.duplicate_distance
                    or (place is not None and policy.same_place_peak is not None
                        and self._views.seen_place(place, policy.duplicate_memory, policy.same_place_peak))):
                self.stats.same_view += 1
                return None
            self._views.add(thumb, place)
            self._last_auto = float(now)
            self.stats.kept += 1
            return reason
