"""scripts/make_sample_video.py's ground truth: the cracks of the shipped sample video, from how
it was built (what benchmarks/flag_volume.py counts distinct-crack recall against).

The layout and camera path are rebuilt from ``$CRACK_DATA_DIR`` and compared with the shipped
video's own frames, so a rebuilt video with another layout, or data that changed, fails here
instead of making the benchmark count the wrong cracks.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.paths import sample_video
from scripts.make_sample_video import (SEED, build_wall, crack_regions, ground_truth, in_view, layout,
                                       render)

DATA = Path(os.environ["CRACK_DATA_DIR"])


@pytest.fixture(scope="module")
def truth():
    return ground_truth(DATA)


def decoded(i: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(sample_video()))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, bgr = cap.read()
        assert ok
        return bgr
    finally:
        cap.release()


def test_the_rebuilt_layout_and_path_are_the_shipped_videos(truth):
    """Frames rendered from the rebuilt wall and camera match the video (JPEG noise only); the
    camera of a second later (outside the still hold) fits at least 3× worse."""
    _, cams = truth
    meta = json.loads(sample_video().with_suffix(".json").read_text(encoding="utf-8"))
    assert len(cams) == meta["frames"]
    wall = build_wall(layout(DATA, np.random.default_rng(SEED)))
    for i in (0, 200, 350, 540):
        frame = decoded(i).astype(np.float32)
        same = np.abs(frame - render(wall, cams[i])).mean()
        assert same < 6, i
        if i != 350:                       # 350: inside the hold, a second later looks the same
            assert np.abs(frame - render(wall, cams[i - 30])).mean() > 3 * same, i


def test_the_cracks_are_the_crack_patches_and_the_quay_boxes(truth):
    regions, _ = truth
    rows = layout(DATA, np.random.default_rng(SEED))
    ozgenel = sum(1 for row in rows for c in row if c.credit == "ozgenel" and c.path.parent.name == "crack")
    sizes = np.bincount(regions.ravel())[1:]
    assert ozgenel == 11 and (sizes[:ozgenel] == sizes[0]).all()   # one patch's inside each
    assert len(sizes) > ozgenel and (sizes > 0).all()                # and the quay's cracks
    assert np.array_equal(crack_regions(rows, DATA), regions)


def test_what_a_frame_shows(truth):
    """The crack-free start shows no crack; the still hold on a crack shows it in every frame;
    the whole video shows every crack patch."""
    regions, cams = truth
    meta = json.loads(sample_video().with_suffix(".json").read_text(encoding="utf-8"))
    free = meta["segments"]["crack-free wall"]
    assert not set().union(*(in_view(regions, cams[i]) for i in range(free[0], free[1] + 1)))
    first, last = meta["segments"]["held still on one crack"]
    held = [in_view(regions, cams[i]) for i in range(first, last + 1)]
    assert set.intersection(*held)
    assert set(range(1, 12)) <= set().union(*(in_view(regions, c) for c in cams))
