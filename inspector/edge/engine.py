"""The inference engine: frames of any size in, per-tile crack probabilities and a heat-map out.

numpy + onnxruntime + OpenCV only (the Jetson agent imports this; never torch, never Qt).

How a frame is inspected (:meth:`InferenceEngine.inspect`)
------------------------------------------------------------
1. **Tiles** (:func:`tile_grid`): square tiles of ``tile_size`` frame pixels with
   ``tile_overlap`` (fraction of a tile); both default to the package manifest's ``tiling``
   (the shipped student: 160 px, no overlap: 12 tiles for 640×480), else the model's input
   size S (native resolution) and 0.25. Tiles start every ``round(tile·(1-overlap))`` pixels; the last row/column
   is shifted to end exactly on the frame border, so every pixel is covered and no tile hangs
   outside the frame.
   A frame *smaller* than a tile (in either dimension) is **padded, not resized**: the frame
   is reflect-padded (``BORDER_REFLECT_101``) at the bottom/right up to one tile, so the model
   sees cracks at the same scale as in its training patches (enlarging a small frame would
   magnify a hair-line crack into something it never saw). The tile's box is clipped to the
   frame and the padded part of its CAM is discarded.
2. **Preprocess**: if ``tile_size != S`` every tile is resized to S×S (``INTER_AREA`` when
   shrinking, ``INTER_LINEAR`` when enlarging). Normalisation is in the graph, so the batch
   stays uint8 NHWC.
3. **Infer**: all tiles of the frame as **one batch**, one ``session.run``.
4. **Stitch** (:func:`compose_heatmap`): each tile's ``cam`` of the crack class (raw, not
   normalised, so tiles are comparable; kept exact in :attr:`TileResult.cam`) is multiplied by
   the tile's crack probability (a tile the model calls "no crack" stays cold even if its CAM
   has structure) and its cells are placed in **frame coordinates**, in one coarse grid of the
   CAM's cell pitch (53⅓ px for the shipped 160 px tiles and 3×3 CAMs; overlapping tiles
   average). That grid is upsampled once, bilinear, to the frame: one continuous map,
   interpolated across tile borders (upsampling each tile alone left a step at every border:
   a patchwork). It is then normalised **once per frame**, by its
   peak, and scaled so that the peak equals ``crack_prob_max`` (the most confident tile's crack
   probability). So the heat-map is float32 H×W in [0, 1]; in a frame with cracks it peaks at
   the crack with the confidence of the model, and a frame where no tile believes in a crack
   stays cold as a whole (a per-frame max-normalisation alone would paint the hottest speck of
   an empty wall bright red).

Threads
-------
onnxruntime gets ``intra_op_num_threads = threads`` (default: the cores this process may run
on), ``inter_op_num_threads = 1`` (the graphs are a chain, nothing to run in parallel) and
**no spinning** (``session.intra_op.allow_spinning = 0``): by default ORT's idle workers
busy-wait after each run, which steals the cores the camera/decoding/UI threads need between
frames; not spinning costs well under a millisecond per run. OpenCV's own thread pool is set
to ``cv2_threads`` (default 1, process-wide, ``None`` leaves it alone): the engine's OpenCV
work (crops, tiny resizes) is cheap and runs *between* inferences, and a second pool of
worker threads only fights ORT's for the same cores. numpy here does no multithreaded BLAS.

:meth:`InferenceEngine.inspect` keeps no state between calls and ``InferenceSession.run`` is
thread-safe, so one engine may serve several threads.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from inspector.edge import engine_cache, numerics
from inspector.edge.contract import INPUT_NAME, verify_reference_outputs
from inspector.edge.fields import PackageError
from inspector.edge.package import ModelPackage, load_package

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
PREFERRED_PROVIDERS: tuple[str, ...] = ("TensorrtExecutionProvider", "CUDAExecutionProvider", CPU)

DEFAULT_TILE_OVERLAP = 0.25  # when neither the caller nor the package's manifest says
Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), x1/y1 exclusive, frame pixels


def select_providers(preferred: Sequence[str] | None = None) -> list[str]:
    """Execution providers to ask onnxruntime for, best first, CPU always last.

    ``preferred`` (default TensorRT, CUDA, CPU) is filtered by
    ``onnxruntime.get_available_providers()``; the CPU provider is appended as the fallback
    if missing. A name onnxruntime does not know at all (a typo) raises ValueError; a known
    provider that this build/device lacks is dropped (logged), which is the fallback.
    """
    import onnxruntime as ort

    order = list(PREFERRED_PROVIDERS if preferred is None else preferred)
    known = set(ort.get_all_providers())
    available = set(ort.get_available_providers())
    out: list[str] = []
    for name in order:
        if not isinstance(name, str):
            raise ValueError(f"provider names must be strings like 'CUDAExecutionProvider', got {name!r}")
        if name not in known:
            raise ValueError(f"unknown execution provider {name!r}; onnxruntime knows {sorted(known)}")
        if name == CPU or name in out:
            continue
        if name in available:
            out.append(name)
        else:
            log.info("execution provider %s not available here, skipped", name)
    out.append(CPU)
    return out


def _tile_batch(frame: np.ndarray, boxes: Sequence[Box], tile: int, s: int) -> np.ndarray:
    """The batch (N, S, S, 3) of the tiles ``boxes`` of ``frame`` (padded to at least one tile).

    When the tiles are shrunk and every tile edge falls on a whole pixel of the frame scaled by
    S/tile (the shipped 160 px → 96 px tiles of 640×480 or 1920×1080 frames), the frame is
    shrunk **once** and the tiles are cut from it: ``INTER_AREA`` averages exactly the same
    source pixels either way (tests check it against tile-by-tile resizing), but it is one
    OpenCV call instead of one per tile, and every call is a point where this thread gives up
    the GIL and may have to wait for the UI thread to hand it back.
    Otherwise each tile goes straight from the frame into the batch: resized when the tile is
    not the model's input size, copied otherwise; no intermediate crop array.
    """
    batch = np.empty((len(boxes), s, s, 3), np.uint8)
    x_end = max(x0 + tile for x0, _, _, _ in boxes)
    y_end = max(y0 + tile for _, y0, _, _ in boxes)
    edges = [x0 for x0, _, _, _ in boxes] + [y0 for _, y0, _, _ in boxes] + [x_end, y_end]
    if s < tile and all(e * s % tile == 0 for e in edges):
        small = cv2.resize(frame[:y_end, :x_end], (x_end * s // tile, y_end * s // tile),
                           interpolation=cv2.INTER_AREA)
        for i, (x0, y0, _, _) in enumerate(boxes):
            X, Y = x0 * s // tile, y0 * s // tile
            batch[i] = small[Y:Y + s, X:X + s]
        return batch
    for i, (x0, y0, _, _) in enumerate(boxes):
        window = frame[y0:y0 + tile, x0:x0 + tile]
        batch[i] = _resize(np.ascontiguousarray(window), s, s) if tile != s else window
    return batch


def tile_grid(height: int, width: int, tile: int, overlap: float) -> list[Box]:
    """Boxes ``(x0, y0, x1, y1)`` of square tiles covering a ``height``×``width`` frame.

    Row-major (top row first). Starts every ``max(1, round(tile·(1-overlap)))`` pixels; the
    last row/column ends exactly on the border. Along a dimension shorter than ``tile`` there
    is one tile starting at 0 whose box is clipped to the frame (the engine pads that tile).
    """
    for name, v in (("height", height), ("width", width), ("tile", tile)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(overlap, bool) or not (isinstance(overlap, (int, float, np.floating)) and 0.0 <= overlap < 1.0):
        raise ValueError(f"overlap must be a fraction in [0, 1), got {overlap!r}")
    stride = max(1, int(round(tile * (1.0 - overlap))))

    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        n = math.ceil((length - tile) / stride) + 1
        return sorted({min(i * stride, length - tile) for i in range(n)})

    return [(x0, y0, min(x0 + tile, width), min(y0 + tile, height))
            for y0 in starts(height) for x0 in starts(width)]


def compose_heatmap(height: int, width: int, boxes: Sequence[Box], extents: Sequence[tuple[int, int]],
                    maps: np.ndarray) -> np.ndarray:
    """One continuous float32 ``height``×``width`` map from per-tile maps at CAM resolution.

    ``maps`` (N, h, w): tile i's values (CAM × crack probability), cell (r, c) centred at frame
    pixel ``box[:2] + ((c, r) + 0.5) · extent / (w, h)``. Every cell is splatted (bilinearly, so
    a tile shifted by a fraction of a cell lands where it belongs) into one coarse grid of that
    cell pitch in frame coordinates; overlapping tiles average there. The grid is then upsampled
    once (bilinear) to the frame, so the map is interpolated *across* tile borders too. It passes
    through every cell's value at its centre, like a tile's own upsampled CAM, but without the
    step at each border that upsampling tile by tile (clamped at the tile's edge) left: a
    patchwork with seams. Cost: a 12×9 grid to 640×480 is one small resize (≈0.3 ms).
    The part of a padded tile beyond the frame is cut off, as before.
    """
    n, ch, cw = maps.shape
    if n != len(boxes) or len(extents) != n:
        raise ValueError(f"{n} tile maps for {len(boxes)} boxes and {len(extents)} extents")
    if len(set(extents)) > 1:
        raise ValueError(f"tiles of different extents {sorted(set(extents))} cannot share one grid")
    if n == 0:
        return np.zeros((height, width), np.float32)
    pitch_x, pitch_y = extents[0][0] / cw, extents[0][1] / ch
    gw, gh = math.ceil(width / pitch_x), math.ceil(height / pitch_y)
    # a margin of one tile on every side: a reused tile (inspector.edge.reuse) that followed the
    # camera may start left of or above the frame, or end beyond it
    mx, my = cw + 1, ch + 1
    acc = np.zeros((gh + 2 * my + 1, gw + 2 * mx + 1), np.float32)
    wsum = np.zeros_like(acc)
    for (x0, y0, _, _), m in zip(boxes, maps):
        fx, fy = x0 / pitch_x + mx, y0 / pitch_y + my
        if not (0 <= fx <= gw + mx and 0 <= fy <= gh + my):
            continue                                # wholly outside the frame
        ix, iy = int(fx), int(fy)
        ax, ay = fx - ix, fy - iy
        for dy, wy in ((0, 1.0 - ay), (1, ay)):
            for dx, wx in ((0, 1.0 - ax), (1, ax)):
                w = wy * wx
                if w > 1e-6:
                    acc[iy + dy:iy + dy + ch, ix + dx:ix + dx + cw] += np.float32(w) * m
                    wsum[iy + dy:iy + dy + ch, ix + dx:ix + dx + cw] += np.float32(w)
    acc, wsum = acc[my:my + gh, mx:mx + gw], wsum[my:my + gh, mx:mx + gw]
    grid = np.divide(acc, wsum, out=np.zeros((gh, gw), np.float32), where=wsum > 0)
    out_w, out_h = max(width, round(gw * pitch_x)), max(height, round(gh * pitch_y))
    up = cv2.resize(grid, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(up[:height, :width])


def stitch_heatmap(height: int, width: int, boxes: Sequence[Box], extents: Sequence[tuple[int, int]],
                   crack_probs: np.ndarray, cams: np.ndarray) -> np.ndarray:
    """The frame's heat-map (module doc, step 4) from each tile's crack probability (N,) and raw
    crack-class CAM (N, h, w) at ``boxes`` (top-left may lie outside the frame): CAM × probability,
    composed, scaled so that its peak is the most confident tile's probability, in [0, 1]."""
    p = np.maximum(np.asarray(crack_probs, np.float32), 0.0)
    weighted = np.maximum(np.asarray(cams, np.float32), 0.0) * p[:, None, None]
    heat = compose_heatmap(height, width, boxes, extents, weighted)
    p_max = float(p.max()) if len(p) else 0.0
    peak = float(heat.max()) if heat.size else 0.0
    if peak > 0.0 and math.isfinite(peak):
        heat *= np.float32(p_max / peak)
    else:
        heat[:] = 0.0
    np.clip(heat, 0.0, 1.0, out=heat)
    return heat


@dataclass
class TileResult:
    """One tile: its ``box`` in frame pixels, class ``probs`` (C,), the crack probability and
    the raw (unnormalised) crack-class CAM at feature resolution (h×w)."""

    box: Box
    probs: np.ndarray
    crack_prob: float
    cam: np.ndarray
    fresh: bool = True   # inferred on this frame; False: carried over by inspector.edge.reuse


@dataclass
class FrameResult:
    """``tiles``; ``heatmap`` float32 H×W in [0, 1] (peak = ``crack_prob_max``, see module
    doc); ``crack_prob_max`` over tiles; ``timings`` in ms: tile, preprocess, infer, stitch,
    total."""

    tiles: list[TileResult]
    heatmap: np.ndarray
    crack_prob_max: float
    timings: dict[str, float] = field(default_factory=dict)
    reuse: "object | None" = None   # inspector.edge.reuse.ReuseInfo when tiles were carried over

    @property
    def fresh_tiles(self) -> list[TileResult]:
        """The tiles inferred on this frame (all of them without reuse)."""
        return [t for t in self.tiles if t.fresh]


def _check_image(frame: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"{what} must be a numpy array (H×W×3 uint8 RGB), got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (H×W×3 RGB, 0..255), got dtype {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"{what} must be H×W×3 RGB (3 channels, channels last), got shape {frame.shape}")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"{what} must not be empty, got shape {frame.shape}")
    return frame


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    if img.shape[1] == width and img.shape[0] == height:
        return img
    shrink = width < img.shape[1] or height < img.shape[0]
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


# The reference check runs in batches of at most one 640×480 frame's tiles, so a TensorRT profile
# for the camera's frames covers it too (48 reference images would otherwise set its max batch).
REFERENCE_BATCH = 12


class InferenceEngine:
    """Run a model package on frames: tiles → one batch → probabilities + stitched heat-map.

    ``package``: a :class:`ModelPackage` or a path to a ``.crackpkg`` (loaded and validated;
    with ``verify_reference`` the shipped reference patches are re-run on *this* engine's
    session, i.e. on the provider actually used, and must match within the manifest's atol).
    ``providers``: preference list for :func:`select_providers` (default TensorRT, CUDA, CPU).
    If the session cannot be created with an accelerator the engine falls back (TensorRT to
    the rest of the list, CUDA to the CPU) and says why in ``provider_fallback``. ``.providers`` is what the session really uses.
    ``tile_size`` / ``tile_overlap``: frame pixels per tile and overlap; default: the package's
    ``tiling`` (manifest), else S and 0.25.
    ``threads``: ORT intra-op threads (default: usable cores); ``cv2_threads`` and ``spinning``
    (ORT busy-waiting, off by default): see the module doc.
    ``crack_label``: the label whose probability and CAM make the heat-map.
    ``trt_cache``: the folder for this model's TensorRT engines when TensorRT is used (see
    :mod:`inspector.edge.engine_cache`; ``trt_cache_state`` says whether it was reused);
    ``frame_size`` (H, W): the frames it will see, so that one engine profile covers them.
    """

    def __init__(self, package: ModelPackage | str | os.PathLike, *, providers: Sequence[str] | None = None,
                 tile_overlap: float | None = None, tile_size: int | None = None, threads: int | None = None,
                 crack_label: str = "crack", verify_reference: bool = True, cv2_threads: int | None = 1,
                 spinning: bool = False, trt_cache: str | os.PathLike | None = None,
                 frame_size: tuple[int, int] | None = None, numeric_path: str = numerics.OPTIMISED):
        import onnxruntime as ort

        if not isinstance(package, ModelPackage):
            package = load_package(Path(package), verify_reference=False)
        self.package = package
        self.manifest = package.manifest
        self.labels: tuple[str, ...] = tuple(self.manifest.labels)
        self.input_size: int = self.manifest.input.size
        if crack_label not in self.labels:
            raise ValueError(f"crack_label {crack_label!r} is not a label of the model {list(self.labels)}")
        self.crack_label = crack_label
        self.crack_index = self.labels.index(crack_label)

        tiling = self.manifest.tiling
        if tile_overlap is None:
            tile_overlap = tiling.overlap if tiling is not None else DEFAULT_TILE_OVERLAP
        if isinstance(tile_overlap, bool) or not (isinstance(tile_overlap, (int, float, np.floating))
                                                  and 0.0 <= tile_overlap < 1.0):
            raise ValueError(f"tile_overlap must be a fraction in [0, 1), got {tile_overlap!r}")
        self.tile_overlap = float(tile_overlap)
        if tile_size is None:
            tile_size = tiling.size if tiling is not None else self.input_size
        if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)) or tile_size < 1:
            raise ValueError(f"tile_size must be a positive integer (frame pixels per tile), got {tile_size!r}")
        self.tile_size = int(tile_size)
        if threads is None:
            threads = _usable_cores()
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.threads = threads
        if cv2_threads is not None:
            cv2.setNumThreads(int(cv2_threads))

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if numeric_path not in numerics.NUMERIC_PATHS:
            raise ValueError(f"numeric_path must be one of {numerics.NUMERIC_PATHS}, got {numeric_path!r}")
        self.numeric_path = numeric_path
        onnx_bytes = package.onnx_bytes
        if numeric_path != numerics.OPTIMISED:  # a test/benchmark stand-in for another numeric path, on the CPU
            providers = [CPU]
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            if numeric_path == numerics.EMULATED_TENSORRT:
                onnx_bytes = numerics.emulated_tensorrt_graph(onnx_bytes)
        requested = select_providers(providers)
        self.provider_fallback: str | None = None
        self.trt_cache_state: str | None = None    # engine_cache.prepare's answer when TensorRT is asked for
        asked: list = list(requested)
        if trt_cache is not None and engine_cache.TENSORRT in requested:
            trt_options = self._tensorrt_options(Path(trt_cache), frame_size, ort.__version__)
            asked[requested.index(engine_cache.TENSORRT)] = (engine_cache.TENSORRT, trt_options)
        try:
            session = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=asked)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            if requested == [CPU]:
                raise
            # the next best: without TensorRT (CUDA, if asked for), else the CPU
            rest = [p for p in requested if p != engine_cache.TENSORRT] if requested[0] == engine_cache.TENSORRT \
                else [CPU]
            self.provider_fallback = f"{requested[0]} failed ({type(exc).__name__}: {exc}); using {rest[0]}"
            log.warning("inference engine: %s", self.provider_fallback)
            session = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=rest)
        self.session = session
        self.providers: list[str] = list(session.get_providers())
        if requested[0] != CPU and self.providers[0] != requested[0] and self.provider_fallback is None:
            self.provider_fallback = f"asked for {requested}, session uses {self.providers}"
            log.warning("inference engine: %s", self.provider_fallback)
        self.isa = numerics.int8_isa()
        # what the reference check ran on and measured (None when not verified)
        self.verification: numerics.Verification | None = None
        if verify_reference:
            images = np.ascontiguousarray(package.reference["image"])
            runs = [self._run(images[i:i + REFERENCE_BATCH]) for i in range(0, len(images), REFERENCE_BATCH)]
            probs, cam = np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs])
            self.verification = verify_reference_outputs(self.manifest, package.reference, probs, cam,
                                                         provider=self.rule_provider)

    @property
    def rule_provider(self) -> str:
        """The provider whose rule the reference check applies: the session's, or the emulated
        accelerator's on that numeric path."""
        return numerics.EMULATED_TENSORRT if self.numeric_path == numerics.EMULATED_TENSORRT else self.providers[0]

    def _tensorrt_options(self, cache_dir: Path, frame_size: tuple[int, int] | None, ort_version: str) -> dict:
        """TensorRT options with the engine cache in ``cache_dir`` (emptied first if it holds
        engines of another model, onnxruntime or profile: :func:`engine_cache.prepare`). The
        profile covers a ``frame_size`` (H, W) frame's tiles and the reference batch."""
        n_ref = min(int(np.asarray(self.package.reference["image"]).shape[0]), REFERENCE_BATCH)
        n_tiles = len(tile_grid(*frame_size, self.tile_size, self.tile_overlap)) if frame_size else n_ref
        options = engine_cache.tensorrt_options(
            cache_dir, input_name=INPUT_NAME, input_size=self.input_size, opt_batch=n_tiles,
            max_batch=max(n_tiles, n_ref), int8=self.manifest.quantization.type.startswith("int8"))
        key = engine_cache.cache_key(self.manifest.model_sha256, ort_version, options)
        self.trt_cache_state = engine_cache.prepare(cache_dir, key)
        log.info("TensorRT engine cache %s: %s", cache_dir, self.trt_cache_state)
        return options

    def __repr__(self) -> str:
        m = self.manifest
        return (f"InferenceEngine({m.name}-{m.version}, S={self.input_size}, tile={self.tile_size}, "
                f"overlap={self.tile_overlap}, providers={self.providers})")

    # ------------------------------------------------------------------ running

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, cam = self.session.run(["probs", "cam"], {INPUT_NAME: batch})
        n, c = batch.shape[0], len(self.labels)
        if probs.shape != (n, c) or cam.ndim != 4 or cam.shape[:2] != (n, c):
            raise PackageError(f"labels: the model returned probs {probs.shape} and cam {cam.shape} for {n} "
                               f"images but the manifest has {c} labels {list(self.labels)}")
        return probs, cam

    def _stitch(self, height: int, width: int, boxes: Sequence[Box], extents: Sequence[tuple[int, int]],
                probs: np.ndarray, cams: np.ndarray) -> tuple[np.ndarray, list[TileResult], float]:
        """Heat-map from per-tile CAMs; ``extents[i]`` = (w, h) in frame pixels the tile's input spans."""
        ci = self.crack_index
        tiles = [TileResult(box=(int(x0), int(y0), int(x1), int(y1)), probs=probs[i].copy(),
                            crack_prob=float(probs[i, ci]), cam=np.ascontiguousarray(cams[i, ci], dtype=np.float32))
                 for i, (x0, y0, x1, y1) in enumerate(boxes)]
        heat = stitch_heatmap(height, width, boxes, extents, probs[:, ci], cams[:, ci])
        return heat, tiles, float(probs[:, ci].max()) if len(boxes) else 0.0

    def inspect(self, frame_rgb: np.ndarray) -> FrameResult:
        """Tile ``frame_rgb`` (uint8 H×W×3 RGB, any size), run all tiles as one batch, stitch."""
        t_start = time.perf_counter()
        frame = _check_image(frame_rgb, "frame")
        height, width = frame.shape[:2]
        tile, s = self.tile_size, self.input_size
        boxes = tile_grid(height, width, tile, self.tile_overlap)
        if height < tile or width < tile:
            frame = cv2.copyMakeBorder(np.ascontiguousarray(frame), 0, max(0, tile - height), 0,
                                       max(0, tile - width), cv2.BORDER_REFLECT_101)
        t_tile = time.perf_counter()

        batch = _tile_batch(frame, boxes, tile, s)
        t_pre = time.perf_counter()

        probs, cams = self._run(batch)
        t_inf = time.perf_counter()

        heat, tiles, p_max = self._stitch(height, width, boxes, [(tile, tile)] * len(boxes), probs, cams)
        t_end = time.perf_counter()
        return FrameResult(tiles=tiles, heatmap=heat, crack_prob_max=p_max,
                           timings=_stage_ms(t_start, t_tile, t_pre, t_inf, t_end))

    def inspect_patch(self, patch_rgb: np.ndarray) -> FrameResult:
        """One patch of any size, resized to S×S as a whole (no tiling): one tile whose box is
        the whole patch, heat-map at the patch's size."""
        t_start = time.perf_counter()
        patch = _check_image(patch_rgb, "patch")
        height, width = patch.shape[:2]
        t_tile = time.perf_counter()
        batch = _resize(np.ascontiguousarray(patch), self.input_size, self.input_size)[None]
        batch = np.ascontiguousarray(batch)
        t_pre = time.perf_counter()
        probs, cams = self._run(batch)
        t_inf = time.perf_counter()
        heat, tiles, p_max = self._stitch(height, width, [(0, 0, width, height)], [(width, height)], probs, cams)
        t_end = time.perf_counter()
        return FrameResult(tiles=tiles, heatmap=heat, crack_prob_max=p_max,
                           timings=_stage_ms(t_start, t_tile, t_pre, t_inf, t_end))


def _stage_ms(t_start: float, t_tile: float, t_pre: float, t_inf: float, t_end: float) -> dict[str, float]:
    return {"tile": (t_tile - t_start) * 1e3, "preprocess": (t_pre - t_tile) * 1e3,
            "infer": (t_inf - t_pre) * 1e3, "stitch": (t_end - t_inf) * 1e3, "total": (t_end - t_start) * 1e3}


def overlay(frame_rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4,
            colormap: int = cv2.COLORMAP_TURBO) -> np.ndarray:
    """Colour the heat-map over the frame: uint8 H×W×3 RGB.

    The colour (TURBO by default) is blended with per-pixel opacity ``alpha · heat``, so cold
    regions show the untouched frame and only where the model sees a crack does colour appear
    (a uniform blend would tint a whole crack-free frame blue).
    """
    frame = _check_image(frame_rgb, "frame")
    heat = np.asarray(heatmap)
    if heat.shape != frame.shape[:2]:
        raise ValueError(f"heatmap must be H×W = {frame.shape[:2]} like the frame, got shape {heat.shape}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    h = np.clip(np.nan_to_num(heat.astype(np.float32, copy=False), nan=0.0), 0.0, 1.0)
    colour = cv2.cvtColor(cv2.applyColorMap(cv2.convertScaleAbs(h, alpha=255.0), colormap), cv2.COLOR_BGR2RGB)
    a = h * float(alpha)
    # OpenCV's per-pixel blend in one pass: 1.3 ms for 640×480 where the same arithmetic in
    # numpy float32 took 14 ms, as long as a third of the inference (the live view runs it per frame).
    return cv2.blendLinear(np.ascontiguousarray(frame), colour, 1.0 - a, a)
