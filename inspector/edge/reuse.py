"""Temporal tile reuse: infer only the tiles whose content changed since they were last inferred.

numpy + OpenCV only, like the engine (the Jetson agent runs it too).

A hand-held sweep over a wall changes little from one frame to the next and a camera on a pole
changes nothing, yet :meth:`InferenceEngine.inspect` re-runs every tile of every frame.
:class:`ReusingEngine` wraps an engine for **one stream of frames** and keeps, per tile it
inferred, a *cached result* (probabilities, CAM, a small grey copy of what it saw) that follows
the content as the camera moves.

Per frame (:meth:`ReusingEngine.inspect`)
-----------------------------------------
1. **Global motion**: the frame is shrunk to a grey copy about ``motion_width`` pixels wide
   (``INTER_AREA``) and :func:`cv2.phaseCorrelate` (Hanning window) gives its sub-pixel shift
   from the previous copy; every cached result moves with it. A weak correlation peak
   (``response < min_response``: a shake, heavy blur, a cut) moves nothing: the change test
   below then decides.
2. **Which cached result may stand for each tile of the engine's grid** (the same grid as full
   inference, so verdicts are comparable tile by tile): the nearest cached result, if
   * it has moved at most ``max_drift`` × tile from the tile (the CNN's verdict on a tile
     shifted by an eighth of its width is close to the same; beyond that new content has come in),
   * the content under it now differs from what it saw by at most ``change_threshold`` grey
     levels (mean absolute difference on the small grey copy, over the part still in the frame,
     which must be at least half the tile): an object entering, local motion, a light change,
   * it is younger than ``refresh_frames`` frames (every tile is re-inferred at least that
     often, even on a camera that never moves; the ages are staggered so the refresh is spread
     evenly over the frames instead of all tiles at once), or than ``fragile_refresh_frames``
     if the model was unsure of it (crack probability inside ``fragile_band``): such a verdict is
     the one a little light or a few pixels flip, and an uncertain tile is what raises a flag.
3. **Fresh tiles**: the tiles without such a result, at most ``cap`` of them per frame: those
   with no cached result close enough first (new area, changed content; most changed first),
   then the oldest. ``cap`` is ``max_fresh`` if given, else what fits ``budget_ms`` at the
   measured milliseconds per tile (None: no cap). So a fast pan degrades to fewer fresh tiles,
   never to a growing lag. A tile over the cap keeps its nearest cached result, marked stale.
   The first frame, or a frame of another size, infers every tile.
4. **Result**: a :class:`FrameResult` with one :class:`TileResult` per grid tile (``fresh``
   tells inferred from carried over) and a heat-map stitched from the chosen results where
   their content is now (:func:`inspector.edge.engine.stitch_heatmap`); ``reuse`` is a
   :class:`ReuseInfo` (tiles inferred, motion, cap). Flags must be raised from fresh tiles only
   (:meth:`FrameResult.fresh_tiles`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import cv2
import numpy as np

from inspector.edge.engine import (FrameResult, InferenceEngine, TileResult, _check_image, _tile_batch, stitch_heatmap,
                                   tile_grid)


CHANGE_BLOCK = 4   # the change test's block, in pixels of the small copy (8 frame px at 640 wide)
# the share of a frame interval inference may take when the cap is fitted to the camera's rate;
# the rest is for decoding, motion, stitching, the overlay and painting (or encoding, on a device)
FRAME_SHARE = 0.5


@dataclass(frozen=True)
class ReusePolicy:
    """When a cached tile result may stand for a tile; see the module doc."""

    # The defaults were chosen on the field video (benchmarks/tile_reuse.py; the sweep is in
    # docs/design/edge-models.md, "Temporal tile reuse") and checked on the sample video.
    refresh_frames: int = 45        # every tile re-inferred at least every K frames (1.5 s at 30 fps)
    # a tile the model was unsure of (crack probability inside fragile_band) at least this often:
    # its verdict is the one a little more light or a few pixels can flip
    fragile_refresh_frames: int = 15
    fragile_band: tuple[float, float] = (0.3, 0.7)
    max_drift: float = 0.125        # fraction of a tile a cached result may have moved
    change_threshold: float = 15.0  # |Δgrey| (0..255) of the most changed block under a cached result
    min_response: float = 0.05      # phase-correlation peak below which the motion is not trusted
    motion_width: int = 320         # width of the small grey copy for motion and change
    max_fresh: int | None = None    # tiles inferred per frame at most (None: from budget_ms)
    budget_ms: float | None = None  # inference time per frame the cap is fitted to (None: no cap)

    def __post_init__(self):
        for name in ("refresh_frames", "fragile_refresh_frames"):
            k = getattr(self, name)
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"{name} must be a positive integer, got {k!r}")
        band = self.fragile_band
        if not (isinstance(band, (tuple, list)) and len(band) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in band)
                and 0.0 <= band[0] <= band[1] <= 1.0):
            raise ValueError(f"fragile_band must be (low, high) with 0 <= low <= high <= 1, got {band!r}")
        for name in ("max_drift", "change_threshold", "min_response"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a non-negative number, got {v!r}")
        if isinstance(self.motion_width, bool) or not isinstance(self.motion_width, int) or self.motion_width < 32:
            raise ValueError(f"motion_width must be an integer of at least 32 pixels, got {self.motion_width!r}")
        m = self.max_fresh
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"max_fresh must be a positive integer or None, got {m!r}")
        b = self.budget_ms
        if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b)
                              or b <= 0):
            raise ValueError(f"budget_ms must be a positive number of milliseconds or None, got {b!r}")


def reusable(engine) -> bool:
    """Whether tile reuse can wrap ``engine``: an :class:`InferenceEngine` (a stand-in that only
    has ``inspect``, as tests and tools use, runs as it is)."""
    return isinstance(engine, InferenceEngine)


def fitted_to(policy: ReusePolicy, fps: float) -> ReusePolicy:
    """``policy`` with its time budget set to ``FRAME_SHARE`` of a ``fps`` frame interval, if it has none."""
    if policy.budget_ms is not None or policy.max_fresh is not None or not fps > 0:
        return policy
    return replace(policy, budget_ms=FRAME_SHARE * 1000.0 / fps)


@dataclass(frozen=True)
class ReuseInfo:
    """What reuse did on one frame: ``fresh`` of ``total`` tiles inferred, the global ``motion``
    (dx, dy) in frame pixels (None: not trusted), the ``cap`` in force and whether it held
    tiles back (``capped``: stale tiles that wanted re-inference)."""

    fresh: int
    total: int
    motion: tuple[float, float] | None
    cap: int | None
    capped: int = 0

    @property
    def share(self) -> float:
        return self.fresh / self.total if self.total else 0.0


class _Cache:
    """The cached results, one row each: position (x0, y0) in current frame pixels, the frame
    number it must be re-inferred by (``due``, staggered: see the module doc), probabilities,
    CAM and the small grey copy of its tile."""

    def __init__(self, pos, due, probs, cams, thumbs):
        self.pos, self.due, self.probs, self.cams, self.thumbs = pos, due, probs, cams, thumbs

    def __len__(self) -> int:
        return len(self.due)

    def keep(self, rows: np.ndarray) -> None:
        for name in ("pos", "due", "probs", "cams", "thumbs"):
            setattr(self, name, getattr(self, name)[rows])

    def add(self, pos, due, probs, cams, thumbs) -> None:
        self.pos = np.concatenate([self.pos, pos])
        self.due = np.concatenate([self.due, due])
        self.probs = np.concatenate([self.probs, probs])
        self.cams = np.concatenate([self.cams, cams])
        self.thumbs = np.concatenate([self.thumbs, thumbs])


class ReusingEngine:
    """``engine`` (an :class:`~inspector.edge.engine.InferenceEngine`) with temporal tile reuse for
    one stream of frames; see the module doc. Not thread-safe: one per stream."""

    def __init__(self, engine, policy: ReusePolicy = ReusePolicy()):
        if not isinstance(policy, ReusePolicy):
            raise TypeError(f"policy must be a ReusePolicy, got {type(policy).__name__}")
        self.engine = engine
        self.policy = policy
        self.ms_per_tile: float | None = None   # measured, exponential average
        self._rate_known = False
        self.reset()

    def reset(self) -> None:
        """Forget every cached result: the next frame infers every tile."""
        self._shape: tuple[int, int] | None = None
        self._small: np.ndarray | None = None
        self._window: np.ndarray | None = None
        self._cache: _Cache | None = None
        self._frame_no = 0

    def follow_rate(self, fps: float) -> None:
        """Fit the cap to a camera delivering ``fps`` frames a second (:func:`fitted_to`), once its
        rate is known (a camera that has just started says 0); a policy with its own cap keeps it."""
        if not self._rate_known and fps > 0:
            self.policy, self._rate_known = fitted_to(self.policy, fps), True

    @property
    def cap(self) -> int | None:
        p = self.policy
        if p.max_fresh is not None:
            return p.max_fresh
        if p.budget_ms is None or not self.ms_per_tile:
            return None
        return max(1, int(p.budget_ms / self.ms_per_tile))

    # ------------------------------------------------------------------ steps

    def _motion(self, small: np.ndarray) -> tuple[float, float] | None:
        if self._small is None:
            return None
        (dx, dy), response = cv2.phaseCorrelate(self._small, small, self._window)
        if not (response >= self.policy.min_response and math.isfinite(dx) and math.isfinite(dy)):
            return None
        scale = self._shape[1] / small.shape[1]
        return dx * scale, dy * scale

    def _change(self, small: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """How much the content under each cached row changed since it was inferred: the largest
        mean |Δgrey| over blocks of ``CHANGE_BLOCK`` pixels of the small copy, between the row's
        thumbnail and the small copy cut at the row's sub-pixel position now (inf where less than
        half of it is still in the frame). The largest block, not the mean: a thin crack coming
        into a tile changes a few blocks a lot and the tile's mean hardly at all."""
        scale = small.shape[1] / self._shape[1]
        t = self._thumb
        h, w = small.shape
        out = np.full(len(rows), np.inf)
        for k, r in enumerate(rows):
            fx, fy = (float(v) * scale for v in self._cache.pos[r])
            x, y = math.floor(fx), math.floor(fy)
            x0, y0, x1, y1 = max(0, x + 1), max(0, y + 1), min(w, x + t) - 1, min(h, y + t) - 1
            if (x1 - x0) * (y1 - y0) * 2 < t * t:
                continue
            now = cv2.getRectSubPix(small, (t, t), (fx + (t - 1) / 2, fy + (t - 1) / 2))
            diff = np.abs(now - self._cache.thumbs[r])[y0 - y:y1 - y, x0 - x:x1 - x]
            bh, bw = max(1, diff.shape[0] // CHANGE_BLOCK), max(1, diff.shape[1] // CHANGE_BLOCK)
            out[k] = float(cv2.resize(diff, (bw, bh), interpolation=cv2.INTER_AREA).max())
        return out

    def _thumbs(self, small: np.ndarray, boxes) -> np.ndarray:
        """The small grey copy of each tile at ``boxes`` (sub-pixel), as the cache keeps it."""
        scale = small.shape[1] / self._shape[1]
        t = self._thumb
        return np.stack([cv2.getRectSubPix(small, (t, t), (x0 * scale + (t - 1) / 2, y0 * scale + (t - 1) / 2))
                         for x0, y0, _, _ in boxes])

    def _plan(self, small: np.ndarray, grid: np.ndarray, motion, tile: int):
        """Step 2-3 of the module doc: move the cache with ``motion``; for each grid tile the
        cached row that stands for it (``choice``), the tiles to infer now (``fresh``, in order of
        need, at most the cap) and how many more wanted it (``capped``)."""
        p, cache = self.policy, self._cache
        n = len(grid)
        if motion is not None:
            cache.pos += motion
        dist = np.abs(cache.pos[None, :, :] - grid[:, None, :]).max(axis=2)   # (tiles, cached)
        choice = dist.argmin(axis=1)
        near = dist[np.arange(n), choice] <= p.max_drift * tile
        change = np.full(n, np.inf)
        change[near] = self._change(small, choice[near])
        overdue = self._frame_no - cache.due[choice]
        valid = near & (change <= p.change_threshold)
        # new or changed content first (most changed first), then the most overdue
        urgent = np.flatnonzero(~valid)
        urgent = urgent[np.argsort(-np.where(np.isfinite(change[urgent]), change[urgent], 1e9), kind="stable")]
        old = np.flatnonzero(valid & (overdue >= 0))
        old = old[np.argsort(-overdue[old], kind="stable")]
        wanted = np.concatenate([urgent, old]).astype(int)
        cap = self.cap
        fresh = wanted if cap is None else wanted[:cap]
        return choice, fresh, len(wanted) - len(fresh)

    def _remember(self, small, pos, boxes, probs, cams, choice, fresh, first: bool) -> np.ndarray:
        """Cache the fresh tiles' results (``cams``: crack-class CAMs) with their deadline (the
        unsure sooner; staggered on the first frame); ``choice`` with the fresh tiles pointing at them."""
        p = self.policy
        crack = probs[:, self.engine.crack_index]
        period = np.where((crack >= p.fragile_band[0]) & (crack <= p.fragile_band[1]),
                          p.fragile_refresh_frames, p.refresh_frames)
        if first:   # staggered: an even share of the tiles comes due on every frame
            period = period - (np.arange(len(period)) * period) // len(period)
        rows = (pos, self._frame_no + period, probs.astype(np.float32), cams.astype(np.float32),
                self._thumbs(small, boxes))
        if first:
            self._cache, start = _Cache(*rows), 0
        else:
            start = len(self._cache)
            self._cache.add(*rows)
        choice = choice.copy()
        choice[fresh] = start + np.arange(len(fresh))
        return choice

    def inspect(self, frame_rgb: np.ndarray) -> FrameResult:
        """Like :meth:`InferenceEngine.inspect`, inferring only the tiles that need it."""
        t_start = time.perf_counter()
        e, p = self.engine, self.policy
        frame = _check_image(frame_rgb, "frame")
        height, width = frame.shape[:2]
        tile = e.tile_size
        boxes = tile_grid(height, width, tile, e.tile_overlap)
        if height < tile or width < tile:        # tiny frames: nothing worth saving
            return e.inspect(frame)
        sw = min(width, p.motion_width)
        sh = max(8, round(height * sw / width))
        small = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (sw, sh),
                           interpolation=cv2.INTER_AREA).astype(np.float32)
        if self._shape != (height, width):
            self.reset()
            self._shape = (height, width)
            self._window = cv2.createHanningWindow((sw, sh), cv2.CV_32F)
            self._thumb = max(1, round(tile * sw / width))
        motion = self._motion(small)
        self._small = small
        self._frame_no += 1
        t_motion = time.perf_counter()

        n = len(boxes)
        grid = np.array([b[:2] for b in boxes], np.float64)
        first = self._cache is None
        if first:
            choice, fresh, capped = np.full(n, -1), np.arange(n), 0
        else:
            choice, fresh, capped = self._plan(small, grid, motion, tile)
        t_plan = time.perf_counter()

        infer_ms = 0.0
        if len(fresh):
            fresh_boxes = [boxes[i] for i in fresh]
            t0 = time.perf_counter()
            probs, cams = e._run(_tile_batch(frame, fresh_boxes, tile, e.input_size))
            infer_ms = (time.perf_counter() - t0) * 1e3
            per_tile = infer_ms / len(fresh)
            self.ms_per_tile = per_tile if self.ms_per_tile is None else 0.8 * self.ms_per_tile + 0.2 * per_tile
            choice = self._remember(small, grid[fresh], fresh_boxes, probs, cams[:, e.crack_index], choice, fresh,
                                    first)
        t_inf = time.perf_counter()

        ci = e.crack_index
        cache = self._cache
        # keep what a tile chose, renumbered; the rest is forgotten
        used = np.unique(choice)
        cache.keep(used)
        choice = np.searchsorted(used, choice)
        is_fresh = np.zeros(n, bool)
        is_fresh[fresh] = True
        tiles = [TileResult(box=tuple(int(v) for v in boxes[i]), probs=cache.probs[c].copy(),
                            crack_prob=float(cache.probs[c, ci]), cam=cache.cams[c].copy(), fresh=bool(is_fresh[i]))
                 for i, c in enumerate(choice)]
        # a result stands where its content is now; a stale one held back by the cap, where its tile is
        followed = np.abs(cache.pos[choice] - grid).max(axis=1) <= p.max_drift * tile
        placed = np.where((is_fresh | followed)[:, None], cache.pos[choice], grid)
        heat = stitch_heatmap(height, width, [(x, y, x + tile, y + tile) for x, y in placed], [(tile, tile)] * n,
                              cache.probs[choice, ci], cache.cams[choice])
        t_end = time.perf_counter()
        timings = {"motion": (t_motion - t_start) * 1e3, "tile": (t_plan - t_motion) * 1e3,
                   "preprocess": (t_inf - t_plan) * 1e3 - infer_ms, "infer": infer_ms,
                   "stitch": (t_end - t_inf) * 1e3, "total": (t_end - t_start) * 1e3}
        info = ReuseInfo(fresh=len(fresh), total=n, motion=motion, cap=self.cap, capped=capped)
        return FrameResult(tiles=tiles, heatmap=heat, crack_prob_max=max(t.crack_prob for t in tiles),
                           timings=timings, reuse=info)
