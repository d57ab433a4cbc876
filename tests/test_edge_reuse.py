"""Temporal tile reuse (inspector.edge.reuse) on the shipped model, with synthetic motion over real
frames of the sample video: a shifted frame reuses the shifted results, new content and light
changes force re-inference, the refresh budget and the cap hold, flags come from fresh tiles only."""
from __future__ import annotations

import numpy as np
import pytest

from inspector.edge.engine import stitch_heatmap
from inspector.edge.reuse import ReusePolicy, ReusingEngine
from inspector.live.flagging import FlagPolicy
from support import engine, sample_video_results  # noqa: F401 - fixtures

W, H = 640, 480
# no refresh in the tests that are about something else (motion, change, the cap)
NO_REFRESH = ReusePolicy(refresh_frames=10_000, fragile_refresh_frames=10_000)


@pytest.fixture(scope="module")
def strip(engine):  # noqa: F811
    """A 1280×480 strip of two real frames side by side (the crack stretch and the wall before it)."""
    frames = [rgb for rgb, _ in sample_video_results(engine, 2, 150)]
    return np.ascontiguousarray(np.concatenate(frames, axis=1))


def window(strip, x: int) -> np.ndarray:
    return np.ascontiguousarray(strip[:, x:x + W])


def fresh_indices(result) -> list[int]:
    return [i for i, t in enumerate(result.tiles) if t.fresh]


def test_first_frame_infers_every_tile_like_the_engine(engine, strip):  # noqa: F811
    frame = window(strip, 0)
    full = engine.inspect(frame)
    r = ReusingEngine(engine).inspect(frame)
    assert r.reuse.fresh == r.reuse.total == len(full.tiles) == 12
    assert [t.box for t in r.tiles] == [t.box for t in full.tiles]
    np.testing.assert_allclose([t.crack_prob for t in r.tiles], [t.crack_prob for t in full.tiles], atol=1e-6)
    np.testing.assert_allclose(r.heatmap, full.heatmap, atol=1e-5)


def test_a_shifted_frame_reuses_the_shifted_results(engine, strip):  # noqa: F811
    reuse = ReusingEngine(engine, NO_REFRESH)
    first = reuse.inspect(window(strip, 0))
    moved = reuse.inspect(window(strip, 8))      # the camera pans right: content moves 8 px left
    dx, dy = moved.reuse.motion
    assert dx == pytest.approx(-8, abs=1.0) and dy == pytest.approx(0, abs=1.0)
    assert moved.reuse.fresh == 0
    np.testing.assert_array_equal([t.crack_prob for t in moved.tiles], [t.crack_prob for t in first.tiles])
    # the heat-map is the first frame's tiles placed where their content is now
    tile = engine.tile_size
    expected = stitch_heatmap(H, W, [(x0 + dx, y0 + dy, x0 + dx + tile, y0 + dy + tile) for x0, y0, _, _ in
                                     (t.box for t in first.tiles)], [(tile, tile)] * 12,
                              np.array([t.crack_prob for t in first.tiles]), np.stack([t.cam for t in first.tiles]))
    np.testing.assert_allclose(moved.heatmap, expected, atol=1e-6)
    full = engine.inspect(window(strip, 8))
    assert np.corrcoef(moved.heatmap.ravel(), full.heatmap.ravel())[0, 1] > 0.9


def test_a_pan_re_infers_tiles_as_new_content_comes_in(engine, strip):  # noqa: F811
    policy = ReusePolicy()
    reuse = ReusingEngine(engine, policy)
    counts = [reuse.inspect(window(strip, x)).reuse.fresh for x in range(0, 241, 6)]
    assert counts[0] == 12
    # every tile drifts past max_drift (20 px) every ~4 frames at 6 px a frame, so it is re-inferred
    # at about that rate, not every frame and not never
    share = sum(counts[1:]) / (12 * (len(counts) - 1))
    assert 0.1 < share < 0.5
    last = reuse.inspect(window(strip, 246))
    full = engine.inspect(window(strip, 246))
    agree = np.mean([(a.crack_prob >= 0.5) == (b.crack_prob >= 0.5) for a, b in zip(last.tiles, full.tiles)])
    assert agree >= 11 / 12


def test_new_content_in_one_tile_re_infers_that_tile_only(engine, strip):  # noqa: F811
    reuse = ReusingEngine(engine, NO_REFRESH)
    frame = window(strip, 0)
    reuse.inspect(frame)
    changed = frame.copy()
    changed[200:260, 330:400] = (20, 20, 20)     # a dark object inside tile (row 1, col 2): x 320–480, y 160–320
    r = reuse.inspect(changed)
    assert fresh_indices(r) == [6]


def test_a_light_change_re_infers_everything(engine, strip):  # noqa: F811
    reuse = ReusingEngine(engine, NO_REFRESH)
    frame = window(strip, 0)
    reuse.inspect(frame)
    darker = (frame.astype(np.float32) * 0.6).astype(np.uint8)
    assert reuse.inspect(darker).reuse.fresh == 12


def test_the_refresh_budget_holds_on_a_still_camera(engine, strip):  # noqa: F811
    k = 6
    reuse = ReusingEngine(engine, ReusePolicy(refresh_frames=k, fragile_refresh_frames=k))
    frame = window(strip, 0)
    results = [reuse.inspect(frame) for _ in range(1 + 3 * k)]
    per_frame = [r.reuse.fresh for r in results[1:]]
    assert max(per_frame) <= -(-12 // k)              # spread evenly, never all at once
    for start in range(1, len(results) - k + 1):       # every tile within every K frames
        seen = set().union(*(fresh_indices(r) for r in results[start:start + k]))
        assert seen == set(range(12)), f"frames {start}..{start + k - 1} left tiles {set(range(12)) - seen}"


def test_tiles_the_model_is_unsure_of_are_refreshed_sooner(engine, strip):  # noqa: F811
    policy = ReusePolicy(refresh_frames=10_000, fragile_refresh_frames=4, fragile_band=(0.15, 0.95))
    reuse = ReusingEngine(engine, policy)
    frame = window(strip, 0)
    first = reuse.inspect(frame)
    unsure = {i for i, t in enumerate(first.tiles) if 0.15 <= t.crack_prob <= 0.95}
    assert unsure and len(unsure) < 12, "the frame must have sure and unsure tiles for this test"
    seen: set[int] = set()
    for _ in range(4):
        seen |= set(fresh_indices(reuse.inspect(frame)))
    assert seen == unsure


def test_the_cap_limits_fresh_tiles_and_catches_up(engine, strip):  # noqa: F811
    reuse = ReusingEngine(engine, ReusePolicy(max_fresh=3, refresh_frames=10_000, fragile_refresh_frames=10_000))
    reuse.inspect(window(strip, 0))
    other = window(strip, 640) // 2                     # a cut to another view, darker: everything changed
    seen: set[int] = set()
    for _ in range(4):
        r = reuse.inspect(other)
        assert r.reuse.fresh <= 3
        seen |= set(fresh_indices(r))
    assert r.reuse.capped == 0 and seen == set(range(12))
    full = engine.inspect(other)
    np.testing.assert_allclose([t.crack_prob for t in r.tiles], [t.crack_prob for t in full.tiles], atol=1e-6)


def test_the_cap_follows_the_time_budget(engine, strip):  # noqa: F811
    reuse = ReusingEngine(engine, ReusePolicy(budget_ms=1e-3))
    assert reuse.cap is None                            # nothing measured yet
    reuse.inspect(window(strip, 0))
    assert reuse.ms_per_tile > 0 and reuse.cap == 1     # a budget below one tile still infers one


def test_the_cap_follows_the_camera_once_its_rate_is_known(engine, strip):  # noqa: F811
    reuse = ReusingEngine(engine)
    reuse.follow_rate(0.0)                              # a camera that has just started
    reuse.inspect(window(strip, 0))
    assert reuse.policy.budget_ms is None and reuse.cap is None
    reuse.follow_rate(30.0)
    assert reuse.policy.budget_ms == pytest.approx(1000 / 30 / 2) and reuse.cap >= 1
    reuse.follow_rate(5.0)                              # fitted once
    assert reuse.policy.budget_ms == pytest.approx(1000 / 30 / 2)
    own = ReusingEngine(engine, ReusePolicy(max_fresh=2))
    own.follow_rate(30.0)
    assert own.policy.budget_ms is None and own.cap == 2


def test_another_frame_size_starts_over(engine, strip):  # noqa: F811
    reuse = ReusingEngine(engine)
    reuse.inspect(window(strip, 0))
    small = np.ascontiguousarray(strip[:320, :480])
    r = reuse.inspect(small)
    assert r.reuse.fresh == r.reuse.total == len(engine.inspect(small).tiles)


def test_flags_come_from_fresh_tiles_only(engine, strip):  # noqa: F811
    reuse = ReusingEngine(engine, NO_REFRESH)
    frame = window(strip, 0)
    first = reuse.inspect(frame)
    top = max(t.crack_prob for t in first.tiles)
    policy = FlagPolicy(crack_threshold=max(0.01, top - 1e-6), uncertain_band=(0.0, 1e-9))
    assert policy.reason_for(first) == "crack"
    again = reuse.inspect(frame)
    assert again.reuse.fresh == 0 and policy.reason_for(again) is None


@pytest.mark.parametrize("kwargs", [{"refresh_frames": 0}, {"fragile_refresh_frames": 1.5}, {"fragile_band": (0.8, 0.2)},
                                    {"max_drift": -1}, {"change_threshold": float("nan")},
                                    {"motion_width": 8}, {"max_fresh": 0}, {"budget_ms": 0}])
def test_bad_policies_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ReusePolicy(**kwargs)
