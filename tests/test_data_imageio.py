"""Image decoding and the bad-file report, on files derived from real photos."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from distill.data.imageio import BadFileReport, BadImageError, check_image, load_mask, load_rgb

DATA = Path(os.environ["CRACK_DATA_DIR"])
CRACK_JPG = DATA / "ozgenel_ccic_subset" / "crack" / "03369.jpg"
CFD_MASK = DATA / "crackforest_cfd" / "masks" / "001.png"


def pil_rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height but holds no pixel data (a "bomb" header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_plain_rgb_jpeg_is_unchanged_and_not_reported():
    ref = pil_rgb(CRACK_JPG)
    out = load_rgb(CRACK_JPG)
    assert out.dtype == np.uint8 and out.shape == (227, 227, 3)
    assert np.array_equal(out, ref)
    report = BadFileReport()
    assert check_image(CRACK_JPG, report) and len(report) == 0


def test_box_crops_the_image():
    ref = pil_rgb(CRACK_JPG)
    assert np.array_equal(load_rgb(CRACK_JPG, (10, 20, 110, 70)), ref[20:70, 10:110])
    with pytest.raises(BadImageError, match="outside"):
        load_rgb(CRACK_JPG, (200, 0, 300, 50))


def test_grey_palette_rgba_and_16_bit_are_converted(tmp_path):
    ref = pil_rgb(CRACK_JPG)
    grey = np.asarray(Image.fromarray(ref).convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    cv2.imwrite(str(tmp_path / "grey16.png"), grey.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "rgb48.png"), ref[..., ::-1].astype(np.uint16) * 257)
    alpha = np.full(ref.shape[:2], 255, np.uint8)
    alpha[:, :100] = 0  # left part fully transparent, holding black
    rgba = np.dstack([ref, alpha])
    rgba[:, :100, :3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(ref).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "pal.png")

    grey3 = np.repeat(grey[..., None], 3, axis=2)
    assert np.array_equal(load_rgb(tmp_path / "grey.png"), grey3)
    assert np.array_equal(load_rgb(tmp_path / "grey16.png"), grey3)  # v*257 / 257 = v
    assert np.array_equal(load_rgb(tmp_path / "rgb48.png"), ref)
    out = load_rgb(tmp_path / "rgba.png")
    assert (out[:, :100] == 255).all(), "transparent pixels are composited on white"
    assert np.array_equal(out[:, 100:], ref[:, 100:])
    pal = load_rgb(tmp_path / "pal.png")
    assert pal.shape == ref.shape and np.abs(pal.astype(int) - ref).mean() < 6

    report = BadFileReport()
    names = ["grey.png", "grey16.png", "rgb48.png", "rgba.png", "pal.png"]
    assert all(check_image(tmp_path / n, report) for n in names)
    assert [e.action for e in report.entries] == ["converted"] * 5
    reasons = {Path(e.path).name: e.reason for e in report.entries}
    assert "greyscale" in reasons["grey.png"]
    assert "16-bit" in reasons["grey16.png"] and "16-bit" in reasons["rgb48.png"]
    assert "white" in reasons["rgba.png"]
    assert "palette" in reasons["pal.png"]


def test_cmyk_jpeg_is_converted(tmp_path):
    Image.fromarray(pil_rgb(CRACK_JPG)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    out = load_rgb(tmp_path / "cmyk.jpg")
    assert out.shape == (227, 227, 3)
    assert np.abs(out.astype(int) - pil_rgb(CRACK_JPG)).mean() < 8
    report = BadFileReport()
    assert check_image(tmp_path / "cmyk.jpg", report)
    assert report.entries[0].action == "converted" and "CMYK" in report.entries[0].reason


def test_truncated_jpeg_keeps_the_decoded_part_and_is_reported(tmp_path):
    data = CRACK_JPG.read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "head.jpg").write_bytes(data[:300])  # cut inside the header
    ref = pil_rgb(CRACK_JPG).astype(int)
    out = load_rgb(tmp_path / "half.jpg").astype(int)
    assert out.shape == ref.shape
    assert np.abs(out[:64] - ref[:64]).max() <= 2, "the rows present in the file decode as usual"
    assert np.abs(out[-32:] - ref[-32:]).mean() > 10, "the missing rows are filler"
    with pytest.raises(BadImageError):
        load_rgb(tmp_path / "head.jpg")
    report = BadFileReport()
    assert check_image(tmp_path / "half.jpg", report)
    assert not check_image(tmp_path / "head.jpg", report)
    assert [(Path(e.path).name, e.action) for e in report.entries] == [
        ("half.jpg", "converted"),
        ("head.jpg", "skipped"),
    ]
    assert "truncated" in report.entries[0].reason


def test_unusable_files_raise_with_a_reason(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("inspection notes, not a picture\n")
    png_header_only(tmp_path / "bomb.png", 20000, 20000)
    data = (DATA / "crackforest_cfd" / "images" / "001.jpg").read_bytes()
    with pytest.raises(BadImageError, match="empty"):
        load_rgb(tmp_path / "empty.jpg")
    with pytest.raises(BadImageError, match="not an image"):
        load_rgb(tmp_path / "notes.jpg")
    with pytest.raises(BadImageError, match="too large"):
        load_rgb(tmp_path / "bomb.png")
    with pytest.raises(BadImageError, match="too large"):
        load_rgb(CRACK_JPG, max_pixels=227 * 226)
    assert load_rgb(CRACK_JPG, max_pixels=227 * 227).shape == (227, 227, 3)
    with pytest.raises(FileNotFoundError):
        load_rgb(tmp_path / "missing.jpg")
    assert data  # the fixture data is real


def test_exif_orientation_matches_pillow(tmp_path):
    base = Image.fromarray(pil_rgb(DATA / "crackforest_cfd" / "images" / "001.jpg"))  # 480x320
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.jpg"
        base.save(path, quality=95, exif=exif)
        with Image.open(path) as im:
            expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        out = load_rgb(path)
        assert out.shape == expected.shape, orientation
        assert np.array_equal(out, expected), orientation
    assert load_rgb(tmp_path / "o6.jpg").shape == (480, 320, 3)


def test_load_mask_thresholds_grey_rgb_and_palette(tmp_path):
    with Image.open(CFD_MASK) as im:
        grey = np.asarray(im)
    expected = grey > 127
    assert expected.any() and not expected.all()
    red = np.zeros(grey.shape + (3,), np.uint8)
    red[..., 0] = grey  # red crack on black: still crack
    Image.fromarray(red).save(tmp_path / "red.png")
    pal = Image.fromarray((grey > 127).astype(np.uint8), "P")
    pal.putpalette([0, 0, 0, 255, 255, 255])
    pal.save(tmp_path / "pal.png")
    assert np.array_equal(load_mask(CFD_MASK), expected)
    assert np.array_equal(load_mask(tmp_path / "red.png"), expected)
    assert np.array_equal(load_mask(tmp_path / "pal.png"), expected)


def test_report_summary_and_json_list_every_file(tmp_path):
    report = BadFileReport()
    report.add("/d/a.jpg", "empty file (0 bytes)", "skipped")
    report.add("/d/b.png", "greyscale converted to RGB", "converted")
    report.add("/d/c.jpg", "not an image", "skipped")
    with pytest.raises(ValueError):
        report.add("/d/x.jpg", "?", "deleted")
    assert len(report) == 3
    text = report.summary()
    assert "2 skipped" in text and "1 converted" in text
    for name in ("a.jpg", "b.png", "c.jpg"):
        assert name in text
    report.to_json(tmp_path / "bad.json")
    payload = json.loads((tmp_path / "bad.json").read_text())
    assert payload["skipped"] == 2 and payload["converted"] == 1
    assert [e["path"] for e in payload["entries"]] == ["/d/a.jpg", "/d/b.png", "/d/c.jpg"]
    assert BadFileReport().summary() == "No bad files."
