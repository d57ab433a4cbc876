"""Augmentation: exact identity, reproducibility, real flips, and the spread of draws."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from distill.data.augment import (
    IDENTITY,
    AugmentConfig,
    AugmentParams,
    apply,
    draw_params,
    resize_square,
)
from distill.data.imageio import load_rgb

DATA = Path(os.environ["CRACK_DATA_DIR"])


@pytest.fixture(scope="module")
def patch() -> np.ndarray:
    return load_rgb(DATA / "ozgenel_ccic_subset" / "crack" / "03369.jpg")  # 227 x 227


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return load_rgb(DATA / "crackforest_cfd" / "images" / "001.jpg")  # 320 x 480


def test_identity_is_exactly_a_plain_resize(patch, frame):
    assert IDENTITY.key() == "id" and AugmentParams().key() == "id"
    out = apply(patch, IDENTITY, 160)
    assert out.dtype == np.uint8 and out.shape == (160, 160, 3)
    assert np.array_equal(out, cv2.resize(patch, (160, 160), interpolation=cv2.INTER_AREA))
    assert np.array_equal(apply(patch, IDENTITY, 227), patch)
    up = apply(patch, IDENTITY, 300)
    assert np.array_equal(up, cv2.resize(patch, (300, 300), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(apply(frame, IDENTITY, 96), resize_square(frame, 96))


def test_same_params_same_output_and_keys_are_stable(patch):
    params = AugmentParams(True, False, 12.345, 1.1, 0.9, 0.05, 0.03)
    assert params.angle == 12.35 and params.zoom == 1.1  # rounded on construction
    assert params == AugmentParams(True, False, 12.3499, 1.1, 0.9, 0.05, 0.03)
    assert params.key() == "h1v0r12.35z1.1c0.9b0.05n0.03"
    a, b = apply(patch, params, 128), apply(patch.copy(), params, 128)
    assert np.array_equal(a, b)
    other_noise = AugmentParams(True, False, 12.35, 1.1, 0.9, 0.06, 0.03)
    assert not np.array_equal(a, apply(patch, other_noise, 128))
    assert AugmentParams(angle=-0.001).key() == "id"  # rounds to 0, not "-0"


def test_flips_are_real_flips(patch):
    assert np.array_equal(apply(patch, AugmentParams(hflip=True), 227), patch[:, ::-1])
    assert np.array_equal(apply(patch, AugmentParams(vflip=True), 227), patch[::-1])
    both = AugmentParams(hflip=True, vflip=True)
    assert np.array_equal(apply(patch, both, 227), patch[::-1, ::-1])
    assert not np.array_equal(patch[:, ::-1], patch)


def test_rotation_and_zoom_geometry(patch):
    rot = apply(patch, AugmentParams(angle=90.0), 227).astype(int)
    assert np.abs(rot - np.rot90(patch, 1)).max() <= 2  # counter-clockwise, about the centre
    zoomed = apply(patch, AugmentParams(zoom=2.0), 114).astype(int)
    center = patch[57:170, 57:170]  # the middle half, seen at the same scale
    expected = cv2.resize(center, (114, 114), interpolation=cv2.INTER_LINEAR).astype(int)
    assert np.abs(zoomed - expected).mean() < 6
    out = apply(patch, AugmentParams(angle=30.0, zoom=0.8), 227)
    # Reflected border: the corners hold wall texture, not black fill.
    assert out[:8, :8].mean() > 0.5 * patch.mean() and out[-8:, -8:].mean() > 0.5 * patch.mean()


def test_photometric_changes(patch):
    base = apply(patch, IDENTITY, 128).astype(float)
    mid = np.full((128, 128, 3), 100, np.uint8)
    bright = apply(mid, AugmentParams(brightness=0.1), 128).astype(float)
    assert np.allclose(bright, 100 + 25.5, atol=0.6)
    low = apply(patch, AugmentParams(contrast=0.5), 128).astype(float)
    assert abs(low.std() - 0.5 * base.std()) < 1.0
    assert abs(low.mean() - base.mean()) < 1.0
    noisy = apply(mid, AugmentParams(noise_std=0.03), 128).astype(float)
    assert abs((noisy - 100).std() - 0.03 * 255) < 0.3
    assert abs((noisy - 100).mean()) < 0.3


def test_draws_are_reproducible_and_cover_every_transform():
    cfg = AugmentConfig()
    assert draw_params(cfg, np.random.default_rng(5)) == draw_params(cfg, np.random.default_rng(5))
    rng = np.random.default_rng(0)
    draws = [draw_params(cfg, rng) for _ in range(2000)]
    frac = lambda f: np.mean([f(p) for p in draws])  # noqa: E731
    assert 0.45 < frac(lambda p: p.hflip) < 0.55
    assert 0.45 < frac(lambda p: p.vflip) < 0.55
    assert 0.45 < frac(lambda p: p.noise_std > 0) < 0.55
    assert {p.noise_std for p in draws} == {0.0, 0.03}
    angles = np.array([p.angle for p in draws])
    assert angles.min() < -28 and angles.max() > 28 and abs(angles.mean()) < 2
    zooms = np.array([p.zoom for p in draws])
    assert zooms.min() >= 0.8 and zooms.max() <= 1.25 and zooms.min() < 0.82 and zooms.max() > 1.22
    assert 0.4 < np.mean(zooms > 1.0) < 0.6  # log-uniform: zoom in as often as out
    contrasts = np.array([p.contrast for p in draws])
    assert contrasts.min() < 0.72 and contrasts.max() > 1.28
    bright = np.array([p.brightness for p in draws])
    assert bright.min() < -0.18 and bright.max() > 0.18
    assert len({p.key() for p in draws}) > 1990


def test_disabled_config_always_draws_identity():
    off = AugmentConfig(0, 0, 0, (1.0, 1.0), (1.0, 1.0), 0, 0, 0)
    rng = np.random.default_rng(0)
    assert all(draw_params(off, rng) == IDENTITY for _ in range(50))
    with pytest.raises(ValueError):
        AugmentConfig(hflip=1.5)
    with pytest.raises(ValueError):
        apply(np.zeros((8, 8), np.uint8), IDENTITY, 4)
