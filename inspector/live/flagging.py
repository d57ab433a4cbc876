"""When a frame becomes a flag: the automatic rules (confident crack, uncertain) and the manual
button, with de-duplication so a camera resting on one crack makes one flag, not thirty a second,
and a rate budget that keeps the most informative frame of each moment rather than the first.

Decision
--------
1. Manual (:meth:`Flagger.manual`): always stored, never suppressed (the user asked); its view is
   remembered, so the automatic rules will not flag the same view again.
2. Automatic (only if ``policy.auto``), per frame offered (:meth:`Flagger.offer`): a *candidate*
   is "crack" if any freshly inferred tile's crack probability is ``>= crack_threshold``; else
   "uncertain" if any lies inside ``uncertain_band`` (inclusive at both ends). Uncertain frames
   are the valuable ones for relabelling and fine-tuning. If the band reaches above
   ``crack_threshold`` (e.g. the user lowered the threshold), the crack rule simply wins for
   those tiles: the policy allows it rather than refusing a threshold a slider can produce.
3. De-duplication: a candidate whose thumbnail is within ``duplicate_distance`` of a view flagged
   this session (manual ones included; ``duplicate_memory`` = N: only the last N) is the same
   view and is dropped. This keeps a camera held still on a crack at one flag however long it
   stays, and a walk past the same stretch of wall again at the flags it already made (it used to
   compare with the last 8 flags only: 1,472 flags in 67 minutes of a looping video, exact
   repeats among them). Walking past again, the camera is rarely framed as before: a view also
   counts as seen when its phase correlation with a flagged one peaks at ``same_place_peak`` or
   more (the same place, shifted; see :func:`same_place_peaks` for the measured peaks). Both
   comparisons run over the whole session's flags at once (a matrix product and a batch of 64×48
   inverse FFTs; it grows with the flags kept). The flagger's time per frame, everything
   included, on the sample video looped 10 times: 0.43 ms mean, 1.2 ms p99
   (benchmarks/flag_volume.py, 2-core AMD EPYC).
4. Choice and rate budget. The first candidate opens a *window* of ``window_s``; every candidate
   until it ends competes, and the one with the highest score is kept when it ends
   (:meth:`Flagger.offer` returns it with the first frame offered after the end; :meth:`Flagger.due`
   without a frame, :meth:`Flagger.flush` at once). A token bucket (the standard rate limiter)
   bounds how many are kept: one token per ``budget_s`` seconds, at most ``burst`` saved up, one
   spent per flag; a window whose end finds the bucket empty stays open until a token comes, its
   candidates still competing. So a sweep past several new cracks keeps a flag for each (the
   burst), a long walk keeps at most one per ``budget_s`` on average, and each is the best frame
   of its time rather than the first. The score is how much the frame would teach times how new
   it is:

   * value (:meth:`Flagger.score`): the sum over the frame's tiles that meet a rule of ``p`` for a
     confident crack and ``1 - |2p - 1|`` for an uncertain tile (1 at p = 0.5), so a frame that
     shows more of a crack, or is less sure, wins over one that shows a corner of it;
   * novelty: one minus the highest place peak (:func:`same_place_peaks`) with a flagged view:
     about 0.9 for new wall, 0.8 for a frame that half shows a place already flagged, so of two
     frames that would teach alike the one with more new wall wins. (The thumbnail distance is
     no measure of overlap: 0.53 for a view shifted by half its width, 0.32–0.61 for unrelated
     views; it only says "the same view".)

   A candidate whose value alone cannot beat the window's best is counted without the comparisons.
   The window's best is checked again when it closes (a manual flag of the same view meanwhile
   drops it). With ``window_s`` and ``budget_s`` 0 every candidate is kept at once.
   The teachers' disagreement with the student is not known live; the background teacher scorer
   adds it to every stored flag and the review's "most in need" order uses it.
   :attr:`Flagger.stats` counts the flags kept and the candidates suppressed, and why.

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
from typing import Any

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
    window_s: float = 0.5                     # candidates this close in time compete: the best is kept
    budget_s: float = 2.0                     # the rate budget: one automatic flag per budget_s on average ...
    burst: int = 4                            # ... and at most this many in quick succession (0 s: no budget)
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
        for name in ("window_s", "budget_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a non-negative number of seconds, got {v!r}")
            object.__setattr__(self, name, float(v))
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"burst must be a positive whole number of flags, got {self.burst!r}")
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
    _check_frame(frame_rgb)
    grey = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, THUMB_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)
    small = cv2.GaussianBlur(small, (3, 3), 0)
    std = float(small.std())
    if std < _FLAT_STD:
        return None
    return (small - small.mean()) / std


_PLACE_WINDOW: np.ndarray | None = None


def place_signature(frame_rgb: np.ndarray) -> np.ndarray:
    """The phase of the spectrum (``rfft2``, every coefficient scaled to magnitude 1) of the
    frame's grey copy at ``PLACE_SIZE``, normalised and Hann-windowed: what
    :func:`same_place_peaks` correlates. Whitened once here, so the cross-power spectrum of two
    signatures is already normalised (the comparison with every flag is a product and an inverse
    FFT, about 15 µs a flag: benchmarks/flag_memory.py)."""
    global _PLACE_WINDOW
    if _PLACE_WINDOW is None:
        _PLACE_WINDOW = cv2.createHanningWindow(PLACE_SIZE, cv2.CV_32F)
    grey = cv2.resize(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY), PLACE_SIZE, interpolation=cv2.INTER_AREA)
    g = grey.astype(np.float32)
    g = (g - g.mean()) / (g.std() + 1e-6) * _PLACE_WINDOW
    spectrum = np.fft.rfft2(g)
    return (spectrum / (np.abs(spectrum) + 1e-9)).astype(np.complex64)


def same_place_peaks(signature: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Phase-correlation peak of ``signature`` with each of ``stored`` (N signatures): about 1 for
    the same view, 0.3–0.5 for the same place shifted by a quarter of the frame, under 0.11 for
    99 % of pairs of views that do not overlap (the 640×480 field video; the largest of 5,686
    such pairs 0.21)."""
    cross = signature[None] * np.conj(stored)
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
    """What the automatic rules did this session: flags ``kept``; candidate frames (a rule met)
    that were ``same_view`` (a view or a place already flagged) or ``outranked`` (another frame of
    their window was more informative); ``manual`` flags; views ``remembered`` from the store."""

    kept: int = 0
    same_view: int = 0
    outranked: int = 0
    manual: int = 0
    remembered: int = 0

    @property
    def suppressed(self) -> int:
        return self.same_view + self.outranked


@dataclass(frozen=True)
class Flag:
    """A frame the flagger chose: its ``reason``, the ``item`` the caller offered with it (the
    live view: its result, so the frame can be stored), its time ``at`` and its ``score``
    (:meth:`Flagger.score`)."""

    reason: str
    item: Any
    at: float
    score: float


@dataclass
class _Candidate:
    reason: str
    item: Any
    at: float
    score: float
    thumb: np.ndarray | None
    place: np.ndarray | None


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

    def place_peak(self, place: np.ndarray, last: int | None) -> float:
        """The highest :func:`same_place_peaks` of ``place`` with the flagged views (the ``last``
        N; None: all); 0 when there are none."""
        start = 0 if last is None else max(0, self._n - last)
        return float(same_place_peaks(place, self._places[start:self._n]).max()) if self._n > start else 0.0

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
    """Applies a :class:`FlagPolicy` to a stream of results: :meth:`offer` each one, store the
    :class:`Flag` s it returns; :meth:`due` closes a window when no frame comes, :meth:`flush` at
    the end. Remembers every view it flagged this session and counts what it kept and suppressed
    (:attr:`stats`).

    Thread-safe (the inference worker offers frames while the GUI flags by hand).
    """

    def __init__(self, policy: FlagPolicy = FlagPolicy()):
        if not isinstance(policy, FlagPolicy):
            raise TypeError(f"policy must be a FlagPolicy, got {type(policy).__name__}")
        self._policy = policy
        self._lock = threading.Lock()
        self._views = _Views()
        self._best: _Candidate | None = None     # the open window's most informative candidate
        self._closes: float | None = None        # when the open window ends (None: none open)
        self._tokens: float | None = None        # the rate budget's bucket (None: full) ...
        self._filled_at = 0.0                    # ... as of this time
        self.stats = FlagStats()

    @property
    def policy(self) -> FlagPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: FlagPolicy) -> None:
        """Swap the policy (e.g. the user moved a slider); the flagged views and an open window are kept."""
        if not isinstance(policy, FlagPolicy):
            raise TypeError(f"policy must be a FlagPolicy, got {type(policy).__name__}")
        with self._lock:
            self._policy = policy

    @property
    def pending(self) -> bool:
        """Whether a window is open (a candidate waits for :meth:`due` or :meth:`flush`)."""
        return self._best is not None

    def reset(self) -> None:
        """Forget the flagged views, the open window and the counts (a new inspection); call
        :meth:`flush` first to keep the open window's candidate."""
        with self._lock:
            self._views = _Views()
            self._best, self._closes, self._tokens = None, None, None
            self.stats = FlagStats()

    def manual(self, frame_rgb: np.ndarray) -> str:
        """The user flagged this frame: it is stored whatever the rules say ("manual" is returned
        for the store), and its view is remembered, so no automatic flag repeats it."""
        self._remember(frame_rgb)
        with self._lock:
            self.stats.manual += 1
        return "manual"

    def remember(self, frame_rgb: np.ndarray) -> None:
        """A view flagged before this session (a flag in the store,
        :class:`inspector.live.memory.StoreMemory`): no automatic flag repeats it."""
        self._remember(frame_rgb)
        with self._lock:
            self.stats.remembered += 1

    def _remember(self, frame_rgb: np.ndarray) -> None:
        thumb = thumbnail(frame_rgb)
        place = place_signature(frame_rgb) if thumb is not None else None
        with self._lock:
            self._views.add(thumb, place)

    def score(self, result: FrameResult) -> float:
        """How much a frame would teach, before novelty (module doc): the sum over its tiles
        that meet a rule of ``p`` (a confident crack) or ``1 - |2p - 1|`` (an uncertain tile)."""
        policy = self._policy
        lo, hi = policy.uncertain_band
        probs = [t.crack_prob for t in result.tiles] if result.tiles else [result.crack_prob_max]
        return float(sum(p if p >= policy.crack_threshold else (1.0 - abs(2.0 * p - 1.0) if lo <= p <= hi else 0.0)
                         for p in probs))

    def offer(self, frame_rgb: np.ndarray, result: FrameResult, now: float, item: Any = None) -> list[Flag]:
        """Consider one inferred frame at time ``now`` (monotonic seconds: ``time.perf_counter()``
        or the frame's own time). Returns the flags chosen by now: the best candidate of a window
        that has ended (with ``window_s`` and ``budget_s`` 0: this frame itself), else nothing. ``item`` is
        handed back in the :class:`Flag` (the caller's handle on the frame and its result)."""
        _check_time(now)
        _check_frame(frame_rgb)
        with self._lock:
            flags = self._close_if_due(now)
            policy = self._policy
            reason = policy.reason_for(result) if policy.auto else None
            if reason is not None:
                value = self.score(result)
                if self._best is not None and value <= self._best.score:
                    self.stats.outranked += 1     # it cannot win even as new as can be: no look
                else:
                    self._consider(frame_rgb, reason, value, item, float(now), policy)
            return flags + self._close_if_due(now)

    def due(self, now: float) -> list[Flag]:
        """The open window's flag if the window has ended by ``now``, else nothing (call it when
        no frame comes: a source that ended, a paused camera)."""
        _check_time(now)
        with self._lock:
            return self._close_if_due(now)

    def flush(self) -> list[Flag]:
        """Close the open window now and return its flag, if any (stop, the end of a video)."""
        with self._lock:
            return self._close()

    # ------------------------------------------------------------------ the window

    def _consider(self, frame_rgb, reason: str, value: float, item, now: float, policy: FlagPolicy) -> None:
        thumb = thumbnail(frame_rgb)
        place = place_signature(frame_rgb) if thumb is not None else None
        novelty = self._novelty(thumb, place, policy)
        if novelty is None:
            self.stats.same_view += 1
            return
        candidate = _Candidate(reason, item, now, value * novelty, thumb, place)
        if self._best is None:
            self._best, self._closes = candidate, now + policy.window_s
            return
        self.stats.outranked += 1                 # the loser: this one or the one it replaces
        if candidate.score > self._best.score:
            self._best = candidate

    def _novelty(self, thumb, place, policy: FlagPolicy) -> float | None:
        """None for a view or place already flagged; else how new it is: one minus the highest
        phase-correlation peak with a flagged view (1 with none to compare; unrelated views
        peak at 0.07–0.11, a place half in view about 0.2).

        The place comparison with every flag (about 15 µs a flag) runs only for a frame that is
        not the same view as a flag (the thumbnail product, cheap, decides that first), so a
        camera held on a flagged crack costs little. Caching the answer for the next frames at
        the same place was tried and dropped: on the field video's fast pan motion-blurred
        frames 100 px apart look alike to both measures, one took the other's "seen" and a crack
        went unflagged."""
        memory = policy.duplicate_memory
        if memory == 0:
            return 1.0
        if self._views.nearest(thumb, memory) < policy.duplicate_distance:
            return None
        peak = self._views.place_peak(place, memory) if place is not None else 0.0
        if policy.same_place_peak is not None and peak >= policy.same_place_peak:
            return None
        return 1.0 - peak

    def _budget(self, now: float) -> float:
        """The tokens in the bucket at ``now`` (refilled at one per ``budget_s``, at most ``burst``)."""
        policy = self._policy
        if policy.budget_s == 0 or self._tokens is None:
            return float(policy.burst)
        return min(float(policy.burst), self._tokens + max(0.0, now - self._filled_at) / policy.budget_s)

    def _close_if_due(self, now: float) -> list[Flag]:
        if self._closes is None or now < self._closes or self._budget(now) < 1.0:
            return []
        return self._close(now)

    def _close(self, now: float | None = None) -> list[Flag]:
        """Keep the window's best (if it is still new) and spend a token; ``now`` None: flush,
        which keeps it whatever the bucket holds (nothing chosen is lost at the end)."""
        best, self._best, self._closes = self._best, None, None
        if best is None:
            return []
        if self._novelty(best.thumb, best.place, self._policy) is None:   # flagged by hand meanwhile
            self.stats.same_view += 1
            return []
        at = best.at if now is None else now
        self._tokens, self._filled_at = self._budget(at) - 1.0, at
        self._views.add(best.thumb, best.place)
        self.stats.kept += 1
        return [Flag(best.reason, best.item, best.at, best.score)]


def _check_time(now) -> None:
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise ValueError(f"now must be a time in seconds, got {now!r}")


def _check_frame(frame_rgb) -> None:
    if not isinstance(frame_rgb, np.ndarray) or frame_rgb.dtype != np.uint8 or frame_rgb.ndim != 3 \
            or frame_rgb.shape[2] != 3 or frame_rgb.shape[0] < 1 or frame_rgb.shape[1] < 1:
        got = frame_rgb.shape if isinstance(frame_rgb, np.ndarray) else type(frame_rgb).__name__
        raise ValueError(f"frame_rgb must be a uint8 H×W×3 RGB array, got {got}")
