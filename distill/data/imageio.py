"""Robust image decoding for datasets collected in the field.

Field data contains every kind of file: greyscale and palette images,
transparent PNGs, CMYK JPEGs from scanners, 16-bit TIFF/PNG from industrial
cameras, files cut short by a failed copy, empty files, and text files with an
image extension. Training must neither crash on them nor silently learn from
garbage, so every file goes through :func:`load_rgb`, which either returns an
``H x W x 3`` uint8 RGB array or raises :class:`BadImageError` with a reason,
and :func:`check_image` records what happened in a :class:`BadFileReport`.

Conversions (each makes the file "converted", i.e. usable but reported):

- greyscale, 1-bit, palette, CMYK and other modes: converted to RGB by Pillow
  (CMYK naively, without an ICC profile);
- alpha (RGBA, LA, palette with transparency): composited on white. Fully
  transparent pixels often hold black, which would look like a crack, so
  dropping the alpha channel is the worse choice;
- 16-bit (and 32-bit integer / float) images: decoded with OpenCV
  ``IMREAD_UNCHANGED`` (Pillow reduces 48-bit RGB PNGs itself); uint16
  values are mapped with ``v / 257`` (full 16-bit range to 0..255); other
  depths are kept if already in 0..255, divided by 257 if in 0..65535,
  otherwise min-max stretched;
- truncated JPEGs: decoded as far as the data goes (an end-of-image marker is
  appended, which gives the same pixels as Pillow's
  ``LOAD_TRUNCATED_IMAGES`` without touching that global flag); the rest of
  the image is decoder fill, so such files are reported as converted and
  deserve a look.

EXIF orientation is always applied (it is not reported: it is normal for
camera photos). Crop boxes refer to the oriented image.

Errors (the file is "skipped"): empty file, unrecognised format, a header or
data that cannot be decoded, zero-sized image, and images with more than
``max_pixels`` pixels (decompression bombs; the size is read from the header
before any pixel is decoded).

Everything here is thread-safe: no global Pillow flag is changed.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from distill.errors import DistillError

MAX_PIXELS = 60_000_000
"""Default pixel limit: far above any camera frame, far below a decompression bomb."""

ACTIONS = ("converted", "skipped")

_HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_JPEG_EOI = b"\xff\xd9"
_ORIENTATION_TAG = 0x0112


class BadImageError(DistillError, ValueError):
    """The file cannot be used as an image; ``str(err)`` is the reason."""


@dataclass(frozen=True)
class BadFileEntry:
    """One reported file: what is wrong and what was done about it."""

    path: str
    reason: str
    action: str  # "converted" (kept) or "skipped" (left out)


@dataclass
class BadFileReport:
    """Files that were converted or skipped while reading a dataset.

    Meant to be shown to the user (``summary()``) and kept with a training run
    (``to_json()``), so that a dataset problem is never invisible.
    """

    entries: list[BadFileEntry] = field(default_factory=list)

    def add(self, path: str | os.PathLike, reason: str, action: str) -> None:
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
        self.entries.append(BadFileEntry(os.fspath(path), reason, action))

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def skipped(self) -> list[BadFileEntry]:
        return [e for e in self.entries if e.action == "skipped"]

    @property
    def converted(self) -> list[BadFileEntry]:
        return [e for e in self.entries if e.action == "converted"]

    def summary(self) -> str:
        """Human-readable list of every reported file, skipped ones first."""
        if not self.entries:
            return "No bad files."
        lines = [
            f"{len(self.entries)} file(s) needed attention: "
            f"{len(self.skipped)} skipped (left out), {len(self.converted)} converted (kept)."
        ]
        for e in self.skipped + self.converted:
            lines.append(f"  {e.action:9s} {e.path}: {e.reason}")
        return "\n".join(lines)

    def to_json(self, path: str | os.PathLike) -> None:
        payload = {
            "skipped": len(self.skipped),
            "converted": len(self.converted),
            "entries": [asdict(e) for e in self.entries],
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")


def load_rgb(
    path: str | os.PathLike,
    box: tuple[int, int, int, int] | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Decode an image file to an ``H x W x 3`` uint8 RGB array.

    ``box = (x0, y0, x1, y1)`` crops the (EXIF-oriented) image. Raises
    :class:`BadImageError` for unusable files (see the module docstring) and
    ``OSError`` if the file cannot be read at all (e.g. missing).
    """
    rgb, _ = decode_rgb(path, max_pixels=max_pixels)
    return crop(rgb, box) if box is not None else rgb


def decode_rgb(
    path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, list[str]]:
    """Like :func:`load_rgb` without the box, also returning the conversions made."""
    data = _read_bytes(path)
    im = _open(data, max_pixels)
    with im:
        high_depth = _is_high_depth(im)  # before getexif(), which may load and clear the tiles
        orientation = _orientation(im)
        if high_depth:
            rgb, notes = _decode_high_depth(data, im)
        else:
            rgb, notes = _decode_pil(data, im)
    return _orient(rgb, orientation), notes


def load_mask(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a crack mask to an ``H x W`` bool array (True = crack).

    A pixel is crack if its value is > 127; for RGB and palette masks the
    brightest channel counts (so a pure red crack on black is crack). Alpha is
    ignored. Truncated masks are errors: a partly decoded mask would mislabel.
    """
    data = _read_bytes(path)
    im = _open(data, max_pixels)
    with im:
        orientation = _orientation(im)
        try:
            if im.mode in ("P", "PA"):
                im = im.convert("RGB")
            elif im.mode in ("1", "LA", "La"):
                im = im.convert("L")
            elif im.mode not in ("L", "RGB") and im.mode not in _HIGH_DEPTH_MODES:
                im = im.convert("RGB")
            arr = np.asarray(im)
        except (OSError, SyntaxError, ValueError) as err:
            raise BadImageError(f"mask cannot be decoded ({err})") from err
    arr = _to_uint8(arr)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return _orient(arr > 127, orientation)


def image_size(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` after EXIF orientation, without converting any pixel.

    Only the header is read for JPEG and most formats (Pillow reads a PNG's
    data to look for EXIF after it).
    """
    im = _open(path, max_pixels)
    with im:
        w, h = im.size
        if _orientation(im) in (5, 6, 7, 8):
            w, h = h, w
    return w, h


def check_image(
    path: str | os.PathLike, report: BadFileReport, *, max_pixels: int = MAX_PIXELS
) -> bool:
    """Decode ``path`` fully once; report conversions or the reason it is unusable.

    Returns True if the file can be used (possibly converted).
    """
    try:
        _, notes = decode_rgb(path, max_pixels=max_pixels)
    except BadImageError as err:
        report.add(path, str(err), "skipped")
        return False
    except OSError as err:
        report.add(path, f"cannot read file ({err})", "skipped")
        return False
    if notes:
        report.add(path, "; ".join(notes), "converted")
    return True


def crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``image[y0:y1, x0:x1]``, refusing boxes that leave the image."""
    x0, y0, x1, y1 = box
    h, w = image.shape[:2]
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise BadImageError(f"box {tuple(box)} is outside the {w}x{h} image")
    return image[y0:y1, x0:x1]


# --------------------------------------------------------------------------- internals


def _read_bytes(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _open(source: bytes | str | os.PathLike, max_pixels: int) -> Image.Image:
    """Open file bytes or a path (header only); apply the size limit before decoding."""
    is_bytes = isinstance(source, bytes)
    if (len(source) if is_bytes else os.path.getsize(source)) == 0:
        raise BadImageError("empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(source) if is_bytes else source)
    except UnidentifiedImageError as err:
        raise BadImageError("not an image (format not recognised)") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # The warning only arrives here when warnings are turned into errors.
        raise BadImageError(f"image too large, possible decompression bomb ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"unreadable image header ({err})") from err
    w, h = im.size
    if w <= 0 or h <= 0:
        im.close()
        raise BadImageError(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        im.close()
        raise BadImageError(
            f"image too large: {w}x{h} = {w * h:,} pixels > max_pixels {max_pixels:,} "
            "(possible decompression bomb)"
        )
    return im


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except (OSError, SyntaxError, ValueError, TypeError):  # broken EXIF: ignore it
        return 1
    return value if 1 <= value <= 8 else 1


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (same result as ``ImageOps.exif_transpose``)."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.swapaxes(0, 1)
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = np.rot90(a, 2).swapaxes(0, 1)
    elif orientation == 8:
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)


def _is_high_depth(im: Image.Image) -> bool:
    """16/32-bit or float pixels (Pillow opens 48-bit RGB PNGs as "RGB;16B" tiles)."""
    if im.mode in _HIGH_DEPTH_MODES:
        return True
    return any(";16" in str(getattr(t, "args", "")) for t in (im.tile or []))


def _decode_pil(data: bytes, im: Image.Image) -> tuple[np.ndarray, list[str]]:
    notes: list[str] = []
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as err:
        if im.format != "JPEG":
            raise BadImageError(f"cannot decode {im.format or 'image'} data ({err})") from err
        im = _load_truncated_jpeg(data, err)
        notes.append(
            f"truncated JPEG ({err}); decoded as far as the data goes, the rest is decoder fill"
        )
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im), notes
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "palette"
    if im.mode in _ALPHA_MODES:
        rgba = np.asarray(im.convert("RGBA"))
        notes.append(f"{mode} image: transparency composited on white")
        return _composite_on_white(rgba[..., :3], rgba[..., 3]), notes
    names = {"L": "greyscale", "1": "1-bit", "P": "palette", "CMYK": "CMYK (no ICC profile)"}
    notes.append(f"{names.get(mode, mode)} converted to RGB")
    return np.asarray(im.convert("RGB")), notes


def _load_truncated_jpeg(data: bytes, err: Exception) -> Image.Image:
    """Decode a cut-short JPEG by appending an end-of-image marker."""
    try:
        im = Image.open(io.BytesIO(data + _JPEG_EOI))
        im.load()
    except (OSError, SyntaxError, ValueError) as err2:
        raise BadImageError(f"truncated JPEG that cannot be decoded ({err}; {err2})") from err2
    return im


def _decode_high_depth(data: bytes, im: Image.Image) -> tuple[np.ndarray, list[str]]:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    bgr = True
    if arr is None:  # format OpenCV does not read: fall back to Pillow's array
        try:
            arr = np.asarray(im)
        except (OSError, SyntaxError, ValueError) as err:
            raise BadImageError(f"cannot decode {im.mode} image ({err})") from err
        bgr = False
    notes = [f"{arr.dtype.itemsize * 8}-bit {im.mode} image scaled to 8-bit RGB"]
    arr = _to_uint8(arr)
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2), notes
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2), notes
    if bgr:
        arr = arr[..., [2, 1, 0, 3]] if arr.shape[2] == 4 else arr[..., 2::-1]
    if arr.shape[2] == 4:
        notes.append("transparency composited on white")
        return _composite_on_white(arr[..., :3], arr[..., 3]), notes
    return np.ascontiguousarray(arr[..., :3]), notes


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map any bit depth to uint8 (see the module docstring for the rule)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    a = arr.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if np.issubdtype(arr.dtype, np.integer) and lo >= 0 and hi <= 255:
        return a.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer) and lo >= 0 and hi <= 65535:
        return np.round(a / 257.0).astype(np.uint8)
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float32)[..., None] / 255.0
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.round(out).astype(np.uint8)
