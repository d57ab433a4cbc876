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
from inspector.live.flagging import FlagPolicy, Flagger, thumbnail, thumbnail_distance
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


# --------------------------------------------------------------------------- the rules

def test_confident_uncertain_and_nothing(views):
    f = Flagger(FlagPolicy(min_interval_s=0))
    assert f.decide(views[0], CONFIDENT, 0.0) == "crack"
    assert f.decide(views[1], UNCERTAIN, 1.0) == "uncertain"
    assert f.decide(views[2], CLEAN, 2.0) is None


def test_crack_wins_over_uncertain(views):
    f = Flagger(FlagPolicy(min_interval_s=0))
    assert f.decide(views[0], result(0.5, 0.97), 0.0) == "crack"


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


def test_auto_off_flags_only_manual(views):
    f = Flagger(FlagPolicy(auto=False))
    assert f.decide(views[0], CONFIDENT, 0.0) is None
    assert f.decide(views[0], CONFIDENT, 100.0, manual=True) == "manual"


# --------------------------------------------------------------------------- de-duplication

def test_min_interval_between_automatic_flags(views):
    f = Flagger(FlagPolicy(min_interval_s=2.0))
    assert f.decide(views[0], CONFIDENT, 10.0) == "crack"
    assert f.decide(views[1], CONFIDENT, 11.0) is None      # a new view, but too soon
    assert f.decide(views[2], UNCERTAIN, 11.99) is None
    assert f.decide(views[3], CONFIDENT, 12.0) == "crack"   # exactly the interval later


def test_camera_held_still_on_a_crack_flags_once(views):
    """10 s at 30 fps on one crack, noise and wobble in every frame: one flag, not five."""
    rng = np.random.default_rng(0)
    f = Flagger()
    flags = [f.decide(jitter(views[0], rng), CONFIDENT, i / 30) for i in range(300)]
    assert [r for r in flags if r] == ["crack"]
    assert flags[0] == "crack"


def test_a_different_view_after_the_interval_flags_again(views):
    rng = np.random.default_rng(1)
    f = Flagger()
    assert f.decide(views[0], CONFIDENT, 0.0) == "crack"
    assert f.decide(jitter(views[0], rng), CONFIDENT, 5.0) is None  # same view, long after
    assert f.decide(views[1], CONFIDENT, 5.0) == "crack"            # another crack
    assert f.decide(jitter(views[1], rng), UNCERTAIN, 9.0) is None
    assert f.decide(views[2], UNCERTAIN, 9.0) == "uncertain"


def test_memory_is_limited_to_the_last_flags(views):
    f = Flagger(FlagPolicy(min_interval_s=0, duplicate_memory=2))
    for i, v in enumerate(views[:3]):
        assert f.decide(v, CONFIDENT, float(i)) == "crack"
    assert f.decide(views[0], CONFIDENT, 3.0) == "crack"  # forgotten: two newer flags since
    assert f.decide(views[2], CONFIDENT, 4.0) is None     # still remembered


def test_every_view_of_the_session_is_remembered_and_the_counts_say_why(views):
    """A walk past the same wall again: the views flagged on the first pass are not flagged on
    the second, however many flags lie between (issue 22: only the last 8 were compared)."""
    rng = np.random.default_rng(2)
    f = Flagger(FlagPolicy(min_interval_s=1.0))
    t = 0.0
    for _ in range(3):                                   # three passes over the eight views
        for v in views:
            t += 5.0
            f.decide(jitter(v, rng), CONFIDENT, t)
    assert f.stats.kept == 8 and f.stats.same_view == 16 and f.stats.too_soon == 0
    assert f.decide(real("crack", 900), CONFIDENT, t + 5) == "crack"           # a new view
    assert f.decide(real("crack", 1000), CONFIDENT, t + 5.5) is None and f.stats.too_soon == 1
    assert f.stats.kept == 9 and f.stats.suppressed == 17
    f.decide(views[0], CONFIDENT, t + 9, manual=True)
    assert f.stats.manual == 1
    f.reset()
    assert f.stats.kept == 0 and f.decide(views[3], CONFIDENT, t + 20) == "crack"


def test_exposure_change_is_still_the_same_view(views):
    f = Flagger(FlagPolicy(min_interval_s=0))
    assert f.decide(views[0], CONFIDENT, 0.0) == "crack"
    darker = (views[0].astype(np.float32) * 0.7).astype(np.uint8)
    assert f.decide(darker, CONFIDENT, 1.0) is None


def test_manual_always_flags_and_is_remembered(views):
    f = Flagger()
    assert f.decide(views[0], CONFIDENT, 0.0) == "crack"
    # the user asks: flagged although it is the same view at the same moment, and again
    assert f.decide(views[0], CONFIDENT, 0.0, manual=True) == "manual"
    assert f.decide(views[0], CLEAN, 0.1, manual=True) == "manual"
    # a manual flag of a view stops an automatic flag of the same view later
    assert f.decide(views[1], CLEAN, 1.0, manual=True) == "manual"
    assert f.decide(views[1], CONFIDENT, 10.0) is None
    assert f.decide(views[2], CONFIDENT, 10.0) == "crack"


def test_manual_does_not_restart_the_automatic_interval(views):
    f = Flagger()
    assert f.decide(views[0], CLEAN, 0.0, manual=True) == "manual"
    assert f.decide(views[1], CONFIDENT, 0.1) == "crack"


def test_reset_forgets(views):
    f = Flagger()
    assert f.decide(views[0], CONFIDENT, 0.0) == "crack"
    f.reset()
    assert f.decide(views[0], CONFIDENT, 0.1) == "crack"


def test_swapping_the_policy_keeps_the_memory(views):
    f = Flagger()
    assert f.decide(views[0], result(0.8), 0.0) is None
    f.policy = FlagPolicy(crack_threshold=0.75)
    assert f.decide(views[0], result(0.8), 0.1) == "crack"
    assert f.decide(views[0], result(0.8), 10.0) is None


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
    f = Flagger(FlagPolicy(min_interval_s=0))
    assert f.decide(grey, CONFIDENT, 0.0) == "crack"
    assert f.decide(grey, CONFIDENT, 1.0) is None


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
                                 np.zeros((0, 10, 3), np.uint8), "frame"])
def test_bad_frames_are_refused(bad):
    with pytest.raises(ValueError, match="uint8 H×W×3"):
        Flagger().decide(bad, CONFIDENT, 0.0)


@pytest.mark.parametrize("now", [float("nan"), None, True, "1.0"])
def test_bad_time_is_refused(now, views):
    with pytest.raises(ValueError, match="now"):
        Flagger().decide(views[0], CONFIDENT, now)


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
    ({"min_interval_s": -1.0}, "non-negative"),
    ({"min_interval_s": float("inf")}, "non-negative"),
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
    p = FlagPolicy(crack_threshold=1, uncertain_band=[0, 1], min_interval_s=3)
    assert p.uncertain_band == (0.0, 1.0) and isinstance(p.crack_threshold, float)
    assert p == FlagPolicy(crack_threshold=1.0, uncertain_band=(0.0, 1.0), min_interval_s=3.0)
    with pytest.raises(TypeError):
        Flagger({"crack_threshold": 0.9})


def test_zero_memory_or_distance_disables_the_view_check(views):
    for policy in (FlagPolicy(duplicate_memory=0), FlagPolicy(duplicate_distance=0.0, same_place_peak=None)):
        f = Flagger(policy)
        assert f.decide(views[0], CONFIDENT, 0.0) == "crack"
        assert f.decide(views[0], CONFIDENT, 2.0) == "crack"
    f = Flagger(FlagPolicy(duplicate_distance=0.0))          # the place check alone still sees it
    assert f.decide(views[0], CONFIDENT, 0.0) == "crack" and f.decide(views[0], CONFIDENT, 2.0) is None


def test_the_same_place_framed_differently_is_not_flagged_again(views):
    """Walking past again the camera is never framed as before: a window shifted by a fifth of
    the frame over the same wall is the same place; another wall is not."""
    wall = np.ascontiguousarray(np.concatenate([views[0], views[1]], axis=1))
    f = Flagger(FlagPolicy(min_interval_s=0))
    assert f.decide(np.ascontiguousarray(wall[:, :227]), CONFIDENT, 0.0) == "crack"
    assert f.decide(np.ascontiguousarray(wall[:, 45:272]), CONFIDENT, 1.0) is None
    assert f.stats.same_view == 1
    for i, v in enumerate(views[2:], start=2):              # six other walls: each flagged
        assert f.decide(v, CONFIDENT, float(i)) == "crack", i
    with pytest.raises(ValueError, match="same_place_peak"):
        FlagPolicy(same_place_peak=0.0)


# --------------------------------------------------------------------------- with the shipped model

def test_shipped_engine_results_drive_the_rules(engine):
    crack = np.vstack([np.hstack([real("crack", 0), real("crack", 500)]),
                       np.hstack([real("crack", 1000), real("crack", 1500)])])
    r = engine.inspect(crack)
    assert FlagPolicy().reason_for(r) == "crack"
    assert Flagger().decide(crack, r, 0.0) == "crack"


def test_sample_video_held_still_on_a_crack_gives_one_flag(engine):
    """The shipped video's 3 s on one crack, every 3rd frame through the shipped model."""
    meta = json.loads(paths.sample_video().with_suffix(".json").read_text(encoding="utf-8"))
    first, last = meta["segments"]["held still on one crack"]
    cap = cv2.VideoCapture(str(paths.sample_video()))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, first)
        f = Flagger(FlagPolicy(min_interval_s=0.5))
        reasons = []
        for i in range(first, last + 1):
            ok, bgr = cap.read()
            assert ok
            if (i - first) % 3 == 0:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                reasons.append(f.decide(rgb, engine.inspect(rgb), i / meta["fps"]))
    finally:
        cap.release()
    assert len(reasons) == 30
    assert [r for r in reasons if r] == ["crack"]
