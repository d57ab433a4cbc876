"""Real patches for the export tests (imported as ``from export_support import ...``).

``test_export`` and ``test_quantize`` judge exported graphs on real images: Özgenel wall patches
and uav75 bridge crops, resized to the test module's ``SIZE``. Random weights and random images
would give degenerate heat-maps and margins that any graph matches, so both also share the
training patches (the ``train_set`` fixture) and the linear probe that gives ImageNet
EfficientNet-Lite0 a crack head.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from distill.data.imageio import load_mask, load_rgb


class Patches:
    """Real crack and crack-free patches at ``size`` px from the shared data (``$CRACK_DATA_DIR``)."""

    def __init__(self, size: int):
        self.size = size
        self.data = Path(os.environ["CRACK_DATA_DIR"])

    def _resize(self, img: np.ndarray) -> np.ndarray:
        return cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)

    def ozgenel(self, label: str, n: int, offset: int, step: int = 7) -> np.ndarray:
        """``n`` Özgenel patches of ``label`` ("crack" or "no_crack"): every ``step``-th from ``offset``."""
        files = sorted((self.data / "ozgenel_ccic_subset" / label).glob("*.jpg"))[offset::step][:n]
        return np.stack([self._resize(load_rgb(f)) for f in files])

    def uav_crops(self, prefix: str, n: int, crack: bool, side: int = 160) -> np.ndarray:
        """``side``-px crops of uav75 frames (authors' split ``prefix``): the window holding the most
        crack pixels, or a crack-free one (the middle of those with no crack within 16 px)."""
        out = []
        for f in sorted((self.data / "uav75" / "images").glob(f"{prefix}_*.jpg")):
            mask = load_mask(self.data / "uav75" / "masks" / f"{f.stem}.png")
            h, w = mask.shape
            windows = [(y, x) for y in range(0, h - side + 1, side // 4) for x in range(0, w - side + 1, side // 4)]
            if crack:
                y0, x0 = max(windows, key=lambda p: mask[p[0]:p[0] + side, p[1]:p[1] + side].sum())
                if mask[y0:y0 + side, x0:x0 + side].sum() < 0.006 * side * side:  # masks are thin: ~150 px
                    continue                                                       # is a crack across the crop
            else:
                free = [(y, x) for y, x in windows
                        if not mask[max(0, y - 16):y + side + 16, max(0, x - 16):x + side + 16].any()]
                if not free:
                    continue
                y0, x0 = free[len(free) // 2]
            out.append(self._resize(load_rgb(f)[y0:y0 + side, x0:x0 + side]))
            if len(out) == n:
                break
        assert len(out) == n, f"only {len(out)} {prefix} crops"
        return np.stack(out)

    def training_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """32 crack and 32 crack-free training patches (Özgenel, uav75 train split): images in [0, 1], labels."""
        crack = np.concatenate([self.ozgenel("crack", 24, offset=1), self.uav_crops("train", 8, crack=True)])
        clear = np.concatenate([self.ozgenel("no_crack", 24, offset=1), self.uav_crops("train", 8, crack=False)])
        return to01(np.concatenate([crack, clear])), torch.tensor([1] * len(crack) + [0] * len(clear))


def to01(images: np.ndarray) -> torch.Tensor:
    """N×H×W×3 uint8 RGB → N×3×H×W float in [0, 1], what a Classifier takes."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def train_set(request) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`Patches.training_set` at the size of the test module using it (its ``SIZE``)."""
    return Patches(request.module.SIZE).training_set()


def fit_linear_probe(model, x: torch.Tensor, y: torch.Tensor) -> None:
    """Fit EfficientNet-Lite's classifier (``net._fc``) on the frozen embeddings of ``x``: an ImageNet
    backbone with a crack head whose margins mean something."""
    with torch.no_grad():
        emb = model.embed(model.features(x))
    fc = model.net._fc
    opt = torch.optim.Adam(fc.parameters(), lr=0.05)
    for _ in range(100):
        loss = nn.functional.cross_entropy(fc(emb), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
