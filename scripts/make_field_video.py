"""Build a field-inspection test video with a ground-truth crack mask for every frame.

What it is for: the live-inspection benchmarks and tests need a video that behaves like a
hand-held camera on site (held still, panned slowly, shaken, whipped away and back, exposure
drifting) over real cracks, with pixel ground truth. The shipped sample video
(``scripts/make_sample_video.py``) is built from patch-classification data and has no masks; this
one is tiled from the two mask-annotated sets:

* CrackForest (CFD, 480×320 road photos; non-commercial research only),
* UAV75 (512×512 drone photos of concrete bridges; GPL-3.0).

Neither may be committed or shipped, so the video is never stored in the repository: this script
rebuilds it, deterministically (sorted file lists, fixed seed), into a cache folder
(``runs/field_video/`` by default, git-ignored), and ``ensure_field_video`` rebuilds it whenever it
is missing or was built with other parameters.

The wall (4000×2000 px): cells of 480×320 with feathered 40 px seams (``make_sample_video._feather``),
CrackForest on the left, UAV75 on the right (each UAV image cropped to 3:2 where it has the most
crack and shrunk by 0.94), and a crack-free zone at the bottom right tiled from 256 px crops of UAV75
concrete at least 20 px from any annotated crack. The masks are blended with the same weights and
thresholded at one half, so ``wall_mask.png`` is the ground truth of ``wall.png``.

The camera (the reference is 1280×720 at one wall pixel per video pixel): per frame the window's
top-left ``x, y`` in wall pixels (floats), ``zoom``, exposure ``gain`` and motion blur
``blur_len`` (video pixels) / ``blur_angle`` (degrees). Segments: static (on a crack), slow pan
(right), pause, exposure change (1.0 → 0.6 → 1.0, held still), slow pan 2 (down-left), shake
(hand tremor), fast pan (whip to the crack-free zone, away and back) and pause 2 (still on
crack-free wall). ``--size 640x480`` is a half-resolution camera on the same trajectory: it sees
the same wall around the same centre at two wall pixels per video pixel (motion in video pixels
halved), rendered from the wall shrunk with INTER_AREA.

Frames are rendered by ``warpAffine`` (bilinear, sub-pixel), blurred along the motion by a line
kernel, softened like a small lens, vignetted, scaled by the gain, given seeded sensor noise and
written as MJPG by ``cv2.VideoWriter``. ``frame_mask`` renders the ground truth of any frame from
``wall_mask.png`` with the same warp (nearest neighbour), so no per-frame masks are stored.
API: ``ensure_field_video(size, out, data) -> json path``, ``load_field_meta``, ``frame_mask``,
``render_field_frame`` (a frame before compression).

    python scripts/make_field_video.py [--size 1280x720] [--out runs/field_video] [--data ../shared/data]
                                       [--frames N]   # only the first N frames

writes ``field_<W>x<H>.avi``, ``field_<W>x<H>.json`` (fps, frames, size, seed, segments, per-frame
``segment_kind`` and camera states, sources and licences), ``wall.png`` and ``wall_mask.png``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts.make_sample_video import LENS_SIGMA, LEVEL, SEAM, _feather  # noqa: E402

DATA = REPO.parent / "shared" / "data"
OUT = REPO / "runs" / "field_video"
VERSION = 1           # bump when the output changes for the same parameters
SEED = 20261122
FPS = 30
REF_W, REF_H = 1280, 720
CELL_W, CELL_H = 480, 320            # CrackForest's native size
STEP_X, STEP_Y = CELL_W - SEAM, CELL_H - SEAM
COLS, ROWS = 9, 7
WALL_W, WALL_H = STEP_X * (COLS - 1) + CELL_W, STEP_Y * (ROWS - 1) + CELL_H   # 4000 × 2000
CF_COLS = 4                          # columns 0..3 CrackForest, the rest UAV75
FREE = (5, 3, 4, 4)                  # crack-free zone: first column, first row, columns, rows
FREE_PATCH = 256                     # crack-free crops of UAV75 are this square
FREE_CLEARANCE = 20                  # ... and at least this far from any annotated crack
SHUTTER = 0.5                        # exposure time / frame time: blur length = 0.5 × speed
NOISE_SIGMA = 2.0                    # sensor noise, grey levels
VIGNETTE = 0.18                      # brightness lost in the corners
KINDS = ("static", "slow pan", "pause", "shake", "fast pan", "exposure change")
SOURCES = [
    {"name": "CrackForest (CFD)", "folder": "crackforest_cfd", "licence": "non-commercial research only",
     "cite": "Shi, Cui, Qi, Meng, Chen, 'Automatic road crack detection using random structured forests', "
             "IEEE T-ITS 17(12), 2016"},
    {"name": "UAV75", "folder": "uav75", "licence": "GPL-3.0 (repository)",
     "cite": "Benz, Debus, Ha, Rodehorst, 'Crack Segmentation on UAS-based Imagery using Transfer Learning', "
             "IVCNZ 2019"},
]
NOTICE = "built from non-commercial / GPL data: do not commit, ship or redistribute; rebuild with the script"


# ---------------------------------------------------------------- the wall

def _pairs(data: Path, name: str) -> list[tuple[Path, Path]]:
    images = sorted(p for p in (data / name / "images").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    pairs = [(p, data / name / "masks" / (p.stem + ".png")) for p in images]
    if not pairs or not all(m.is_file() for _, m in pairs):
        raise SystemExit(f"{data / name}: images without masks or no images (need the real data, see --data)")
    return pairs


def _read(pair: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
    img = cv2.imread(str(pair[0]), cv2.IMREAD_COLOR)
    mask = cv2.imread(str(pair[1]), cv2.IMREAD_GRAYSCALE)
    if img is None or mask is None or img.shape[:2] != mask.shape:
        raise SystemExit(f"cannot read {pair[0]} with its mask")
    return img.astype(np.float32), (mask > 127).astype(np.float32)


def _uav_cell(img: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 3:2 band of a square UAV image, where it has the most crack, shrunk to a cell."""
    h, w = mask.shape
    band = round(w * CELL_H / CELL_W)
    rows = np.concatenate([[0], np.cumsum(mask.sum(1))])
    y = int(np.argmax(rows[band:] - rows[:-band]))
    size = (CELL_W, CELL_H)
    img = cv2.resize(img[y:y + band], size, interpolation=cv2.INTER_AREA)
    return img, (cv2.resize(mask[y:y + band], size, interpolation=cv2.INTER_AREA) >= 0.5).astype(np.float32)


def _free_crops(pairs: list[tuple[Path, Path]], n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` crack-free square crops of concrete, round-robin over the images (at most one new crop
    per image per round, never overlapping another crop of the same image)."""
    s, k = FREE_PATCH, 2 * FREE_CLEARANCE + 1
    spots = []
    for pair in pairs:
        img, mask = _read(pair)
        near = cv2.dilate(mask.astype(np.uint8), np.ones((k, k), np.uint8))
        u8 = img.astype(np.uint8)   # not wall: vegetation (saturated) or blown-out sky and concrete
        odd = (cv2.cvtColor(u8, cv2.COLOR_BGR2HSV)[..., 1] > 60) | (cv2.cvtColor(u8, cv2.COLOR_BGR2GRAY) > 200)
        ii, io = cv2.integral(near), cv2.integral(odd.astype(np.uint8))

        def box(t, y, x):
            return t[y + s, x + s] - t[y, x + s] - t[y + s, x] + t[y, x]

        h, w = mask.shape
        free = [(y, x) for y in range(0, h - s + 1, 32) for x in range(0, w - s + 1, 32)
                if box(ii, y, x) == 0 and box(io, y, x) < 0.05 * s * s]
        chosen = []
        for y, x in free:
            if all(abs(y - cy) >= s or abs(x - cx) >= s for cy, cx in chosen):
                chosen.append((y, x))
        spots.append([(img[y:y + s, x:x + s], np.zeros((s, s), np.float32)) for y, x in chosen])
    out = []
    for r in range(max(map(len, spots), default=0)):
        out += [crops[r] for crops in spots if r < len(crops)]
    if len(out) < n:
        raise SystemExit(f"only {len(out)} crack-free crops of {FREE_PATCH} px, need {n}")
    return out[:n]


def _spans(length: int, size: int) -> list[int]:
    """Offsets of patches of ``size`` covering ``length`` with at least ``SEAM`` overlap."""
    n = max(1, math.ceil((length - size) / (size - SEAM)) + 1)
    return [round(i * (length - size) / max(n - 1, 1)) for i in range(n)]


def build_wall(data: Path, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, dict]:
    """The wall (uint8 BGR), its crack mask (bool) and what went where (file names per section)."""
    rng = np.random.default_rng(seed)
    cf, uav = _pairs(data, "crackforest_cfd"), _pairs(data, "uav75")
    fc, fr, fnc, fnr = FREE
    in_free = {(c, r) for c in range(fc, fc + fnc) for r in range(fr, fr + fnr)}
    cf_cells = [(c, r) for r in range(ROWS) for c in range(CF_COLS)]
    uav_cells = [(c, r) for r in range(ROWS) for c in range(CF_COLS, COLS) if (c, r) not in in_free]
    cf_pick = [cf[i] for i in sorted(rng.choice(len(cf), len(cf_cells), replace=False))]
    uav_order = rng.permutation(len(uav))
    uav_pick = [uav[i] for i in sorted(uav_order[:len(uav_cells)])]
    rest = [uav[i] for i in sorted(uav_order[len(uav_cells):])] + uav_pick   # crops: unused images first

    x0, y0 = fc * STEP_X, fr * STEP_Y
    zone_w, zone_h = (fnc - 1) * STEP_X + CELL_W, (fnr - 1) * STEP_Y + CELL_H
    free_at = [(y0 + y, x0 + x) for y in _spans(zone_h, FREE_PATCH) for x in _spans(zone_w, FREE_PATCH)]
    placed = []   # (section, image, mask, y, x)
    for (c, r), pair in zip(cf_cells, cf_pick):
        placed.append(("crackforest", *_read(pair), r * STEP_Y, c * STEP_X))
    for (c, r), pair in zip(uav_cells, uav_pick):
        placed.append(("uav75", *_uav_cell(*_read(pair)), r * STEP_Y, c * STEP_X))
    for (y, x), (img, mask) in zip(free_at, _free_crops(rest, len(free_at))):
        placed.append(("uav75", img, mask, y, x))

    # pull each photo's mean colour towards its data set's median (as make_sample_video does)
    means = {}
    for section, img, *_ in placed:
        means.setdefault(section, []).append(img.reshape(-1, 3).mean(0))
    target = {k: np.median(v, axis=0) for k, v in means.items()}
    acc = np.zeros((WALL_H, WALL_W, 3), np.float32)
    macc = np.zeros((WALL_H, WALL_W), np.float32)
    weight = np.zeros((WALL_H, WALL_W), np.float32)
    for section, img, mask, y, x in placed:
        h, w = mask.shape
        win = _feather(h)[:, None] * _feather(w)[None, :]
        img = img + LEVEL * (target[section] - img.reshape(-1, 3).mean(0))
        acc[y:y + h, x:x + w] += img * win[..., None]
        macc[y:y + h, x:x + w] += mask * win
        weight[y:y + h, x:x + w] += win
    wall = np.clip(acc / weight[..., None] + 0.5, 0, 255).astype(np.uint8)
    used = {"crackforest_cfd": sorted(p.name for p, _ in cf_pick), "uav75": sorted(p.name for p, _ in uav_pick),
            "crack_free_zone": [x0, y0, zone_w, zone_h], "crack_free_crops": len(free_at)}
    return wall, macc / weight >= 0.5, used


# ---------------------------------------------------------------- the camera

def _move(p0, p1, n: int, ramp: int) -> np.ndarray:
    """``n`` positions after ``p0`` ending at ``p1``: constant speed with ``ramp``-frame cosine ramps."""
    v = np.ones(n)
    r = min(ramp, n // 2)
    if r:
        up = (1 - np.cos(np.pi * (np.arange(r) + 0.5) / r)) / 2
        v[:r], v[n - r:] = up, up[::-1]
    u = np.cumsum(v) / v.sum()
    return np.asarray(p0, float) + u[:, None] * (np.asarray(p1, float) - np.asarray(p0, float))


def _hold(p, n: int) -> np.ndarray:
    return np.repeat(np.asarray(p, float)[None], n, axis=0)


def _wobble(path: np.ndarray, amp: float, phase: float) -> np.ndarray:
    """A slow hand wobble across the direction of a pan, zero at both ends."""
    d = path[-1] - path[0]
    normal = np.array([-d[1], d[0]]) / (np.hypot(*d) or 1.0)
    s = np.linspace(0, 1, len(path))
    off = amp * np.sin(np.pi * s) * np.sin(2 * np.pi * 1.3 * s + phase)
    return path + off[:, None] * normal


def _crack_spot(wall_mask: np.ndarray, box: tuple[int, int, int, int], look: tuple[int, int]) -> tuple[int, int]:
    """The centre (on a 20 px grid inside ``box`` = x0, y0, x1, y1) whose central ``look`` window
    holds the most crack pixels: where the camera is held still on a crack."""
    ii = cv2.integral(wall_mask.astype(np.uint8))
    hw, hh = look[0] // 2, look[1] // 2
    best = None
    for cy in range(box[1], box[3] + 1, 20):
        for cx in range(box[0], box[2] + 1, 20):
            n = ii[cy + hh, cx + hw] - ii[cy - hh, cx + hw] - ii[cy + hh, cx - hw] + ii[cy - hh, cx - hw]
            if best is None or n > best[0]:
                best = (n, cx, cy)
    return best[1], best[2]


def trajectory(wall_mask: np.ndarray, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """Reference path: per frame the window centre (wall px) and the gain; the segments in order
    as (name, frame count). The 1280×720 and the half-resolution 640×480 camera both follow it."""
    rng = np.random.default_rng(seed + 1)
    fc, fr, fnc, fnr = FREE
    q = (fc * STEP_X + ((fnc - 1) * STEP_X + CELL_W) / 2, fr * STEP_Y + ((fnr - 1) * STEP_Y + CELL_H) / 2)
    a = _crack_spot(wall_mask, (700, 500, 1300, 700), (200, 100))   # static: a crack mid-frame
    b = (a[0] + 450, a[1])
    d = (b[0] - 160, b[1] + 300)
    r = (q[0] - 450, q[1] - 300)
    parts: list[tuple[str, np.ndarray]] = [
        ("static", _hold(a, 90)),
        ("slow pan", _wobble(_move(a, b, 150, 10), 1.0, 0.3)),        # right, ~3.2 px/frame
        ("pause", _hold(b, 45)),
        ("exposure change", _hold(b, 90)),
        ("slow pan 2", _wobble(_move(b, d, 120, 10), 0.8, 1.7)),      # down-left, ~3.1 px/frame
    ]
    jitter = np.zeros((60, 2))
    for i in range(1, 60):                                         # hand tremor: AR(1), ~3 px/frame
        jitter[i] = 0.7 * jitter[i - 1] + rng.normal(0, 2.2, 2)
    parts.append(("shake", np.asarray(d, float) + jitter))
    e = parts[-1][1][-1]
    n_whip = math.ceil(math.dist(e, q) / 50) + 6                # whips at ~50 px/frame
    whip = np.concatenate([_move(e, q, n_whip, 6), _move(q, r, 15, 4), _move(r, q, 15, 4)])
    parts += [("fast pan", whip), ("pause 2", _hold(q, 60))]
    centre = np.round(np.concatenate([p for _, p in parts]), 3)
    gain = np.ones(len(centre))
    start = sum(len(p) for _, p in parts[:3])
    s = np.linspace(0, 1, 90)
    gain[start:start + 90] = np.round(1 - 0.4 * (1 - np.cos(2 * np.pi * s)) / 2, 4)
    return centre, gain, [(n, len(p)) for n, p in parts]


def camera_states(centre: np.ndarray, gain: np.ndarray, size: tuple[int, int]) -> list[dict]:
    """Per-frame states of a ``size`` camera on the reference path: top-left in wall px, zoom,
    gain, blur length in video px and angle (degrees, image coordinates: y down)."""
    scale = REF_W / size[0]                                 # wall pixels per video pixel
    half = np.array([size[0] * scale / 2, size[1] * scale / 2])
    lo, hi = centre.min(0) - half, centre.max(0) + half
    if lo.min() < 0 or hi[0] > WALL_W or hi[1] > WALL_H:
        raise SystemExit(f"a {size[0]}x{size[1]} window leaves the wall on this trajectory")
    vel = np.gradient(centre, axis=0) if len(centre) > 1 else np.zeros_like(centre)
    states = []
    for (cx, cy), g, (vx, vy) in zip(centre, gain, vel):
        blur = SHUTTER * math.hypot(vx, vy) / scale
        states.append({"x": round(cx - half[0], 3), "y": round(cy - half[1], 3), "zoom": 1.0, "gain": float(g),
                       "blur_len": round(blur, 2) if blur >= 1.5 else 0.0,
                       "blur_angle": round(math.degrees(math.atan2(vy, vx)), 1) if blur >= 1.5 else 0.0})
    return states


# ---------------------------------------------------------------- rendering

def _level(image: np.ndarray, scale: float) -> np.ndarray:
    """The wall as a ``scale`` camera samples it: shrunk by area when it sees more than one wall
    pixel per video pixel."""
    if scale == 1:
        return image
    size = (round(image.shape[1] / scale), round(image.shape[0] / scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR)


def _matrix(state: dict, scale: float, level_shape: tuple[int, int]) -> np.ndarray:
    """Video pixel -> level pixel (pixel centres), for ``warpAffine`` with ``WARP_INVERSE_MAP``."""
    fx, fy = level_shape[1] / WALL_W, level_shape[0] / WALL_H
    sz = scale * state["zoom"]
    return np.array([[sz * fx, 0.0, state["x"] * fx + 0.5 * sz * fx - 0.5],
                     [0.0, sz * fy, state["y"] * fy + 0.5 * sz * fy - 0.5]])


def _line_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised line of ``length`` px at ``angle`` degrees, splatted bilinearly."""
    k = (int(math.ceil(length)) | 1) + 2
    ker = np.zeros((k, k), np.float32)
    c = k // 2
    dx, dy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    for t in np.linspace(-length / 2, length / 2, max(2, int(length * 4))):
        x, y = c + t * dx, c + t * dy
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        ker[y0, x0] += (1 - fx) * (1 - fy)
        ker[y0, x0 + 1] += fx * (1 - fy)
        ker[y0 + 1, x0] += (1 - fx) * fy
        ker[y0 + 1, x0 + 1] += fx * fy
    return ker / ker.sum()


def _vignette(size: tuple[int, int]) -> np.ndarray:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    return np.repeat((1 - VIGNETTE * r2 / 2)[..., None], 3, axis=2).astype(np.float32)


def render_frame(level: np.ndarray, state: dict, scale: float, size: tuple[int, int], index: int,
                 seed: int = SEED, vignette: np.ndarray | None = None) -> np.ndarray:
    """One BGR frame: warp, motion blur, lens softness, vignette × gain, sensor noise (OpenCV's
    generator seeded per frame: the same frame whatever thread renders it)."""
    m = _matrix(state, scale, level.shape[:2])
    frame = cv2.warpAffine(level, m, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REFLECT_101)
    if state["blur_len"] > 0:
        frame = cv2.filter2D(frame, -1, _line_kernel(state["blur_len"], state["blur_angle"]),
                             borderType=cv2.BORDER_REFLECT_101)
    frame = cv2.GaussianBlur(frame, (0, 0), LENS_SIGMA)
    lit = cv2.multiply(frame, vignette if vignette is not None else _vignette(size), scale=state["gain"],
                       dtype=cv2.CV_32F)
    noise = np.empty_like(lit)
    cv2.setRNGSeed((seed * 100_003 + index) % 2**31)
    cv2.randn(noise, 0.0, NOISE_SIGMA)
    return cv2.add(lit, noise, dtype=cv2.CV_8U)   # rounds and saturates


# ---------------------------------------------------------------- API

def load_field_meta(json_path) -> dict:
    """The json written beside the video (see ``build``)."""
    return json.loads(Path(json_path).read_text(encoding="utf-8"))


_LEVELS: dict = {}   # (kind, scale) -> (the array it was made from, its level): one wall per kind


def _cached_level(kind: str, image: np.ndarray, scale: float) -> np.ndarray:
    """``_level`` of the wall or its mask, kept while the caller passes the same array."""
    hit = _LEVELS.get((kind, scale))
    if hit is None or hit[0] is not image:
        if kind == "mask":   # a crack covering a quarter of a video pixel is still there
            lvl = (_level((np.asarray(image) > 0).astype(np.float32), scale) >= 0.25).astype(np.uint8)
        else:
            lvl = _level(image, scale)
        hit = _LEVELS[(kind, scale)] = (image, lvl)
    return hit[1]


def frame_mask(meta: dict, wall_mask: np.ndarray, index: int) -> np.ndarray:
    """Ground-truth crack mask (bool, H×W) of frame ``index``: ``wall_mask`` (``wall_mask.png`` as
    read, 0/255 or bool) shrunk like the wall for this camera (a pixel is crack where at least a
    quarter of it is) and warped like the frame, nearest neighbour. Motion blur is not in it: it
    is the mask at the middle of the exposure."""
    scale = float(meta["scale"])
    lvl = _cached_level("mask", wall_mask, scale)
    m = _matrix(meta["states"][index], scale, lvl.shape)
    out = cv2.warpAffine(lvl, m, (int(meta["width"]), int(meta["height"])),
                         flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101)
    return out > 0


def render_field_frame(meta: dict, wall: np.ndarray, index: int) -> np.ndarray:
    """Frame ``index`` as rendered before MJPG compression (``wall`` is ``wall.png`` as read)."""
    scale, size = float(meta["scale"]), (int(meta["width"]), int(meta["height"]))
    level = _cached_level("wall", wall, scale)
    return render_frame(level, meta["states"][index], scale, size, index, int(meta["seed"]))


def _build_params(size, data: Path, frames: int | None) -> dict:
    return {"version": VERSION, "seed": SEED, "size": [int(size[0]), int(size[1])], "max_frames": frames,
            "data": str(Path(data).resolve())}


def _stem(size) -> str:
    return f"field_{size[0]}x{size[1]}"


def ensure_field_video(size=(1280, 720), out=None, data=None, max_frames: int | None = None) -> Path:
    """The json of the ``size`` field video in ``out``, built first if missing or built with other
    parameters."""
    out = Path(out) if out is not None else OUT
    data = Path(data) if data is not None else Path(os.environ.get("CRACK_DATA_DIR", DATA))
    json_path = out / (_stem(size) + ".json")
    want = _build_params(size, data, max_frames)
    if json_path.is_file() and all((out / n).is_file() for n in ("wall.png", "wall_mask.png")):
        meta = load_field_meta(json_path)
        # the other size may have rewritten the shared wall (another version): then rebuild this one too
        if (meta.get("build") == want and (out / meta["file"]).is_file()
                and meta["wall"].get("sha256") == _wall_digest(out)):
            return json_path
    return build(size, out, data, max_frames)


def _wall_digest(out: Path) -> str:
    h = hashlib.sha256()
    for name in ("wall.png", "wall_mask.png"):
        h.update((out / name).read_bytes())
    return h.hexdigest()


def _write_png(path: Path, image: np.ndarray) -> None:
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.png")
    if not cv2.imwrite(str(tmp), image, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise SystemExit(f"cannot write {path}")
    os.replace(tmp, path)


def verify(path: Path, frames: int, size: tuple[int, int]) -> None:
    cap = cv2.VideoCapture(str(path))
    try:
        ok, first = cap.read()
        if not ok or first.shape != (size[1], size[0], 3):
            raise SystemExit(f"{path} does not reopen as {size[0]}x{size[1]} video")
        n = 1
        while cap.grab():
            n += 1
        if n != frames or int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) != frames:
            raise SystemExit(f"{path} has {n} frames ({cap.get(cv2.CAP_PROP_FRAME_COUNT):.0f} in its header), "
                             f"expected {frames}")
    finally:
        cap.release()


def build(size=(1280, 720), out=None, data=None, max_frames: int | None = None) -> Path:
    """Build the wall, the trajectory and the ``size`` video into ``out``; returns the json path."""
    t0 = time.perf_counter()
    size = (int(size[0]), int(size[1]))
    out = Path(out) if out is not None else OUT
    data = Path(data) if data is not None else Path(os.environ.get("CRACK_DATA_DIR", DATA))
    out.mkdir(parents=True, exist_ok=True)
    wall, wall_mask, used = build_wall(data)
    _write_png(out / "wall.png", wall)
    _write_png(out / "wall_mask.png", wall_mask.astype(np.uint8) * 255)
    centre, gain, parts = trajectory(wall_mask)
    states = camera_states(centre, gain, size)
    kinds = [n.rsplit(" ", 1)[0] if n[-1].isdigit() else n for n, k in parts for _ in range(k)]
    segments, i = {}, 0
    for name, k in parts:
        segments[name] = [i, i + k - 1]
        i += k
    if max_frames is not None:   # a shorter build (tests): the first frames, segments cut to match
        states, kinds = states[:max_frames], kinds[:max_frames]
        segments = {n: [a, min(b, len(states) - 1)] for n, (a, b) in segments.items() if a < len(states)}
    scale = REF_W / size[0]
    t1 = time.perf_counter()

    stem = _stem(size)
    video = out / (stem + ".avi")
    tmp = out / f"{stem}.{os.getpid()}.tmp.avi"   # concurrent builds do not collide
    # the FFmpeg backend: frames a third the size of OpenCV's own MJPG encoder's (~75 KB at 1280x720)
    writer = cv2.VideoWriter(str(tmp), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"MJPG"), FPS, size)
    if not writer.isOpened():
        raise SystemExit(f"cv2.VideoWriter (FFmpeg) cannot write MJPG to {tmp}")
    level, vig = _level(wall, scale), _vignette(size)

    def one(i):
        return render_frame(level, states[i], scale, size, i, SEED, vig)

    with ThreadPoolExecutor(2) as pool:
        for frame in pool.map(one, range(len(states))):
            writer.write(frame)
    writer.release()
    os.replace(tmp, video)
    verify(video, len(states), size)
    t2 = time.perf_counter()

    meta = {"file": video.name, "fps": FPS, "frames": len(states), "width": size[0], "height": size[1],
            "codec": "MJPG (cv2.VideoWriter, FFmpeg backend)", "seed": SEED, "scale": scale,
            "wall": {"file": "wall.png", "mask": "wall_mask.png", "width": WALL_W, "height": WALL_H,
                     "sha256": _wall_digest(out), **used},
            "segments": segments, "segment_kind": kinds, "states": states,
            "state_fields": "x, y: window top-left in wall.png pixels; zoom: on top of scale (wall px per video px); "
                            "gain: exposure multiplier; blur_len (video px), blur_angle (deg, y down): motion blur",
            "sources": SOURCES, "licence": NOTICE, "build": _build_params(size, data, max_frames),
            "build_seconds": {"wall_and_path": round(t1 - t0, 2), "render_and_encode": round(t2 - t1, 2)}}
    json_path = out / (stem + ".json")
    tmp_json = out / f"{stem}.{os.getpid()}.tmp.json"
    tmp_json.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp_json, json_path)
    return json_path


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=_size, default=(REF_W, REF_H), help="WxH, e.g. 640x480 (default 1280x720)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("CRACK_DATA_DIR", DATA)))
    ap.add_argument("--frames", type=int, default=None, help="only the first N frames (quick builds)")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    json_path = build(args.size, args.out, args.data, args.frames)
    meta = load_field_meta(json_path)
    video = json_path.with_name(meta["file"])
    print(f"{video}: {meta['frames']} frames, {meta['frames'] / FPS:.1f} s at {FPS} fps, {meta['width']}x"
          f"{meta['height']}, {video.stat().st_size / 1e6:.1f} MB, built in {time.perf_counter() - t:.1f} s "
          f"(wall and path {meta['build_seconds']['wall_and_path']} s, render and encode "
          f"{meta['build_seconds']['render_and_encode']} s)")
    for name, (a, b) in meta["segments"].items():
        print(f"  {name:16s} frames {a:4d}-{b:4d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
