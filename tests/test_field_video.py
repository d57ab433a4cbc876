"""The field-inspection test video (scripts/make_field_video.py): built at 640×480 into a temporary
folder (~10 s), then checked against what its json says: frame count and size when reopened,
segments covering every frame in order with every kind of camera motion, speeds as named, and
the per-frame ground truth (``frame_mask``) moving exactly as the recorded camera does, held on a
crack while the camera is still and free of cracks in the last pause."""
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.make_field_video import (KINDS, ensure_field_video, frame_mask, load_field_meta,  # noqa: E402
                                      render_field_frame)

SIZE = (640, 480)


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    json_path = ensure_field_video(SIZE, out=tmp_path_factory.mktemp("field_video"))
    meta = load_field_meta(json_path)
    wall_mask = cv2.imread(str(json_path.with_name("wall_mask.png")), cv2.IMREAD_GRAYSCALE)
    return json_path, meta, wall_mask


def _frames(meta, kind):
    return [i for i, k in enumerate(meta["segment_kind"]) if k == kind]


def _xy(meta, i):
    s = meta["states"][i]
    return np.array([s["x"], s["y"]])


def test_video_reopens_with_its_frame_count_and_size(field):
    json_path, meta, _ = field
    assert (meta["width"], meta["height"], meta["fps"]) == (*SIZE, 30)
    assert 600 <= meta["frames"] <= 750
    cap = cv2.VideoCapture(str(json_path.with_name(meta["file"])))
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (SIZE[1], SIZE[0], 3)
        n += 1
    cap.release()
    assert n == meta["frames"] == len(meta["states"]) == len(meta["segment_kind"])
    assert json_path.with_name("wall.png").is_file() and meta["sources"] and "do not" in meta["licence"]


def test_ensure_does_not_rebuild_an_up_to_date_video(field):
    json_path, meta, _ = field
    before = json_path.with_name(meta["file"]).stat().st_mtime_ns
    assert ensure_field_video(SIZE, out=json_path.parent) == json_path
    assert json_path.with_name(meta["file"]).stat().st_mtime_ns == before


def test_segments_cover_all_frames_in_order(field):
    _, meta, _ = field
    ranges = list(meta["segments"].values())
    assert ranges[0][0] == 0 and ranges[-1][1] == meta["frames"] - 1
    assert all(a[1] + 1 == b[0] and a[0] <= a[1] for a, b in zip(ranges, ranges[1:]))
    assert set(meta["segment_kind"]) == set(KINDS)
    for name, (a, b) in meta["segments"].items():
        kind = name.rstrip(" 0123456789")
        assert kind in KINDS and set(meta["segment_kind"][a:b + 1]) == {kind}
    assert 60 <= len(_frames(meta, "static")) <= 120


def test_camera_moves_as_the_segments_say(field):
    _, meta, _ = field
    xy = np.array([[s["x"], s["y"]] for s in meta["states"]])
    step = np.r_[0, np.hypot(*np.diff(xy, axis=0).T)]      # wall px per frame (1280x720 reference)
    still = _frames(meta, "static") + _frames(meta, "pause") + _frames(meta, "exposure change")
    pans = [(a, b) for n, (a, b) in meta["segments"].items() if n.startswith("slow pan")]
    assert len(pans) >= 2
    for a, b in pans:
        assert 2 <= np.median(step[a + 1:b + 1]) <= 4 and step[a + 1:b + 1].max() < 5
    d0, d1 = (xy[b] - xy[a - 1] for a, b in pans[:2])
    assert d0 @ d1 < 0.5 * np.hypot(*d0) * np.hypot(*d1)    # different directions
    for a, b in (r for n, r in meta["segments"].items() if n in ("static", "pause", "exposure change")):
        assert (xy[a:b + 1] == xy[a]).all()
    shake = _frames(meta, "shake")
    assert 1 <= step[shake[1:]].mean() <= 6 and np.ptp(xy[shake], axis=0).max() < 30
    fast = _frames(meta, "fast pan")
    assert 30 <= np.percentile(step[fast], 75) and step[fast].max() <= 60
    assert all(meta["states"][i]["blur_len"] > 5 for i in fast if step[i] >= 30)
    assert all(meta["states"][i]["blur_len"] == 0 for i in still)
    # ... and the quick pan away comes back to where the fast pan arrived
    back = [i for i in fast[:-1] if (xy[i] == xy[fast[-1]]).all()]
    assert back and np.hypot(*(xy[back[0]:fast[-1]] - xy[fast[-1]]).T).max() > 300
    gain = np.array([s["gain"] for s in meta["states"]])
    exposure = _frames(meta, "exposure change")
    assert gain[exposure].min() == pytest.approx(0.6, abs=0.01)
    assert gain[[exposure[0], exposure[-1]]] == pytest.approx(1)
    assert (np.delete(gain, exposure) == 1).all()


def test_still_camera_has_the_same_mask_on_a_crack_and_none_in_the_last_pause(field):
    _, meta, wall_mask = field
    static = [frame_mask(meta, wall_mask, i) for i in _frames(meta, "static")]
    assert all((m == static[0]).all() for m in static)
    assert static[0].shape == (SIZE[1], SIZE[0]) and static[0].mean() > 0.005
    h, w = static[0].shape
    assert static[0][h // 3:2 * h // 3, w // 3:2 * w // 3].any(), "held still with a crack mid-frame"
    a, b = meta["segments"]["pause 2"]
    assert not any(frame_mask(meta, wall_mask, i).any() for i in range(a, b + 1))


def test_mask_shifts_by_the_recorded_camera_motion(field):
    _, meta, wall_mask = field
    scale = meta["scale"]
    for name in ("slow pan", "slow pan 2", "shake"):
        a, b = meta["segments"][name]
        i, j = a + 5, min(a + 35, b)
        mi, mj = frame_mask(meta, wall_mask, i), frame_mask(meta, wall_mask, j)
        shift = np.round((_xy(meta, j) - _xy(meta, i)) / scale).astype(int)    # video px

        def overlap(dx, dy):   # frame j pixel (u, v) shows what frame i showed at (u + dx, v + dy)
            h, w = mi.shape
            a_ = mi[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
            b_ = mj[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            return (a_ & b_).sum() / max((a_ | b_).sum(), 1)

        best = max(((dx, dy) for dx in range(shift[0] - 3, shift[0] + 4) for dy in range(shift[1] - 3, shift[1] + 4)),
                   key=lambda d: overlap(*d))
        assert abs(best[0] - shift[0]) <= 1 and abs(best[1] - shift[1]) <= 1, (name, best, shift)
        assert overlap(*best) > 0.6 > overlap(0, 0) or shift.tolist() == [0, 0]


def test_mask_follows_the_wall_mask_under_the_recorded_state(field):
    _, meta, wall_mask = field
    scale = meta["scale"]
    lvl = cv2.resize((wall_mask > 0).astype(np.float32), None, fx=1 / scale, fy=1 / scale,
                     interpolation=cv2.INTER_AREA) >= 0.25
    for i in (0, meta["segments"]["slow pan"][0] + 17, meta["segments"]["shake"][0] + 9):
        x, y = _xy(meta, i) / scale
        rows = np.floor(y + np.arange(SIZE[1]) + 0.5).astype(int)
        cols = np.floor(x + np.arange(SIZE[0]) + 0.5).astype(int)
        expected = lvl[np.ix_(rows, cols)]
        assert (frame_mask(meta, wall_mask, i) == expected).mean() > 0.999


def test_video_frames_are_the_rendered_camera_view(field):
    json_path, meta, _ = field
    wall = cv2.imread(str(json_path.with_name("wall.png")), cv2.IMREAD_COLOR)
    cap = cv2.VideoCapture(str(json_path.with_name(meta["file"])))
    want = {0, meta["segments"]["exposure change"][0] + 45, meta["segments"]["fast pan"][0] + 10}
    for i in range(max(want) + 1):
        ok, frame = cap.read()
        assert ok
        if i in want:
            assert cv2.PSNR(frame, render_field_frame(meta, wall, i)) > 30
    cap.release()
