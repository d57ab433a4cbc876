"""PyTorch dataset of (optionally augmented) patches.

Augmentation is reproducible per sample: the params for sample ``i`` in
epoch ``e`` come from ``np.random.default_rng([seed, e, int(sha256[:12], 16)])``,
so they do not depend on the sample order, the DataLoader worker or the
subset a sample is in, and the teacher and the student (or a cache of teacher
outputs, via ``item["key"]``) see the same augmented image.

Images are returned as float32 in [0, 1], *not* normalised: each model owns
its normalisation.

Workers: the epoch lives in a shared-memory tensor, so ``set_epoch`` reaches
DataLoader workers even with ``persistent_workers=True``; call it before
iterating the loader for that epoch. The image cache is per process: call
:meth:`PatchDataset.preload` before creating the DataLoader so that forked
workers share the already decoded images instead of each decoding its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from distill.data.augment import (
    IDENTITY,
    AugmentConfig,
    AugmentParams,
    apply,
    draw_params,
    shrink_to,
)
from distill.data.imageio import load_rgb
from distill.data.samples import HashCache, Sample

CACHE_MARGIN = 1.25
"""Cached crops keep a longer side of ``round(input_size * 1.25)``: room for zoom and rotation."""


class PatchDataset(torch.utils.data.Dataset):
    """Samples -> ``{"image", "label", "index", "key"}`` dicts for training and evaluation.

    Args:
        samples: the samples (hashes are computed for any without ``sha256``).
        input_size: side of the square output image.
        augment: augmentation ranges, or None for evaluation (no augmentation).
        seed: augmentation seed (the run's seed).
        cache_images: keep decoded, pre-shrunk uint8 crops in memory. Output
            is the same with or without the cache.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        input_size: int,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        cache_images: bool = True,
    ) -> None:
        if input_size < 1:
            raise ValueError(f"input_size must be >= 1, got {input_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        hasher = HashCache()
        self.samples = [
            s if s.sha256 else replace(s, sha256=hasher(s.path, s.box)) for s in samples
        ]
        self.input_size = int(input_size)
        self.augment = augment
        self.seed = int(seed)
        self.cache_images = cache_images
        self.cache_side = round(self.input_size * CACHE_MARGIN)
        self._cache: dict[int, np.ndarray] = {}
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of every sample for ``epoch``."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch.fill_(int(epoch))

    def params(self, i: int) -> AugmentParams:
        """The augmentation of sample ``i`` in the current epoch."""
        if self.augment is None:
            return IDENTITY
        s = self.samples[i]
        rng = np.random.default_rng([self.seed, self.epoch, int(s.sha256[:12], 16)])
        return draw_params(self.augment, rng)

    def preload(self) -> None:
        """Decode every image into the cache now (no-op without ``cache_images``)."""
        if self.cache_images:
            for i in range(len(self)):
                self._base_image(i)

    def _base_image(self, i: int) -> np.ndarray:
        """Decoded crop, shrunk to a longer side of at most ``cache_side``."""
        img = self._cache.get(i)
        if img is None:
            s = self.samples[i]
            img = shrink_to(load_rgb(s.path, s.box), self.cache_side)
            if self.cache_images:
                self._cache[i] = img
        return img

    def uint8(self, i: int) -> np.ndarray:
        """Sample ``i`` as the model sees it (current epoch's augmentation), uint8 S×S×3 RGB:
        what an ONNX model with folded normalisation is fed."""
        return apply(self._base_image(int(i) % len(self)), self.params(int(i) % len(self)), self.input_size)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        i = int(i) % len(self)
        s = self.samples[i]
        params = self.params(i)
        out = apply(self._base_image(i), params, self.input_size)
        image = torch.from_numpy(out).permute(2, 0, 1).contiguous().float().div_(255.0)
        return {
            "image": image,
            "label": torch.tensor(s.label, dtype=torch.int64),
            "index": i,
            "key": f"{s.sha256}:{params.key()}:{self.input_size}",
        }
