"""Aggressive, reproducible augmentation for distillation.

Knowledge distillation works best when the student sees many variations of
each training image and matches the teacher's output on exactly the same
variation ("function matching"). Flips, rotation, zoom, contrast, brightness
and Gaussian noise are used, as in the source paper; evaluation uses none.

Every random choice is drawn up front into an :class:`AugmentParams`
(rounded, hashable) and :func:`apply` is a pure function of the image and the
params: noise comes from a generator seeded by ``params.key()``. So
``(content hash, params.key(), size)`` identifies an augmented image, which
lets teacher outputs be cached and checked.

Order of operations: flips, then rotation + zoom about the centre
(``cv2.warpAffine``, bilinear, reflected border), then resize to the output
square (``INTER_AREA`` when shrinking, bilinear otherwise; a non-square input
is stretched, not cropped, so no crack is cut away), then contrast about the
image mean, additive brightness, Gaussian noise, and rounding to uint8.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, fields

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms (all off = identity)."""

    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.5  # probability of a vertical flip
    rotate_deg: float = 30.0  # angle uniform in [-rotate_deg, rotate_deg]
    zoom: tuple[float, float] = (0.8, 1.25)  # log-uniform scale factor (> 1 zooms in)
    contrast: tuple[float, float] = (0.7, 1.3)  # uniform factor about the image mean
    brightness: float = 0.2  # additive, uniform in [-b, b], fraction of 255
    noise_std: float = 0.03  # Gaussian noise std, fraction of 255, applied with probability noise_p
    noise_p: float = 0.5

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip", "noise_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability, got {getattr(self, name)}")
        if not 0 < self.zoom[0] <= self.zoom[1]:
            raise ValueError(f"zoom must be (lo, hi) with 0 < lo <= hi, got {self.zoom}")
        if not 0 <= self.contrast[0] <= self.contrast[1]:
            raise ValueError(f"contrast must be (lo, hi) with 0 <= lo <= hi, got {self.contrast}")
        if self.rotate_deg < 0 or self.brightness < 0 or self.noise_std < 0:
            raise ValueError("rotate_deg, brightness and noise_std must be >= 0")


@dataclass(frozen=True)
class AugmentParams:
    """Every random choice of one augmentation, rounded so that it is hashable.

    Values are rounded on construction (2 decimals, noise 3), so params built
    from a key-equal draw are equal and give the same image.
    """

    hflip: bool = False
    vflip: bool = False
    angle: float = 0.0  # degrees, counter-clockwise
    zoom: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0  # fraction of 255
    noise_std: float = 0.0  # fraction of 255, 0 = no noise

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("bool", bool):
                value = bool(value)
            else:
                value = round(float(value), 3 if f.name == "noise_std" else 2) + 0.0  # no -0.0
            object.__setattr__(self, f.name, value)

    @property
    def is_identity(self) -> bool:
        return self == IDENTITY

    def key(self) -> str:
        """Short stable string, e.g. ``"h1v0r-12.5z1.08c0.93b0.05n0.03"``; ``"id"`` for none."""
        if self.is_identity:
            return "id"
        return (
            f"h{int(self.hflip)}v{int(self.vflip)}r{self.angle:g}z{self.zoom:g}"
            f"c{self.contrast:g}b{self.brightness:g}n{self.noise_std:g}"
        )


IDENTITY = AugmentParams()
"""No augmentation; ``IDENTITY.key() == "id"``."""


def draw_params(cfg: AugmentConfig, rng: np.random.Generator) -> AugmentParams:
    """Draw one augmentation. Always consumes exactly 7 uniforms, whatever ``cfg``."""
    u = rng.random(7)
    lo, hi = math.log(cfg.zoom[0]), math.log(cfg.zoom[1])
    return AugmentParams(
        hflip=bool(u[0] < cfg.hflip),
        vflip=bool(u[1] < cfg.vflip),
        angle=(2.0 * u[2] - 1.0) * cfg.rotate_deg,
        zoom=math.exp(lo + u[3] * (hi - lo)),
        contrast=cfg.contrast[0] + u[4] * (cfg.contrast[1] - cfg.contrast[0]),
        brightness=(2.0 * u[5] - 1.0) * cfg.brightness,
        noise_std=cfg.noise_std if u[6] < cfg.noise_p else 0.0,
    )


def apply(image_uint8_hwc: np.ndarray, params: AugmentParams, out_size: int) -> np.ndarray:
    """Augment an RGB uint8 image and resize it to ``out_size x out_size x 3`` uint8.

    ``apply(img, IDENTITY, s)`` is exactly :func:`resize_square` ``(img, s)``.
    """
    img = np.asarray(image_uint8_hwc)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 image, got {img.shape} {img.dtype}")
    if params.hflip or params.vflip:
        img = cv2.flip(img, -1 if params.hflip and params.vflip else (1 if params.hflip else 0))
    if params.angle != 0.0 or params.zoom != 1.0:
        h, w = img.shape[:2]
        m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), params.angle, params.zoom)
        img = cv2.warpAffine(
            np.ascontiguousarray(img), m, (w, h),
            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101,
        )
    img = resize_square(img, out_size)
    if params.contrast == 1.0 and params.brightness == 0.0 and params.noise_std == 0.0:
        return img
    f = img.astype(np.float32)
    if params.contrast != 1.0:
        mean = float(f.mean())
        f = (f - mean) * params.contrast + mean
    if params.brightness != 0.0:
        f += params.brightness * 255.0
    if params.noise_std > 0.0:
        f += noise_rng(params).normal(0.0, params.noise_std * 255.0, f.shape).astype(np.float32)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def noise_rng(params: AugmentParams) -> np.random.Generator:
    """The generator of the noise of ``params``, seeded by its key."""
    seed = int.from_bytes(hashlib.sha256(params.key().encode("ascii")).digest()[:8], "big")
    return np.random.default_rng(seed)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size x size`` (INTER_AREA when shrinking both sides, else bilinear)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return np.ascontiguousarray(image)
    interp = cv2.INTER_AREA if size <= h and size <= w else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=interp)


def shrink_to(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (INTER_AREA, aspect kept) so that the longer side is <= ``max_side``."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)
