"""Source-grouped splits, label subsampling and manifests, on the real Özgenel listing."""

from __future__ import annotations

import os
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from distill.data.layouts import DatasetError, read_dataset
from distill.data.samples import Sample, content_hash
from distill.data.splits import read_manifest, split_by_source, subsample_labels, write_manifest

DATA = Path(os.environ["CRACK_DATA_DIR"])
OZ = DATA / "ozgenel_ccic_subset"


@pytest.fixture(scope="module")
def ozgenel() -> list[Sample]:
    """All Özgenel files as samples with the default block-of-50 sources (listing only, fast)."""
    out = []
    for label, cls in enumerate(("no_crack", "crack")):
        for p in sorted((OZ / cls).glob("*.jpg")):
            prefix, _, num = p.stem.rpartition("_")
            prefix = prefix + "_" if prefix else ""
            out.append(Sample(str(p), label, f"{cls}/{prefix}{int(num) // 50}"))
    return out


def sources(samples) -> set[str]:
    return {s.source for s in samples}


def test_no_source_in_two_splits_and_nothing_lost(ozgenel):
    splits = split_by_source(ozgenel, seed=0)
    assert set(splits) == {"train", "val", "test"}
    a, b, c = (sources(splits[n]) for n in ("train", "val", "test"))
    assert not (a & b) and not (a & c) and not (b & c)
    assert sorted(s.path for v in splits.values() for s in v) == sorted(s.path for s in ozgenel)
    assert len(a | b | c) == len(sources(ozgenel)) > 60


def test_deterministic_and_order_independent(ozgenel):
    first = split_by_source(ozgenel, seed=3)
    shuffled = list(ozgenel)
    random.Random(1).shuffle(shuffled)
    assert split_by_source(shuffled, seed=3) == first
    assert split_by_source(ozgenel, seed=4) != first


def test_adding_sources_does_not_move_existing_ones(ozgenel):
    half = [s for s in ozgenel if s.label == 1]
    before = {s.source: n for n, v in split_by_source(half, seed=0).items() for s in v}
    after = {s.source: n for n, v in split_by_source(ozgenel, seed=0).items() for s in v}
    assert all(after[src] == split for src, split in before.items())


def test_fractions_roughly_respected(ozgenel):
    n_sources = len(sources(ozgenel))
    for seed in range(3):
        splits = split_by_source(ozgenel, (0.6, 0.2, 0.2), seed=seed)
        share = {n: len(sources(v)) / n_sources for n, v in splits.items()}
        assert abs(share["train"] - 0.6) < 0.15 and abs(share["val"] - 0.2) < 0.12, share
        assert abs(share["test"] - 0.2) < 0.12, share
    two = split_by_source(ozgenel, (0.5, 0.5), names=("a", "b"))
    assert 0.35 < len(two["a"]) / len(ozgenel) < 0.65


def test_tiny_dataset_with_an_empty_split_is_an_error(ozgenel):
    tiny = [s for s in ozgenel if s.source in {"crack/67", "crack/68"}]
    with pytest.raises(DatasetError, match="empty"):
        split_by_source(tiny)
    with pytest.raises(ValueError):
        split_by_source(ozgenel, (0.5, 0.6, 0.1))


def test_subsample_labels_keeps_a_fraction_of_sources_per_label(ozgenel):
    small = subsample_labels(ozgenel, 0.1, seed=0)
    n_by_label = Counter(s.label for s in ozgenel)
    for label in (0, 1):
        all_src = sources(s for s in ozgenel if s.label == label)
        kept = sources(s for s in small if s.label == label)
        assert 1 <= len(kept) and abs(len(kept) - 0.1 * len(all_src)) <= 1
        assert n_by_label[label] > 0
    kept = sources(small)
    assert all(s in small for s in ozgenel if s.source in kept), "whole sources are kept"
    larger = subsample_labels(ozgenel, 0.3, seed=0)
    assert kept <= sources(larger), "smaller fractions are nested in larger ones"
    shuffled = list(ozgenel)
    random.Random(2).shuffle(shuffled)
    assert subsample_labels(shuffled, 0.1, seed=0) == small
    assert len(sources(subsample_labels(ozgenel[:60], 0.01))) >= 1
    with pytest.raises(ValueError):
        subsample_labels(ozgenel, 0.0)


def test_manifest_round_trip_and_verify(tmp_path):
    cfd = DATA / "crackforest_cfd"
    for stem in ("001", "002"):
        (tmp_path / "data" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "masks").mkdir(exist_ok=True)
        shutil.copy(cfd / "images" / f"{stem}.jpg", tmp_path / "data" / "images")
        shutil.copy(cfd / "masks" / f"{stem}.png", tmp_path / "data" / "masks")
    samples = read_dataset(tmp_path / "data", surface="pavement")
    whole = OZ / "crack" / "03369.jpg"
    samples.append(Sample(str(whole), 1, "crack/67", sha256=content_hash(whole)))  # no box/surface
    manifest = tmp_path / "runs" / "split.csv"
    write_manifest(manifest, samples)
    header = manifest.read_text().splitlines()[0]
    assert header == "path,label,source,surface,box,sha256"
    back = read_manifest(manifest, verify=True)
    assert back == samples
    assert any(s.box for s in back) and back[-1].box is None and back[-1].surface is None

    frame = tmp_path / "data" / "images" / "002.jpg"
    data = bytearray(frame.read_bytes())
    data[-100] ^= 0xFF  # one changed byte
    frame.write_bytes(bytes(data))
    assert read_manifest(manifest) == samples  # without verify: no check
    with pytest.raises(DatasetError, match="002.jpg") as err:
        read_manifest(manifest, verify=True)
    assert "001.jpg" not in str(err.value)
    frame.unlink()
    with pytest.raises(DatasetError, match="missing"):
        read_manifest(manifest, verify=True)


def test_bad_manifest_is_rejected(tmp_path):
    (tmp_path / "m.csv").write_text("file,class\nx.jpg,1\n")
    with pytest.raises(DatasetError, match="header"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("path,label,source,surface,box,sha256\nx.jpg,1,s,,1 2 3,\n")
    with pytest.raises(DatasetError, match="line 2"):
        read_manifest(tmp_path / "m.csv")
