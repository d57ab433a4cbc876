"""Build the shipped sample inspection video ``resources/sample_inspection.avi``.

A simulated camera sweep over a wall assembled from real, redistributable photographs:

* Özgenel's concrete wall patches (227×227, CC BY 4.0), crack and no-crack;
* the OMU port quay drone patches (256×256, CC BY-SA 4.0), which carry their grid position in
  the file name (``<image>_<row>_<col>``): one block of drone image ``h1_MAX_0032_10m`` is put
  back together in its real arrangement, so that stretch of wall is contiguous.

Patches are laid out on a 227-pixel grid with feathered (linearly blended) seams; a 640×480
window is panned and zoomed smoothly across the wall with sub-pixel ``warpAffine``. The sweep:
crack-free wall, a stretch of cracks, a few seconds held still on one crack (flag
de-duplication should show one flag there, not ninety), then the port quay wall.

Deterministic (fixed seed, sorted file lists). Writes::

    resources/sample_inspection.avi    MJPG, 640×480, 30 fps, 19 s, ~8 MB
    resources/sample_inspection.json   fps, frames, size, segments (frame ranges)
    resources/CREDITS.md               attribution and the list of images used

    python scripts/make_sample_video.py [--data ../shared/data] [--quality 26]

Because the video contains CC BY-SA material it is distributed under CC BY-SA 4.0 (CREDITS.md).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inspector.paths import SAMPLE_VIDEO_NAME  # noqa: E402

DATA = REPO.parent / "shared" / "data"
SEED = 20261121
FPS = 30
WIDTH, HEIGHT = 640, 480
CELL = 227            # Özgenel's native patch size; quay patches are shrunk to it (INTER_AREA)
SEAM = 40             # feathered overlap between neighbouring patches, pixels
LENS_SIGMA = 0.8      # Gaussian blur of the rendered frame, video pixels
LEVEL = 0.85          # how far each patch's mean colour is pulled to its data set's median
ROWS = 3
STEP = CELL - SEAM
QUAY_IMAGE = "h1_MAX_0032_10m"
QUAY_BLOCK = (5, 0)   # (row, col) of the block's top-left patch in the drone image's grid
# columns per section: crack-free wall, wall with crack stretches, port quay wall
SECTIONS = (("crack-free", 10), ("cracks", 8), ("quay", 8))


@dataclass
class Cell:
    path: Path
    credit: str       # "ozgenel" | "quay"


def _sorted_jpgs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg")


def _quay_grid(folder: Path) -> dict[tuple[int, int], Path]:
    grid = {}
    for p in _sorted_jpgs(folder):
        if p.stem.startswith(QUAY_IMAGE + "_"):
            r, c = (int(v) for v in p.stem.rsplit("_", 2)[1:])
            grid[(r, c)] = p
    return grid


def layout(data: Path, rng: np.random.Generator) -> list[list[Cell]]:
    """The wall as ``ROWS`` rows of cells, section by section (see ``SECTIONS``)."""
    no_crack = _sorted_jpgs(data / "ozgenel_ccic_subset" / "no_crack")
    crack = _sorted_jpgs(data / "ozgenel_ccic_subset" / "crack")
    quay_dir = data / "omu_port_quay" / "images"
    if not no_crack or not crack or not quay_dir.is_dir():
        raise SystemExit(f"real data not found under {data} (need ozgenel_ccic_subset and omu_port_quay)")
    rows: list[list[Cell]] = [[] for _ in range(ROWS)]

    # Crack-free wall: runs of consecutive file numbers (neighbouring crops of one photo look alike).
    n_free = SECTIONS[0][1]
    start = int(rng.integers(0, len(no_crack) - ROWS * n_free * 2))
    free = no_crack[start:start + ROWS * n_free * 2:2]
    for r in range(ROWS):
        rows[r] += [Cell(p, "ozgenel") for p in free[r * n_free:(r + 1) * n_free]]

    # Cracks: the middle row is a run of consecutive crack patches, a few more sprinkled around.
    n_cr = SECTIONS[1][1]
    start = int(rng.integers(0, len(crack) - n_cr))
    stretch = crack[start:start + n_cr]
    others = [no_crack[i] for i in rng.choice(len(no_crack), size=2 * n_cr, replace=False)]
    extra = [crack[i] for i in rng.choice(len(crack), size=3, replace=False)]
    top, bottom = others[:n_cr], others[n_cr:]
    for i, p in zip((1, 5, 6), extra):
        (top if i != 5 else bottom)[i] = p
    rows[0] += [Cell(p, "ozgenel") for p in top]
    rows[1] += [Cell(p, "ozgenel") for p in stretch]
    rows[2] += [Cell(p, "ozgenel") for p in bottom]

    # Port quay: one block of a drone image in its real arrangement; gaps (patches the data set
    # does not have) filled from the same drone image's other patches.
    grid = _quay_grid(quay_dir)
    r0, c0 = QUAY_BLOCK
    block = {(r, c) for r in range(ROWS) for c in range(SECTIONS[2][1])}
    spare = [p for (r, c), p in sorted(grid.items()) if (r - r0, c - c0) not in block]
    rng.shuffle(spare)
    for r in range(ROWS):
        for c in range(SECTIONS[2][1]):
            p = grid.get((r0 + r, c0 + c)) or spare.pop()
            rows[r].append(Cell(p, "quay"))
    return rows


def _feather(n: int) -> np.ndarray:
    """Weights for one axis of a patch: ramps over the seam, 1 inside."""
    ramp = np.minimum(np.arange(n) + 1, n - np.arange(n)) / (SEAM + 1)
    return np.clip(ramp, 0.02, 1.0).astype(np.float32)


def _load(cell: Cell) -> np.ndarray:
    img = cv2.imread(str(cell.path), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"cannot read {cell.path}")
    if img.shape[:2] != (CELL, CELL):
        img = cv2.resize(img, (CELL, CELL), interpolation=cv2.INTER_AREA)
    return img.astype(np.float32)


def build_wall(rows: list[list[Cell]]) -> np.ndarray:
    """Patches blended at their seams. Each patch's mean colour is pulled towards the median of
    its data set (photos of different walls under different light would otherwise make a
    chequerboard that no real wall looks like); texture and cracks are left as they are."""
    n_cols = len(rows[0])
    h = STEP * (ROWS - 1) + CELL
    w = STEP * (n_cols - 1) + CELL
    imgs = [[_load(cell) for cell in row] for row in rows]
    means = {}
    for row, irow in zip(rows, imgs):
        for cell, img in zip(row, irow):
            means.setdefault(cell.credit, []).append(img.reshape(-1, 3).mean(0))
    target = {k: np.median(v, axis=0) for k, v in means.items()}
    acc = np.zeros((h, w, 3), np.float32)
    weight = np.zeros((h, w, 1), np.float32)
    f = _feather(CELL)
    win = (f[:, None] * f[None, :])[..., None]
    for r, (row, irow) in enumerate(zip(rows, imgs)):
        for c, (cell, img) in enumerate(zip(row, irow)):
            img = img + LEVEL * (target[cell.credit] - img.reshape(-1, 3).mean(0))
            y, x = r * STEP, c * STEP
            acc[y:y + CELL, x:x + CELL] += img * win
            weight[y:y + CELL, x:x + CELL] += win
    return np.clip(acc / weight + 0.5, 0, 255).astype(np.uint8)


def camera_path(wall_w: int, wall_h: int) -> tuple[list[tuple[float, float, float, float]], dict]:
    """Per frame (cx, cy, scale, angle_deg) in wall pixels, and the named segments (frame ranges).

    ``scale`` = wall pixels per video pixel. Keyframes are joined with a cosine ease; a slow
    wobble (a hand-held camera) is added everywhere, damped to a quarter while holding still.
    """
    col = lambda c: c * STEP + CELL / 2  # noqa: E731  centre of grid column c
    mid = wall_h / 2
    a, b = SECTIONS[0][1], SECTIONS[1][1]
    hold_x, hold_y = col(a + 3) + 30, col(1)
    keys = [  # (second, cx, cy, scale)
        (0.0, col(1) + 60, mid - 20, 1.10),
        (4.5, col(7), mid + 15, 1.05),             # crack-free wall
        (8.5, col(a + 2), mid - 10, 0.95),
        (10.0, hold_x, hold_y, 0.90),              # arrive at a crack
        (13.0, hold_x, hold_y, 0.90),              # ... and hold still
        (16.0, col(a + b) + 60, mid + 10, 0.80),   # sweep onto the quay wall, a little closer
        (19.0, col(a + b + 3) - 40, mid - 15, 0.75),
    ]
    hold = (10.0, 13.0)
    n = int(round(keys[-1][0] * FPS))
    out = []
    for i in range(n):
        t = i / FPS
        k = max(j for j in range(len(keys) - 1) if keys[j][0] <= t)
        (t0, *a), (t1, *b) = keys[k], keys[k + 1]
        u = (1 - math.cos(math.pi * (t - t0) / (t1 - t0))) / 2
        cx, cy, s = (p + (q - p) * u for p, q in zip(a, b))
        amp = 0.25 if hold[0] <= t < hold[1] else 1.0
        cx += amp * (6 * math.sin(2 * math.pi * 0.23 * t) + 2 * math.sin(2 * math.pi * 0.71 * t + 1))
        cy += amp * (5 * math.sin(2 * math.pi * 0.17 * t + 2) + 2 * math.sin(2 * math.pi * 0.59 * t))
        angle = amp * 0.6 * math.sin(2 * math.pi * 0.11 * t)
        half_w, half_h = s * WIDTH / 2 + 8, s * HEIGHT / 2 + 8   # margin for the roll
        cx = min(max(cx, half_w), wall_w - half_w)
        cy = min(max(cy, half_h), wall_h - half_h)
        out.append((cx, cy, s, angle))
    # Segments from the geometry: which frames see only crack-free wall, only quay wall.
    first_crack_x = SECTIONS[0][1] * STEP                             # where section 2 starts
    quay_x = (SECTIONS[0][1] + SECTIONS[1][1] - 1) * STEP + CELL      # where section 2 has ended

    def x_extent(cam):
        cx, _, s, angle = cam
        a = math.radians(angle)
        half = s * (WIDTH / 2 * abs(math.cos(a)) + HEIGHT / 2 * abs(math.sin(a)))
        return cx - half, cx + half

    ext = [x_extent(c) for c in out]
    free_end = next(i for i, (_, x1) in enumerate(ext) if x1 >= first_crack_x) - 1
    quay_start = next(i for i, (x0, _) in enumerate(ext) if x0 >= quay_x and i / FPS > hold[1])
    h0, h1 = int(round(hold[0] * FPS)), int(round(hold[1] * FPS)) - 1
    segments = {"crack-free wall": [0, free_end], "crack stretch": [free_end + 1, h0 - 1],
                "held still on one crack": [h0, h1], "port quay wall only": [quay_start, n - 1]}
    return out, segments


def render(wall: np.ndarray, cam: tuple[float, float, float, float]) -> np.ndarray:
    cx, cy, s, angle = cam
    a = math.radians(angle)
    # video pixel (u, v) -> wall pixel: rotate/scale about the window centre, then translate
    m = np.array([[s * math.cos(a), -s * math.sin(a), 0.0],
                  [s * math.sin(a), s * math.cos(a), 0.0]])
    m[:, 2] = np.array([cx, cy]) - m[:, :2] @ np.array([WIDTH / 2, HEIGHT / 2])
    frame = cv2.warpAffine(wall, m, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REFLECT_101)
    # a small camera's lens softness; it also keeps the grainy quay texture affordable in MJPG
    return cv2.GaussianBlur(frame, (0, 0), LENS_SIGMA)


SHOWN_PX = (CELL - 2 * SEAM) ** 2 // 2   # half a crack patch's inside: a long crack shown this much is shown


def crack_regions(rows: list[list[Cell]], data: Path) -> np.ndarray:
    """The video's ground truth: an int32 image of the wall, 0 where there is no crack and k for
    the pixels of the k-th distinct crack. An Özgenel crack patch is one crack (its inside, the
    seams left out, so neighbouring patches stay apart: the data set labels patches, not pixels);
    a quay patch's cracks are its YOLO boxes (``labels_yolo``), and boxes that touch (one crack
    across two patches, or boxes along one crack) are one crack."""
    n_cols = len(rows[0])
    h, w = STEP * (ROWS - 1) + CELL, STEP * (n_cols - 1) + CELL
    ozgenel = np.zeros((h, w), np.uint8)
    quay = np.zeros((h, w), np.uint8)
    labels_dir = data / "omu_port_quay" / "labels_yolo"
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            y, x = r * STEP, c * STEP
            if cell.credit == "ozgenel" and cell.path.parent.name == "crack":
                ozgenel[y + SEAM:y + CELL - SEAM, x + SEAM:x + CELL - SEAM] = 1
            elif cell.credit == "quay":
                label = labels_dir / (cell.path.stem + ".txt")
                for line in (label.read_text().split("\n") if label.exists() else []):
                    if not line.strip():
                        continue
                    _, bx, by, bw, bh = (float(v) for v in line.split())
                    x0, x1 = x + int((bx - bw / 2) * CELL), x + int(math.ceil((bx + bw / 2) * CELL))
                    y0, y1 = y + int((by - bh / 2) * CELL), y + int(math.ceil((by + bh / 2) * CELL))
                    quay[max(0, y0):y1, max(0, x0):x1] = 1
    _, oz = cv2.connectedComponents(ozgenel)
    _, qu = cv2.connectedComponents(quay)
    return np.where(qu > 0, qu + oz.max(), oz).astype(np.int32)


def ground_truth(data: Path = DATA) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """The wall's :func:`crack_regions` and the camera of every frame (cx, cy, scale, angle): the
    same layout and path the video was built from (the seed and the sorted file lists)."""
    rows = layout(data, np.random.default_rng(SEED))
    regions = crack_regions(rows, data)
    cams, _ = camera_path(regions.shape[1], regions.shape[0])
    return regions, cams


def in_view(regions: np.ndarray, cam: tuple[float, float, float, float], share: float = 0.5) -> set[int]:
    """The cracks of ``regions`` shown by the frame of ``cam`` (its rotation, under a degree,
    ignored): at least ``share`` of their pixels, or ``SHOWN_PX`` of a long one, in the frame."""
    cx, cy, s, _ = cam
    x0, x1 = int(round(cx - s * WIDTH / 2)), int(round(cx + s * WIDTH / 2))
    y0, y1 = int(round(cy - s * HEIGHT / 2)), int(round(cy + s * HEIGHT / 2))
    ids, inside = np.unique(regions[max(0, y0):y1, max(0, x0):x1], return_counts=True)
    total = np.bincount(regions.ravel())
    return {int(k) for k, n in zip(ids, inside) if k and n >= min(share * total[k], SHOWN_PX)}


def _chunk(fourcc: bytes, data: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


def _list(kind: bytes, body: bytes) -> bytes:
    return _chunk(b"LIST", kind + body)


def write_mjpg_avi(path: Path, jpegs: list[bytes], fps: int, width: int, height: int) -> None:
    """A plain AVI 1.0 file of MJPG frames (one key frame each) with an ``idx1`` index.

    Written here rather than with ``cv2.VideoWriter`` because neither of OpenCV's MJPG writers
    gives control of the size: the FFmpeg backend ignores the quality property and OpenCV's own
    encoder makes frames 3-4× larger than libjpeg's at the same quality.
    """
    biggest = max(len(j) for j in jpegs)
    avih = struct.pack("<10I4I", round(1e6 / fps), biggest * fps, 0, 0x10, len(jpegs), 0, 1, biggest,
                       width, height, 0, 0, 0, 0)
    strh = struct.pack("<4s4sIHHIIIIIIiI4h", b"vids", b"MJPG", 0, 0, 0, 0, 1, fps, 0, len(jpegs),
                       biggest, -1, 0, 0, 0, width, height)
    strf = struct.pack("<IiiHH4sIiiII", 40, width, height, 1, 24, b"MJPG", width * height * 3, 0, 0, 0, 0)
    hdrl = _list(b"hdrl", _chunk(b"avih", avih) + _list(b"strl", _chunk(b"strh", strh) + _chunk(b"strf", strf)))
    frames, index, offset = [], [], 4  # idx1 offsets count from the "movi" fourcc
    for j in jpegs:
        c = _chunk(b"00dc", j)
        frames.append(c)
        index.append(struct.pack("<4sIII", b"00dc", 0x10, offset, len(j)))
        offset += len(c)
    body = hdrl + _list(b"movi", b"".join(frames)) + _chunk(b"idx1", b"".join(index))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(_chunk(b"RIFF", b"AVI " + body))
    os.replace(tmp, path)


def encode(frames, quality: int) -> list[bytes]:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1]
    out = []
    for f in frames:
        ok, buf = cv2.imencode(".jpg", f, params)
        if not ok:
            raise SystemExit("JPEG encoding failed")
        out.append(buf.tobytes())
    return out


def verify(path: Path, expected: int) -> None:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise SystemExit(f"{path} does not open with cv2.VideoCapture")
        n = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if frame.shape != (HEIGHT, WIDTH, 3):
                raise SystemExit(f"frame {n} of {path} has shape {frame.shape}")
            n += 1
        if n != expected:
            raise SystemExit(f"{path} decodes {n} frames, expected {expected}")
    finally:
        cap.release()


def credits_md(rows: list[list[Cell]], quality: int) -> str:
    used = {"ozgenel": sorted({c.path.relative_to(c.path.parents[1]).as_posix()
                               for r in rows for c in r if c.credit == "ozgenel"}),
            "quay": sorted({c.path.name for r in rows for c in r if c.credit == "quay"})}
    lines = [
        "# Credits for the shipped resources",
        "",
        f"## `{SAMPLE_VIDEO_NAME}`",
        "",
        "A simulated camera sweep (640×480, 30 fps, MJPG) over a wall mosaic assembled from real "
        "photographs; built by `scripts/make_sample_video.py` (patches blended at their seams, "
        "panned, zoomed and slightly rotated). It is an adaptation of the works below and, because "
        "it contains CC BY-SA 4.0 material, is itself licensed under "
        "[CC BY-SA 4.0](https://creativecommons.org/licenses/by-sa/4.0/).",
        "",
        "- **Concrete Crack Images for Classification**: Çağlar Fırat Özgenel (2019), Mendeley Data, "
        "doi:[10.17632/5y9wdsg2zt](https://doi.org/10.17632/5y9wdsg2zt), "
        "licence [CC BY 4.0](https://creativecommons.org/licenses/by/4.0/). Also: Özgenel, Ç.F., "
        "Gönenç Sorguç, A., \"Performance Comparison of Pretrained Convolutional Neural Networks on "
        "Crack Detection in Buildings\", ISARC 2018. Changes: patches tiled into a mosaic with "
        "blended seams, mean colour levelled, resampled and slightly blurred by the simulated "
        "camera, JPEG-compressed.",
        "- **OMU port quay wall crack patches**: Komi et al., *Sensors* 25 (2025) 4325, licence "
        "[CC BY-SA 4.0](https://creativecommons.org/licenses/by-sa/4.0/). Changes: patches shrunk "
        "from 256 to 227 pixels, a block of drone image `h1_MAX_0032_10m` re-assembled in its grid "
        "order, tiled with blended seams, mean colour levelled, resampled and slightly blurred by "
        "the simulated camera, JPEG-compressed.",
        "",
        f"Build settings: seed {SEED}, JPEG quality {quality}, lens blur σ {LENS_SIGMA} px. "
        f"Frame ranges of the sections (crack-free wall, crack stretch, held still on one crack, "
        f"port quay wall): `{Path(SAMPLE_VIDEO_NAME).stem}.json`.",
        "",
        f"### Images used ({len(used['ozgenel'])} Özgenel, {len(used['quay'])} port quay)",
        "",
        "Özgenel (`ozgenel_ccic_subset/`): " + ", ".join(f"`{p}`" for p in used["ozgenel"]),
        "",
        "Port quay (`omu_port_quay/images/`): " + ", ".join(f"`{p}`" for p in used["quay"]),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("CRACK_DATA_DIR", DATA)))
    ap.add_argument("--out", type=Path, default=REPO / "resources")
    ap.add_argument("--quality", type=int, default=26, help="MJPG quality 1..100")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(SEED)
    rows = layout(args.data, rng)
    wall = build_wall(rows)
    cams, segments = camera_path(wall.shape[1], wall.shape[0])
    args.out.mkdir(parents=True, exist_ok=True)
    video = args.out / SAMPLE_VIDEO_NAME
    jpegs = encode((render(wall, c) for c in cams), args.quality)
    write_mjpg_avi(video, jpegs, FPS, WIDTH, HEIGHT)
    n = len(jpegs)
    verify(video, n)
    meta = {"file": SAMPLE_VIDEO_NAME, "fps": FPS, "frames": n, "width": WIDTH, "height": HEIGHT,
            "codec": "MJPG", "quality": args.quality, "seed": SEED,
            "segments": segments, "licence": "CC BY-SA 4.0 (see CREDITS.md)"}
    (args.out / (video.stem + ".json")).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (args.out / "CREDITS.md").write_text(credits_md(rows, args.quality), encoding="utf-8")
    size = video.stat().st_size / 1e6
    print(f"{video}: {n} frames, {n / FPS:.1f} s at {FPS} fps, {WIDTH}x{HEIGHT}, {size:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
