"""PatchDataset: tensors, reproducible per-sample augmentation, workers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data.augment import AugmentConfig, resize_square, shrink_to
from distill.data.imageio import load_rgb
from distill.data.layouts import read_dataset
from distill.data.samples import Sample
from distill.data.torch_dataset import PatchDataset

DATA = Path(os.environ["CRACK_DATA_DIR"])
SIZE = 64


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[Sample]:
    """6 Özgenel patches and 4 patches cut from a CrackForest frame (with boxes)."""
    root = tmp_path_factory.mktemp("ds")
    for cls in ("crack", "no_crack"):
        for f in sorted((DATA / "ozgenel_ccic_subset" / cls).glob("*.jpg"))[:3]:
            (root / "oz" / cls).mkdir(parents=True, exist_ok=True)
            os.symlink(f, root / "oz" / cls / f.name)
    for sub, ext in (("images", "jpg"), ("masks", "png")):
        (root / "cfd" / sub).mkdir(parents=True)
        os.symlink(DATA / "crackforest_cfd" / sub / f"001.{ext}", root / "cfd" / sub / f"001.{ext}")
    cut = read_dataset(root / "cfd")
    picked = [s for s in cut if s.label == 1][:2] + [s for s in cut if s.label == 0][:2]
    return read_dataset(root / "oz") + picked


def test_items_have_the_promised_types_and_eval_is_a_plain_resize(samples):
    ds = PatchDataset(samples, SIZE)
    assert len(ds) == 10
    for i in (0, 9):
        item = ds[i]
        img = item["image"]
        assert img.shape == (3, SIZE, SIZE) and img.dtype == torch.float32
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0 and float(img.std()) > 0.01
        assert item["label"].dtype == torch.int64 and int(item["label"]) == samples[i].label
        assert item["index"] == i
        assert item["key"] == f"{samples[i].sha256}:id:{SIZE}"
        s = samples[i]
        expected = resize_square(shrink_to(load_rgb(s.path, s.box), round(SIZE * 1.25)), SIZE)
        got = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert np.array_equal(got, expected)
    assert samples[9].box is not None


def test_augmentation_depends_on_epoch_only(samples):
    ds = PatchDataset(samples, SIZE, augment=AugmentConfig(), seed=7)
    e0 = [ds[i] for i in range(len(ds))]
    again = [ds[i] for i in range(len(ds))]
    for a, b in zip(e0, again):
        assert torch.equal(a["image"], b["image"]) and a["key"] == b["key"]
    ds.set_epoch(1)
    e1 = [ds[i] for i in range(len(ds))]
    assert sum(a["key"] != b["key"] for a, b in zip(e0, e1)) == len(ds)
    assert sum(not torch.equal(a["image"], b["image"]) for a, b in zip(e0, e1)) == len(ds)
    assert all(k["key"].split(":")[1] != "id" for k in e0)

    # Another order, a subset and no cache: the same sample gets the same augmentation.
    subset = PatchDataset(
        samples[::-1][:5], SIZE, augment=AugmentConfig(), seed=7, cache_images=False
    )
    subset.set_epoch(1)
    by_sha = {samples[i].sha256: e1[i] for i in range(len(ds))}
    for j in range(len(subset)):
        item = subset[j]
        ref = by_sha[subset.samples[j].sha256]
        assert item["key"] == ref["key"] and torch.equal(item["image"], ref["image"])
    other_seed = PatchDataset(samples, SIZE, augment=AugmentConfig(), seed=8)
    assert other_seed[0]["key"] != e0[0]["key"]


def test_missing_hashes_are_computed(samples):
    bare = [Sample(s.path, s.label, s.source, s.surface, s.box) for s in samples[-2:]]
    ds = PatchDataset(bare, SIZE)
    assert [s.sha256 for s in ds.samples] == [s.sha256 for s in samples[-2:]]


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_sees_set_epoch(samples, workers):
    ds = PatchDataset(samples, SIZE, augment=AugmentConfig(), seed=1)
    ds.preload()
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, num_workers=workers, persistent_workers=workers > 0
    )
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        keys = [k for batch in loader for k in batch["key"]]
        images = torch.cat([batch["image"] for batch in loader])
        assert keys == [ds[i]["key"] for i in range(len(ds))], epoch
        assert torch.equal(images, torch.stack([ds[i]["image"] for i in range(len(ds))]))
    assert images.shape == (10, 3, SIZE, SIZE)
