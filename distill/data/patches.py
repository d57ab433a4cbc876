"""Cutting labelled crack / no-crack patches from mask-annotated frames.

Segmentation datasets (a photo plus a crack mask) are turned into the same
patch-classification data as the classification datasets, so that a student
can be trained or evaluated on other surfaces and cameras.

The rule, for a :class:`PatchRule` with side ``size``:

1. Patches lie on a regular grid: ``size x size`` squares every ``stride``
   pixels in x and y. The grid is centred in the frame: the pixels that do
   not fit (``(W - size) % stride`` columns, likewise rows) are split evenly
   between the two borders. A frame smaller than ``size`` gives no patch.
2. A mask pixel is crack if its value is > 127 (RGB and palette masks: the
   brightest channel).
3. A patch is **crack** (label 1) if both
   - at least ``crack_min_fraction`` of its ``size * size`` pixels are crack
     pixels (default 0.5 %, i.e. 47 pixels of a 96 x 96 patch: a visible
     crack, not a few stray annotation pixels), and
   - at least ``crack_min_center_pixels`` crack pixels lie in its central
     half, the ``size/2 x size/2`` square in the middle (from
     ``size // 4`` to ``size // 4 + size // 2``), so a crack that only grazes
     the border, and may be cut away by augmentation or hard to see, does
     not count.
4. A patch is **no crack** (label 0) only if there is no crack pixel at all
   in the patch grown by ``clear_margin`` pixels on every side (the part of
   that grown square outside the frame counts as crack-free). The margin
   keeps patches that end just before a crack, where annotation is a few
   pixels off, out of the negatives.
5. Every other patch is **ambiguous** and dropped: it has some crack pixels,
   but too few or only near the border, or a crack just outside it.

Crack and no-crack are disjoint because a crack patch needs at least one
crack pixel (enforced when the rule is created).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from distill.data.imageio import BadImageError, image_size, load_mask

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class PatchRule:
    """How patches are placed and labelled; see the module docstring."""

    size: int = 96
    stride: int = 96
    crack_min_fraction: float = 0.005
    crack_min_center_pixels: int = 1
    clear_margin: int = 16

    def __post_init__(self) -> None:
        if self.size < 4 or self.stride < 1:
            raise ValueError(f"size must be >= 4 and stride >= 1, got {self.size}, {self.stride}")
        if not 0.0 <= self.crack_min_fraction <= 1.0:
            raise ValueError(f"crack_min_fraction must be in [0, 1], got {self.crack_min_fraction}")
        if self.crack_min_center_pixels < 0 or self.clear_margin < 0:
            raise ValueError("crack_min_center_pixels and clear_margin must be >= 0")
        if self.crack_min_fraction == 0 and self.crack_min_center_pixels == 0:
            raise ValueError(
                "crack_min_fraction = 0 and crack_min_center_pixels = 0 would call a patch "
                "without any crack pixel a crack"
            )

    @property
    def window_size(self) -> int:
        """Side of the window :meth:`label_of` expects: the patch plus the margin."""
        return self.size + 2 * self.clear_margin

    def window(self, mask: np.ndarray, box: Box) -> np.ndarray:
        """The bool mask window around ``box``, padded with False outside the frame."""
        x0, y0, x1, y1 = box
        if x1 - x0 != self.size or y1 - y0 != self.size:
            raise ValueError(f"box {box} is not {self.size}x{self.size}")
        m = self.clear_margin
        h, w = mask.shape[:2]
        out = np.zeros((self.window_size, self.window_size), dtype=bool)
        gx0, gy0, gx1, gy1 = x0 - m, y0 - m, x1 + m, y1 + m
        cx0, cy0, cx1, cy1 = max(gx0, 0), max(gy0, 0), min(gx1, w), min(gy1, h)
        if cx0 < cx1 and cy0 < cy1:
            out[cy0 - gy0 : cy1 - gy0, cx0 - gx0 : cx1 - gx0] = _as_bool(mask[cy0:cy1, cx0:cx1])
        return out

    def label_of(self, mask_window: np.ndarray) -> int | None:
        """1 (crack), 0 (no crack) or None (ambiguous) for one patch.

        ``mask_window`` is the mask of the patch grown by ``clear_margin`` on
        every side (shape ``window_size x window_size``, as returned by
        :meth:`window`); bool, or uint8 with crack > 127.
        """
        win = _as_bool(mask_window)
        if win.shape != (self.window_size, self.window_size):
            raise ValueError(
                f"mask window must be {self.window_size}x{self.window_size} "
                f"(patch {self.size} + 2 x margin {self.clear_margin}), got {win.shape}"
            )
        if not win.any():
            return 0
        m, s = self.clear_margin, self.size
        patch = win[m : m + s, m : m + s]
        q, half = s // 4, s // 2
        center = patch[q : q + half, q : q + half]
        if (
            np.count_nonzero(patch) >= self.crack_min_fraction * s * s
            and np.count_nonzero(center) >= self.crack_min_center_pixels
        ):
            return 1
        return None

    def grid(self, width: int, height: int) -> list[Box]:
        """Boxes of the centred regular grid, row by row."""
        xs = _starts(width, self.size, self.stride)
        ys = _starts(height, self.size, self.stride)
        return [(x, y, x + self.size, y + self.size) for y in ys for x in xs]


def patches_from_mask(mask: np.ndarray, rule: PatchRule) -> list[tuple[Box, int]]:
    """``(box, label)`` for every non-ambiguous grid patch of a bool mask."""
    mask = _as_bool(mask)
    h, w = mask.shape[:2]
    out = []
    for box in rule.grid(w, h):
        label = rule.label_of(rule.window(mask, box))
        if label is not None:
            out.append((box, label))
    return out


def cut_patches(
    image_path: str | os.PathLike, mask_path: str | os.PathLike, rule: PatchRule
) -> list[tuple[Box, int]]:
    """``(box, label)`` for every non-ambiguous patch of a frame on a regular grid.

    Boxes are ``(x0, y0, x1, y1)`` in the frame's pixels. Raises
    :class:`BadImageError` if the mask cannot be decoded or its size differs
    from the image's.
    """
    mask = load_mask(mask_path)
    check_mask_size(mask, image_size(image_path), mask_path)
    return patches_from_mask(mask, rule)


def check_mask_size(mask: np.ndarray, image_wh: tuple[int, int], mask_path) -> None:
    h, w = mask.shape[:2]
    if (w, h) != tuple(image_wh):
        raise BadImageError(
            f"mask {os.fspath(mask_path)} is {w}x{h} but the image is {image_wh[0]}x{image_wh[1]}"
        )


def _starts(length: int, size: int, stride: int) -> list[int]:
    if length < size:
        return []
    n = (length - size) // stride + 1
    offset = (length - size - (n - 1) * stride) // 2
    return [offset + i * stride for i in range(n)]


def _as_bool(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3:
        a = a.max(axis=2)
    return a if a.dtype == bool else a > 127
