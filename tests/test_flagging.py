"""inspector.live.flagging: the automatic rules, the manual button and de-duplication.

Frames are real wall photographs (Özgenel, ``$CRACK_DATA_DIR``) and the shipped sample video;
the results come from the shipped engine where the model matters, and are built with chosen
tile probabilities where a rule's boundary is under test.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector import paths
from inspector.edge.engine import FrameResult, TileResult
from inspector.live.flagging import Flagger, FlagPolicy, FlagStats, thumbnail, thumbnail_distance
from support import engine  # noqa: F401  (fixtures)

DATA = Path(os.environ["CRACK_DATA_DIR"]) / "ozgenel_ccic_subset"


def real(kind: str, i: int) -> np.ndarray:
    files = sorted((DATA / kind).glob("*.jpg"))
    return cv2.cvtColor(cv2.imread(str(files[i])), cv2.COLOR_BGR2RGB)


def result(*probs: float) -> FrameResult:
    """A FrameResult whose tiles have these crack probabilities (one tile per value)."""
    tiles = [TileResult(box=(i * 10, 0, i * 10 + 10, 10), probs=np.array([1 - p, p], np.float32),
                        crack_prob=float(p), cam=np.zeros((3, 3), np.float32)) for i, p in enumerate(probs)]
    return FrameResult(tiles=tiles, heatmap=np.zeros((10, 10 * max(1, len(probs))), np.float32),
                       crack_prob_max=max(probs, default=0.0))


CONFIDENT, UNCERTAIN, CLEAN = result(0.1, 0.95, 0.2), result(0.1, 0.5, 0.2), result(0.1, 0.2, 0.3)


def jitter(rgb: np.ndarray, rng: np.random.Generator, sigma: float = 3.0, shift: int = 1) -> np.ndarray:
    """The same view again: sensor noise and a hand-held wobble of a pixel or so."""
    dx, dy = rng.integers(-shift, shift + 1, size=2)
    moved = np.roll(rgb, (int(dy), int(dx)), axis=(0, 1)).astype(np.float32)
    return np.clip(moved + rng.normal(0, sigma, rgb.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def views() -> list[np.ndarray]:
    """Eight different real views of cracked walls."""
    return [real("crack", i * 97) for i in range(8)]


def now_kept(f: Flagger, frame: np.ndarray, res: FrameResult, t: float) -> str | None:
    """Offer one frame to a flagger whose windows are 0 s long: the reason if it was kept at once."""
    flags = f.offer(frame, res, t, item=t)
    assert all(flag.item == t for flag in flags)
    return flags[0].reason if flags else None


def walk(f: Flagger, frames) -> list:
    """Offer (frame, result, time, item) in order, then flush: the items kept, with their reasons."""
    flags = []
    for frame, res, t, item in frames:
        flags += f.offer(frame, res, t, item)
    return [(flag.item, flag.reason) for flag in flags + f.flush()]


# --------------------------------------------------------------------------- the rules

def test_confident_uncertain_and_nothing(views):
    f = Flagger(FlagPolicy(window_s=0, budget_s=0))
    assert now_kept(f, views[0], CONFIDENT, 0.0) == "crack"
    assert now_kept(f, views[1], UNCERTAIN, 1.0) == "uncertain"
    assert now_kept(f, views[2], CLEAN, 2.0) is None
    assert f.stats == FlagStats(kept=2)


def test_crack_wins_over_uncertain(views):
    f = Flagger(FlagPolicy(window_s=0, budget_s=0))
    assert now_kept(f, views[0], result(0.5, 0.97), 0.0) == "crack"


@pytest.mark.parametrize("p, reason", [(0.90, "crack"), (0.8999, None), (0.40, "uncertain"), (0.60, "uncertain"),
                                       (0.3999, None), (0.6001, None), (1.0, "crack"), (0.0, None)])
def test_boundaries_are_inclusive(p, reason):
    assert FlagPolicy().reason_for(result(p)) == reason


def test_band_reaching_above_the_threshold_is_allowed_and_crack_wins():
    policy = FlagPolicy(crack_threshold=0.5, uncertain_band=(0.4, 0.6))
    assert policy.reason_for(result(0.55)) == "crack"
    assert policy.reason_for(result(0.45)) == "uncertain"


def test_no_tiles_uses_the_frame_maximum():
    empty = FrameResult(tiles=[], heatmap=np.zeros((4, 4), np.float32), crack_prob_max=0.93)
    assert FlagPolicy().reason_for(empty) == "crack"
    assert Flagger().score(empty) == pytest.approx(0.93)


def test_auto_off_flags_only_manual(views):
    f = Flagger(FlagPolicy(auto=False, window_s=0, budget_s=0))
    assert now_kept(f, views[0], CONFIDENT, 0.0) is None and not f.pending
    assert f.manual(views[0]) == "manual"
    assert f.stats == FlagStats(manual=1)


# --------------------------------------------------------------------------- the rate budget

def test_score_counts_what_a_frame_would_teach():
    f = Flagger()
    assert f.score(result(0.1, 0.95, 0.2)) == pytest.approx(0.95)
    assert f.score(result(0.95, 0.97, 0.2)) == pytest.approx(1.92)       # more of the crack
    assert f.score(result(0.5)) == pytest.approx(1.0) and f.score(result(0.45)) == pytest.approx(0.9)
    assert f.score(result(0.3, 0.7, 0.89)) == 0.0                        # no tile meets a rule


def test_the_most_informative_frame_of_a_window_is_kept_not_the_first(views):
    """A sweep over three new views within one 2 s window: the one that shows most (two crack
    tiles) is kept, although it came second; one flag for the window, the others outranked."""
    f = Flagger(FlagPolicy(window_s=2.0))
    assert f.offer(views[0], result(0.1, 0.91), 10.0, "first") == [] and f.pending
    assert f.offer(views[1], result(0.95, 0.97), 10.5, "second") == []
    assert f.offer(views[2], UNCERTAIN, 11.9, "third") == []
    flags = f.offer(views[3], CLEAN, 12.0, "after")          # the window has ended: its best
    assert [(g.item, g.reason, g.at) for g in flags] == [("second", "crack", 10.5)]
    assert flags[0].score == pytest.approx(1.92, rel=0.05)   # new: novelty near 1
    assert f.stats == FlagStats(kept=1, outranked=2) and not f.pending


def test_one_flag_per_window_and_the_next_window_opens_with_the_next_candidate(views):
    f = Flagger(FlagPolicy(window_s=2.0))
    kept = walk(f, [(views[0], CONFIDENT, 10.0, 0), (views[1], CONFIDENT, 11.0, 1), (views[2], UNCERTAIN, 11.99, 2),
                    (views[3], CONFIDENT, 12.0, 3), (views[4], CLEAN, 13.0, 4), (views[5], UNCERTAIN, 30.0, 5)])
    # window [10, 12): 0 and 1 are confident (0.95), 2 sits at 0.5, the least sure, and wins;
    # [12, 14): 3; [30, 32): 5, flushed
    assert kept == [(2, "uncertain"), (3, "crack"), (5, "uncertain")]
    assert f.stats.outranked == 2


def test_new_wall_wins_over_a_place_half_flagged(views):
    """Same value, but one frame still shows much of a place already flagged (a phase-correlation
    peak of 0.30 where unrelated views peak at about 0.1): the new wall is kept, whichever came
    first. (A veto at 0.5 here, so the overlapping frame is a candidate at all.)"""
    wall = np.ascontiguousarray(np.concatenate([views[0], views[1]], axis=1))
    overlap = np.ascontiguousarray(wall[:, 80:307])
    for order in ((overlap, views[2]), (views[2], overlap)):
        f = Flagger(FlagPolicy(window_s=1.0, same_place_peak=0.5))
        assert walk(f, [(np.ascontiguousarray(wall[:, :227]), CONFIDENT, 0.0, "flagged")]) == [("flagged", "crack")]
        items = ["overlap" if v is overlap else "new" for v in order]
        assert walk(f, [(order[0], CONFIDENT, 5.0, items[0]), (order[1], CONFIDENT, 5.5, items[1])]) \
            == [("new", "crack")]


def test_due_closes_a_window_without_frames_and_flush_at_once(views):
    f = Flagger(FlagPolicy(window_s=2.0))
    assert f.offer(views[0], CONFIDENT, 0.0, "a") == []
    assert f.due(1.9) == [] and f.pending
    assert [g.item for g in f.due(2.0)] == ["a"] and not f.pending
    assert f.due(100.0) == [] and f.flush() == []
    assert f.offer(views[1], CONFIDENT, 3.0, "b") == []
    assert [g.item for g in f.flush()] == ["b"] and f.stats.kept == 2


def test_a_manual_flag_during_the_window_drops_the_same_view(views):
    f = Flagger(FlagPolicy(window_s=2.0))
    assert f.offer(views[0], CONFIDENT, 0.0, "auto") == []
    f.manual(views[0])
    assert f.flush() == [] and f.stats == FlagStats(same_view=1, manual=1)


def test_a_candidate_that_cannot_win_is_not_compared(views, monkeypatch):
    f = Flagger(FlagPolicy(window_s=2.0))
    f.offer(views[0], result(0.95, 0.97), 0.0, "best")
    monkeypatch.setattr("inspector.live.flagging.thumbnail", lambda *_: pytest.fail("compared"))
    assert f.offer(views[1], result(0.91), 0.5, "weaker") == [] and f.stats.outranked == 1


def test_the_budget_lets_a_burst_through_then_keeps_the_best_while_it_waits(views):
    """Six new views a second apart. The bucket (2 tokens, one more per 10 s) lets the first two
    windows through at once; the third window, opened at 2 s, waits for a token (at 11 s) while
    views 3-5 compete in it, and the most informative of the wait is kept, not the first."""
    f = Flagger(FlagPolicy(window_s=0.5, budget_s=10.0, burst=2))
    probs = [(0.91,), (0.91,), (0.91,), (0.91,), (0.95, 0.97), (0.91,)]
    kept = []
    for i, (v, p) in enumerate(zip(views, probs)):
        kept += [(flag.item, flag.at) for flag in f.offer(v, result(*p), float(i), i)]
    assert kept == [(0, 0.0), (1, 1.0)]              # the burst: two flags a second apart
    assert f.due(10.9) == [] and f.pending           # 0.1 + 8.9 / 10 tokens: not yet
    assert [(g.item, g.reason) for g in f.due(11.0)] == [(4, "crack")]
    assert f.stats == FlagStats(kept=3, outranked=3)


def test_without_a_budget_every_window_keeps_its_best(views):
    f = Flagger(FlagPolicy(window_s=0.5, budget_s=0, burst=1))
    kept = walk(f, [(v, CONFIDENT, float(i), i) for i, v in enumerate(views)])
    assert [item for item, _ in kept] == list(range(8))


# --------------------------------------------------------------------------- de-duplication

def test_camera_held_still_on_a_crack_flags_once(views):
    """10 s at 30 fps on one crack, noise and wobble in every frame: one flag, not five."""
    rng = np.random.default_rng(0)
    f = Flagger()
    kept = walk(f, [(jitter(views[0], rng), CONFIDENT, i / 30, i) for i in range(300)])
    assert len(kept) == 1 and kept[0][1] == "crack" and kept[0][0] < 60   # from the first window
    assert f.stats.same_view + f.stats.outranked == 299


def test_the_same_view_later_is_not_flagged_again_another_is(views):
    rng = np.random.default_rng(1)
    f = Flagger(FlagPolicy(window_s=0, budget_s=0))
    assert now_kept(f, views[0], CONFIDENT, 0.0) == "crack"
    assert now_kept(f, jitter(views[0], rng), CONFIDENT, 5.0) is None   # same view, long after
    assert now_kept(f, views[1], CONFIDENT, 5.0) == "crack"             # another crack
    assert now_kept(f, jitter(views[1], rng), UNCERTAIN, 9.0) is None
    assert now_kept(f, views[2], UNCERTAIN, 9.0) == "uncertain"


def test_memory_is_limited_to_the_last_flags(views):
    f = Flagger(FlagPolicy(window_s=0, budget_s=0, duplicate_memory=2))
    for i, v in enumerate(views[:3]):
        assert now_kept(f, v, CONFIDENT, float(i)) == "crack"
    assert now_kept(f, views[0], CONFIDENT, 3.0) == "crack"  # forgotten: two newer flags since
    assert now_kept(f, views[2], CONFIDENT, 4.0) is None     # still remembered


def test_every_view_of_the_session_is_remembered_and_the_counts_say_why(views):
    """A walk past the same wall again: the views flagged on the first pass are not flagged on
    the second, however many flags lie between (issue 22: only the last 8 were compared)."""
    rng = np.random.default_rng(2)
    f = Flagger(FlagPolicy(window_s=1.0))
    frames, t = [], 0.0
    for _ in range(3):                                   # three passes over the eight views
        for v in views:
            t += 5.0
            frames.append((jitter(v, rng), CONFIDENT, t, t))
    assert len(walk(f, frames)) == 8
    assert f.stats == FlagStats(kept=8, same_view=16)
    assert walk(f, [(real("crack", 900), CONFIDENT, t + 5, "new"), (real("crack", 1000), result(0.91), t + 5.5, "less")]) \
        == [("new", "crack")]
    assert f.stats.kept == 9 and f.stats.outranked == 1 and f.stats.suppressed == 17
    f.manual(views[0])
    assert f.stats.manual == 1
    f.reset()
    assert f.stats == FlagStats() and walk(f, [(views[3], CONFIDENT, t + 20, "again")]) == [("again", "crack")]


def test_exposure_change_is_still_the_same_view(views):
    f = Flagger(FlagPolicy(window_s=0, budget_s=0))
    assert now_kept(f, views[0], CONFIDENT, 0.0) == "crack"
    darker = (views[0].astype(np.float32) * 0.7).astype(np.uint8)
    assert now_kept(f, darker, CONFIDENT, 1.0) is None


def test_a_manual_flag_stops_automatic_flags_of_its_view(views):
    f = Flagger(FlagPolicy(window_s=0, budget_s=0))
    assert now_kept(f, views[0], CONFIDENT, 0.0) == "crack"
    # the user asks: flagged although it is the same view at the same moment, and again
    assert f.manual(views[0]) == "manual" and f.manual(views[0]) == "manual"
    assert f.manual(views[1]) == "manual"
    assert now_kept(f, views[1], CONFIDENT, 10.0) is None
    assert now_kept(f, views[2], CONFIDENT, 10.0) == "crack"
    assert f.stats == FlagStats(kept=2, same_view=1, manual=3)


def test_manual_does_not_open_or_close_a_window(views):
    f = Flagger(FlagPolicy(window_s=2.0))
    f.manual(views[0])
    assert not f.pending
    assert f.offer(views[1], CONFIDENT, 0.1, "auto") == [] and f.pending
    f.manual(views[2])
    assert [g.item for g in f.due(2.1)] == ["auto"]


def test_reset_forgets_views_and_the_open_window(views):
    f = Flagger()
    assert walk(f, [(views[0], CONFIDENT, 0.0, "a")]) == [("a", "crack")]
    f.offer(views[1], CONFIDENT, 5.0, "b")
    f.reset()
    assert not f.pending and walk(f, [(views[0], CONFIDENT, 6.0, "c")]) == [("c", "crack")]


def test_swapping_the_policy_keeps_the_memory(views):
    f = Flagger(FlagPolicy(window_s=0, budget_s=0))
    assert now_kept(f, views[0], result(0.8), 0.0) is None
    f.policy = FlagPolicy(crack_threshold=0.75, window_s=0, budget_s=0)
    assert now_kept(f, views[0], result(0.8), 0.1) == "crack"
    assert now_kept(f, views[0], result(0.8), 10.0) is None


# --------------------------------------------------------------------------- thumbnails

def test_thumbnail_distance_on_real_views(views):
    rng = np.random.default_rng(2)
    a = thumbnail(views[0])
    assert a.shape == (24, 32) and a.dtype == np.float32
    assert abs(float(a.mean())) < 1e-4 and abs(float(a.std()) - 1) < 1e-3
    assert thumbnail_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert thumbnail_distance(a, thumbnail(jitter(views[0], rng))) < 0.02
    others = [thumbnail_distance(a, thumbnail(v)) for v in views[1:]]
    assert min(others) > 0.06
    assert thumbnail_distance(a, -a) == pytest.approx(1.0, abs=1e-6)


def test_featureless_frames():
    grey = np.full((48, 64, 3), 128, np.uint8)
    assert thumbnail(grey) is None
    assert thumbnail_distance(None, None) == 0.0
    assert thumbnail_distance(None, thumbnail(real("crack", 0))) == 0.5
    f = Flagger(FlagPolicy(window_s=0, budget_s=0))
    assert now_kept(f, grey, CONFIDENT, 0.0) == "crack"
    assert now_kept(f, grey, CONFIDENT, 1.0) is None


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
                                 np.zeros((0, 10, 3), np.uint8), "frame"])
def test_bad_frames_are_refused(bad):
    with pytest.raises(ValueError, match="uint8 H×W×3"):
        Flagger().offer(bad, CONFIDENT, 0.0)
    with pytest.raises(ValueError, match="uint8 H×W×3"):
        Flagger().manual(bad)


@pytest.mark.parametrize("now", [float("nan"), None, True, "1.0"])
def test_bad_time_is_refused(now, views):
    with pytest.raises(ValueError, match="now"):
        Flagger().offer(views[0], CONFIDENT, now)
    with pytest.raises(ValueError, match="now"):
        Flagger().due(now)


# --------------------------------------------------------------------------- the policy

@pytest.mark.parametrize("kwargs, words", [
    ({"crack_threshold": 0.0}, "above 0"),
    ({"crack_threshold": 1.2}, r"\[0, 1\]"),
    ({"crack_threshold": float("nan")}, "number"),
    ({"uncertain_band": (0.6, 0.4)}, "low < high"),
    ({"uncertain_band": (0.5, 0.5)}, "low < high"),
    ({"uncertain_band": (-0.1, 0.5)}, r"\[0, 1\]"),
    ({"uncertain_band": (0.4, 1.5)}, r"\[0, 1\]"),
    ({"uncertain_band": (0.4,)}, "low, high"),
    ({"uncertain_band": 0.5}, "low, high"),
    ({"window_s": -1.0}, "window_s must be a non-negative"),
    ({"window_s": float("inf")}, "non-negative"),
    ({"budget_s": -0.5}, "budget_s must be a non-negative"),
    ({"budget_s": "2"}, "budget_s"),
    ({"burst": 0}, "burst must be a positive"),
    ({"burst": 2.5}, "burst"),
    ({"duplicate_distance": -0.1}, r"\[0, 1\]"),
    ({"duplicate_memory": -1}, "non-negative integer"),
    ({"duplicate_memory": 2.5}, "non-negative integer"),
    ({"duplicate_memory": True}, "non-negative integer"),
    ({"auto": "yes"}, "True or False"),
])
def test_policy_validation(kwargs, words):
    with pytest.raises(ValueError, match=words):
        FlagPolicy(**kwargs)


def test_policy_normalises_types():
    p = FlagPolicy(crack_threshold=1, uncertain_band=[0, 1], window_s=3)
    assert p.uncertain_band == (0.0, 1.0) and isinstance(p.crack_threshold, float)
    assert p == FlagPolicy(crack_threshold=1.0, uncertain_band=(0.0, 1.0), window_s=3.0)
    with pytest.raises(TypeError):
        Flagger({"crack_threshold": 0.9})


def test_zero_memory_or_distance_disables_the_view_check(views):
    for policy in (FlagPolicy(duplicate_memory=0, window_s=0, budget_s=0),
                   FlagPolicy(duplicate_distance=0.0, same_place_peak=None, window_s=0, budget_s=0)):
        f = Flagger(policy)
        assert now_kept(f, views[0], CONFIDENT, 0.0) == "crack"
        assert now_kept(f, views[0], CONFIDENT, 2.0) == "crack"
    f = Flagger(FlagPolicy(duplicate_distance=0.0, window_s=0, budget_s=0))   # the place check alone still sees it
    assert now_kept(f, views[0], CONFIDENT, 0.0) == "crack" and now_kept(f, views[0], CONFIDENT, 2.0) is None


def test_the_same_place_framed_differently_is_not_flagged_again(views):
    """Walking past again the camera is never framed as before: a window shifted by a fifth of
    the frame over the same wall is the same place; another wall is not."""
    wall = np.ascontiguousarray(np.concatenate([views[0], views[1]], axis=1))
    f = Flagger(FlagPolicy(window_s=0, budget_s=0))
    assert now_kept(f, np.ascontiguousarray(wall[:, :227]), CONFIDENT, 0.0) == "crack"
    assert now_kept(f, np.ascontiguousarray(wall[:, 45:272]), CONFIDENT, 1.0) is None
    assert f.stats.same_view == 1
    for i, v in enumerate(views[2:], start=2):              # six other walls: each flagged
        assert now_kept(f, v, CONFIDENT, float(i)) == "crack", i
    with pytest.raises(ValueError, match="same_place_peak"):
        FlagPolicy(same_place_peak=0.0)


# --------------------------------------------------------------------------- with the shipped model

def test_shipped_engine_results_drive_the_rules(engine):
    crack = np.vstack([np.hstack([real("crack", 0), real("crack", 500)]),
                       np.hstack([real("crack", 1000), real("crack", 1500)])])
    r = engine.inspect(crack)
    assert FlagPolicy().reason_for(r) == "crack"
    assert walk(Flagger(), [(crack, r, 0.0, "frame")]) == [("frame", "crack")]


def test_sample_video_held_still_on_a_crack_gives_one_flag(engine):
    """The shipped video's 3 s on one crack, every 3rd frame through the shipped model."""
    meta = json.loads(paths.sample_video().with_suffix(".json").read_text(encoding="utf-8"))
    first, last = meta["segments"]["held still on one crack"]
    cap = cv2.VideoCapture(str(paths.sample_video()))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, first)
        f = Flagger(FlagPolicy(window_s=0.5))
        frames = []
        for i in range(first, last + 1):
            ok, bgr = cap.read()
            assert ok
            if (i - first) % 3 == 0:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                frames.append((rgb, engine.inspect(rgb), i / meta["fps"], i))
    finally:
        cap.release()
    assert len(frames) == 30
    assert [reason for _, reason in walk(f, frames)] == ["crack"]


def test_a_slow_pan_off_a_flagged_place_is_flagged_when_it_shows_new_wall(views):
    """A pan 5 px a frame from a flagged view onto new wall: each frame shows the place of the
    one before, but each is compared with the flags themselves, so the new wall is flagged once
    the frame has left about half of the flagged place."""
    wall = np.ascontiguousarray(np.concatenate(views[:3], axis=1))
    f = Flagger(FlagPolicy(window_s=0, budget_s=0))
    f.remember(np.ascontiguousarray(wall[:, :227]))
    first = None
    for x in range(5, 454, 5):
        if now_kept(f, np.ascontiguousarray(wall[:, x:x + 227]), CONFIDENT, x / 150) and first is None:
            first = x
    assert first is not None and 80 <= first <= 160, first
