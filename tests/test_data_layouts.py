"""Dataset layouts, on small trees built from real files in the shared data folder."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.data.imageio import BadFileReport
from distill.data.layouts import DatasetError, detect_layout, read_dataset
from distill.data.patches import PatchRule, cut_patches

DATA = Path(os.environ["CRACK_DATA_DIR"])
OZ = DATA / "ozgenel_ccic_subset"
CFD = DATA / "crackforest_cfd"


def real_files(cls: str, n: int, start: int = 0) -> list[Path]:
    return sorted((OZ / cls).glob("*.jpg"))[start : start + n]


def link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)
    return dst


def sha(path: Path, suffix: bytes = b"") -> str:
    return hashlib.sha256(path.read_bytes() + suffix).hexdigest()


def make_folders(root: Path, pos: str = "Positive", neg: str = "Negative", n: int = 10):
    for f in real_files("crack", n):
        link(f, root / pos / f.name)
    for f in real_files("no_crack", n):
        link(f, root / neg / f.name)


def test_folders_layout_reads_ozgenel_style_tree(tmp_path):
    make_folders(tmp_path)
    link(real_files("crack", 1, start=40)[0], tmp_path / "Positive" / "batch2" / "1_1200.jpg")
    (tmp_path / "Positive" / ".hidden.jpg").write_bytes(b"junk")  # hidden: ignored
    (tmp_path / "Negative" / "notes.txt").write_text("not an image")  # not an image ext
    assert detect_layout(tmp_path) == "folders"
    report = BadFileReport()
    samples = read_dataset(tmp_path, report=report, surface="wall")
    assert len(report) == 0
    assert len(samples) == 21
    assert [s.path for s in samples] == sorted(s.path for s in samples)
    for s in samples:
        p = Path(s.path)
        assert p.is_absolute()
        assert s.label == (1 if "Positive" in p.parts else 0)
        assert s.sha256 == sha(p)
        assert s.box is None and s.surface == "wall"
    by_name = {Path(s.path).name: s for s in samples}
    assert by_name["03369.jpg"].source == "Positive/67"  # 3369 // 50
    assert by_name["01283.jpg"].source == "Negative/25"  # 1283 // 50
    assert by_name["1_1200.jpg"].source == "Positive/batch2/1_24"
    assert read_dataset(tmp_path, report=BadFileReport(), surface="wall") == samples


@pytest.mark.parametrize(
    "pos,neg",
    [("crack", "no_crack"), ("Cracked", "Uncracked"), ("pos", "neg"), ("1", "0"),
     ("CP", "UP"), ("cracks", "non-crack"), ("Crack", "No Crack")],
)
def test_folder_name_spellings(tmp_path, pos, neg):
    make_folders(tmp_path, pos, neg, n=1)
    samples = read_dataset(tmp_path, layout="folders")
    assert {Path(s.path).parent.name: s.label for s in samples} == {pos: 1, neg: 0}


def test_unknown_folder_is_named_in_the_error(tmp_path):
    make_folders(tmp_path, n=1)
    link(real_files("crack", 1)[0], tmp_path / "maybe" / "a.jpg")
    with pytest.raises(DatasetError, match="maybe"):
        detect_layout(tmp_path)
    with pytest.raises(DatasetError, match="maybe"):
        read_dataset(tmp_path, layout="folders")


def test_source_rules(tmp_path):
    oz = tmp_path / "oz"
    make_folders(oz, n=3)
    names = {Path(s.path).name: s.source for s in read_dataset(oz, source_rule="none")}
    assert names["03369.jpg"] == "Positive/03369"
    names = {Path(s.path).name: s.source for s in read_dataset(oz, source_rule="block:1000")}
    assert names["03369.jpg"] == "Positive/3" and names["01283.jpg"] == "Negative/1"
    # Port-quay style tiles: the source photo is the name without the trailing _row_col.
    quay = sorted((DATA / "omu_port_quay" / "images").glob("*.jpg"))[:4]
    for f in quay:
        link(f, tmp_path / "quay" / "crack" / f.name)
    link(real_files("no_crack", 1)[0], tmp_path / "quay" / "no_crack" / "x_1_2.jpg")
    rule = r"regex:^(?P<source>.+)_\d+_\d+$"
    got = {Path(s.path).name: s.source for s in read_dataset(tmp_path / "quay", source_rule=rule)}
    assert got[quay[0].name] == "crack/" + quay[0].stem.rsplit("_", 2)[0]
    assert got["x_1_2.jpg"] == "no_crack/x"
    for bad in ("block:0", "regex:(no_group)", "tiles"):
        with pytest.raises(DatasetError, match="source rule"):
            read_dataset(oz, source_rule=bad)


def test_identical_files_share_a_source(tmp_path):
    make_folders(tmp_path, n=2)
    link(real_files("crack", 1)[0], tmp_path / "Negative" / "77777.jpg")  # same bytes, other name
    samples = read_dataset(tmp_path)
    dup = [s for s in samples if s.sha256 == sha(real_files("crack", 1)[0])]
    assert len(dup) == 2 and dup[0].source == dup[1].source


def test_sdnet_layout(tmp_path):
    crack, clean = real_files("crack", 4), real_files("no_crack", 4)
    tree = {
        "D/CD/7001-1.jpg": crack[0], "D/CD/7001-2.jpg": crack[1], "D/UD/7001-3.jpg": clean[0],
        "W/CW/7069-10.jpg": crack[2], "W/UW/7069-11.jpg": clean[1], "P/UP/031-7.jpg": clean[2],
        "P/CP/031-8.jpg": crack[3],
    }
    for rel, src in tree.items():
        link(src, tmp_path / rel)
    assert detect_layout(tmp_path) == "sdnet"
    samples = read_dataset(tmp_path)
    got = {str(Path(s.path).relative_to(tmp_path)): (s.label, s.surface, s.source) for s in samples}
    assert got == {
        "D/CD/7001-1.jpg": (1, "deck", "D7001"), "D/CD/7001-2.jpg": (1, "deck", "D7001"),
        "D/UD/7001-3.jpg": (0, "deck", "D7001"), "W/CW/7069-10.jpg": (1, "wall", "W7069"),
        "W/UW/7069-11.jpg": (0, "wall", "W7069"), "P/UP/031-7.jpg": (0, "pavement", "P031"),
        "P/CP/031-8.jpg": (1, "pavement", "P031"),
    }
    one_surface = read_dataset(tmp_path / "D")  # a single SDNET surface folder
    assert [(s.label, s.surface, s.source) for s in one_surface] == [
        (1, "deck", "D7001"), (1, "deck", "D7001"), (0, "deck", "D7001")
    ]


def expected_patches(mask: np.ndarray) -> dict[tuple, int]:
    """The patch rule computed by hand for 480x320 frames, 96 px patches, margin 16."""
    xs, ys = [0, 96, 192, 288, 384], [16, 112, 208]  # 320 - 3*96 = 32 rows spare: 16 each side
    out = {}
    for y in ys:
        for x in xs:
            patch = mask[y : y + 96, x : x + 96]
            grown = mask[max(y - 16, 0) : y + 112, max(x - 16, 0) : x + 112]
            if patch.sum() >= 0.005 * 96 * 96 and patch[24:72, 24:72].sum() >= 1:
                out[(x, y, x + 96, y + 96)] = 1
            elif grown.sum() == 0:
                out[(x, y, x + 96, y + 96)] = 0
    return out


def test_masks_layout_cuts_patches_by_the_rule(tmp_path):
    stems = ["001", "002", "003"]
    for stem in stems:
        link(CFD / "images" / f"{stem}.jpg", tmp_path / "images" / f"{stem}.jpg")
        link(CFD / "masks" / f"{stem}.png", tmp_path / "masks" / f"{stem}.png")
    link(CFD / "images" / "004.jpg", tmp_path / "images" / "004.jpg")  # no mask
    assert detect_layout(tmp_path) == "masks"
    report = BadFileReport()
    samples = read_dataset(tmp_path, report=report, surface="pavement")
    assert [(Path(e.path).name, e.action) for e in report.entries] == [("004.jpg", "skipped")]
    labels = [s.label for s in samples]
    assert labels.count(1) >= 3 and labels.count(0) >= 3
    for stem in stems:
        with Image.open(CFD / "masks" / f"{stem}.png") as im:
            mask = np.asarray(im) > 127
        mine = {s.box: s.label for s in samples if s.source == stem}
        assert mine == expected_patches(mask), stem
        for box, label in mine.items():
            x0, y0, x1, y1 = box
            if label == 1:
                assert mask[y0:y1, x0:x1].sum() >= 47
            else:
                assert not mask[max(y0 - 16, 0) : y1 + 16, max(x0 - 16, 0) : x1 + 16].any()
    s = samples[0]
    assert s.surface == "pavement" and Path(s.path).parent.name == "images"
    x0, y0, x1, y1 = s.box
    assert s.sha256 == sha(Path(s.path), f":{x0},{y0},{x1},{y1}".encode())
    with Image.open(CFD / "masks" / "001.png") as im:
        expected = expected_patches(np.asarray(im) > 127)
    got = cut_patches(CFD / "images" / "001.jpg", CFD / "masks" / "001.png", PatchRule())
    assert got == sorted(expected.items(), key=lambda item: (item[0][1], item[0][0]))


def test_mask_with_other_extension_and_wrong_size(tmp_path):
    link(CFD / "images" / "005.jpg", tmp_path / "images" / "005.jpg")
    (tmp_path / "masks").mkdir()
    Image.open(CFD / "masks" / "005.png").save(tmp_path / "masks" / "005.bmp")
    link(CFD / "images" / "006.jpg", tmp_path / "images" / "006.jpg")
    Image.open(CFD / "masks" / "006.png").resize((240, 160)).save(tmp_path / "masks" / "006.png")
    report = BadFileReport()
    samples = read_dataset(tmp_path, report=report)
    assert {s.source for s in samples} == {"005"}
    assert len(report) == 1 and "240x160" in report.entries[0].reason


def test_bad_files_are_reported_not_fatal(tmp_path):
    make_folders(tmp_path, "crack", "no_crack", n=3)
    good = real_files("crack", 1)[0]
    bad = tmp_path / "crack"
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "half.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (bad / "head.jpg").write_bytes(good.read_bytes()[:300])
    (bad / "text.JPG").write_text("hello")
    rgb = Image.open(good).convert("RGB")
    rgb.convert("L").save(bad / "grey.png")
    rgb.convert("RGBA").save(bad / "rgba.png")
    Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257).save(bad / "grey16.tif")
    shutil.copy(good, tmp_path / "no_crack" / "copy.jpeg")
    report = BadFileReport()
    samples = read_dataset(tmp_path, report=report)
    names = {Path(s.path).name for s in samples}
    actions = {Path(e.path).name: e.action for e in report.entries}
    assert actions == {
        "zero.jpg": "skipped", "head.jpg": "skipped", "text.JPG": "skipped",
        "half.jpg": "converted", "grey.png": "converted", "rgba.png": "converted",
        "grey16.tif": "converted",
    }
    assert names == {p.name for p in real_files("crack", 3) + real_files("no_crack", 3)} | {
        "half.jpg", "grey.png", "rgba.png", "grey16.tif", "copy.jpeg"
    }
    assert "zero.jpg" in report.summary() and "text.JPG" in report.summary()


def test_empty_or_unknown_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match="layout"):
        detect_layout(tmp_path)
    (tmp_path / "crack").mkdir()
    (tmp_path / "no_crack").mkdir()
    with pytest.raises(DatasetError, match="no usable sample"):
        read_dataset(tmp_path)
    with pytest.raises(DatasetError, match="unknown layout"):
        read_dataset(tmp_path, layout="coco")


def test_data_layer_imports_without_torch():
    import subprocess
    import sys

    code = (
        "import sys, distill.data, distill.data.layouts, distill.data.splits, "
        "distill.data.augment, distill.data.patches; assert 'torch' not in sys.modules"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)


def test_boxes_layout_labels_by_presence_of_boxes_and_groups_tiles_of_one_photo(tmp_path):
    quay = DATA / "omu_port_quay"
    images = sorted((quay / "images").glob("h1_MAX_0008_15m_*.jpg"))[:3]
    root = tmp_path / "quay"
    for img in images:
        link(img, root / "images" / img.name)
    (root / "labels_yolo").mkdir(parents=True)
    shutil.copy(quay / "labels_yolo" / f"{images[0].stem}.txt", root / "labels_yolo" / f"{images[0].stem}.txt")
    (root / "labels_yolo" / f"{images[1].stem}.txt").write_text("")  # annotated, no crack
    # images[2] has no label file at all: skipped and reported, never guessed
    report = BadFileReport()
    assert detect_layout(root) == "boxes"
    samples = read_dataset(root, report=report, surface="quay wall")
    assert [(Path(s.path).name, s.label) for s in samples] == [(images[0].name, 1), (images[1].name, 0)]
    assert {s.source for s in samples} == {"h1_MAX_0008_15m"}
    assert {s.surface for s in samples} == {"quay wall"}
    assert [(Path(e.path).name, e.action) for e in report.entries] == [(images[2].name, "skipped")]
