"""The frame heat-map is one continuous map, not a patchwork of tiles (issue 13).

The shipped INT8 student on frames of the shipped sample video: its CAM is 3×3 cells per 160 px
tile, so a map upsampled tile by tile jumps at every tile border. The seam metric
(:func:`seam_ratio`) compares the step between neighbouring pixels across tile borders with the
steps just beside them. Measured on these 8 frames: the old per-tile composition was flat for
the last ~26 px of each tile and then jumped at the border (ratio infinite; against the mean
step of all inside pixels 95-324); the continuous map is 1.00 on every frame.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspector.edge.engine import InferenceEngine, compose_heatmap, tile_grid
from inspector.paths import default_model, sample_video


def seam_ratio(heat: np.ndarray, boxes) -> float:
    """Mean |step| between neighbouring pixels across tile borders / mean |step| of the pixel
    pairs just beside them, inside the tiles (2 each side; both axes). A continuous map ≈ 1, a
    map with a jump at the borders ≫ 1."""
    dx, dy = np.abs(np.diff(heat, axis=1)), np.abs(np.diff(heat, axis=0))
    seam, near = [], []
    for steps, starts in ((dx, {b[0] for b in boxes}), (dy.T, {b[1] for b in boxes})):
        for x in sorted(s for s in starts if s > 0):  # the step from pixel x-1 to x is steps[:, x-1]
            seam.append(steps[:, x - 1])
            near.extend(steps[:, x - 1 + k] for k in (-2, -1, 1, 2) if 0 <= x - 1 + k < steps.shape[1])
    return float(np.concatenate(seam).mean() / np.concatenate(near).mean())


def sample_frames(n: int):
    cap = cv2.VideoCapture(str(sample_video()))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    try:
        for index in np.linspace(0, count - 1, n).astype(int):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
            ok, bgr = cap.read()
            assert ok, index
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


@pytest.fixture(scope="module")
def engine():
    return InferenceEngine(default_model(), threads=1)


def test_frame_heatmap_has_no_seams_at_tile_borders(engine):
    ratios = []
    for frame in sample_frames(8):
        result = engine.inspect(frame)
        if result.heatmap.max() > 0:
            ratios.append(seam_ratio(result.heatmap, [t.box for t in result.tiles]))
    assert len(ratios) >= 6
    assert max(ratios) < 2.0, ratios


def test_per_tile_cam_stays_exact_and_the_map_passes_through_it(engine):
    """TileResult.cam is the graph's CAM untouched; the frame map at each cell centre is that
    cell's CAM value × the tile's crack probability (before the one per-frame scale)."""
    frame = next(sample_frames(1))
    batch_cams = []
    original_run = engine._run

    def spy(batch):
        probs, cams = original_run(batch)
        batch_cams.append(cams.copy())
        return probs, cams

    engine._run = spy
    try:
        result = engine.inspect(frame)
    finally:
        del engine._run
    (cams,) = batch_cams
    for i, tile in enumerate(result.tiles):
        np.testing.assert_array_equal(tile.cam, cams[i, engine.crack_index])
    weighted = np.stack([np.maximum(t.cam, 0) * t.crack_prob for t in result.tiles])
    raw = compose_heatmap(*frame.shape[:2], [t.box for t in result.tiles], [(engine.tile_size,) * 2] * len(result.tiles), weighted)
    cell = engine.tile_size / weighted.shape[2]
    for tile, w in zip(result.tiles, weighted):
        x0, y0 = tile.box[:2]
        for r in range(w.shape[0]):
            for c in range(w.shape[1]):
                # the cell centre (a half-pixel off the grid: the nearest pixel, bilinear neighbourhood)
                y, x = int(y0 + (r + 0.5) * cell), int(x0 + (c + 0.5) * cell)
                assert raw[y, x] == pytest.approx(w[r, c], abs=0.02 * float(weighted.max()))
    scale = result.crack_prob_max / raw.max()
    np.testing.assert_allclose(result.heatmap, np.clip(raw * scale, 0, 1), atol=1e-5)


def test_overlapping_and_shifted_tiles_blend_without_seams():
    """Tiles that overlap (0.25) or whose last row is shifted onto the border (1080 = 6.75 tiles)
    are blended in frame coordinates: a smooth field sampled by every tile comes back smooth."""
    height, width, tile, cells = 1080, 1000, 160, 3
    for overlap in (0.0, 0.25):
        boxes = tile_grid(height, width, tile, overlap)
        pitch = tile / cells
        maps = []
        for x0, y0, _, _ in boxes:
            yy, xx = np.mgrid[0:cells, 0:cells]
            cy, cx = y0 + (yy + 0.5) * pitch, x0 + (xx + 0.5) * pitch
            maps.append((0.5 + 0.4 * np.sin(cx / 170.0) * np.cos(cy / 230.0)).astype(np.float32))
        heat = compose_heatmap(height, width, boxes, [(tile, tile)] * len(boxes), np.stack(maps))
        assert heat.shape == (height, width)
        yy, xx = np.mgrid[0:height, 0:width]
        truth = 0.5 + 0.4 * np.sin((xx + 0.5) / 170.0) * np.cos((yy + 0.5) / 230.0)
        assert np.abs(heat - truth)[40:-40, 40:-40].max() < 0.03, overlap
        assert seam_ratio(heat, boxes) < 1.5, overlap
