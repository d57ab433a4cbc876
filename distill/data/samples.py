"""The sample record shared by every part of the data layer, and content hashes.

A :class:`Sample` is one labelled patch: an image file, optionally a crop box
of it, its label, and the *source* image it came from. Splits keep all samples
of one source together, so near-identical patches cut from one photo never
end up on both sides of a train/test split.

The ``sha256`` field identifies the pixels a sample stands for. It is used as
the augmentation seed and as a cache key (e.g. for teacher logits), so it must
change whenever the file or the crop changes and nothing else.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

LABELS: tuple[str, ...] = ("no_crack", "crack")
"""Label names; a sample's ``label`` indexes this tuple (0 = no crack, 1 = crack)."""

Box = tuple[int, int, int, int]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Sample:
    """One labelled image or image crop.

    Attributes:
        path: absolute path of the image file.
        label: index into the label names (:data:`LABELS` by default).
        source: id of the source image; splits never separate two samples
            with the same source.
        surface: kind of surface (e.g. "deck", "wall", "pavement"), or None.
        box: ``(x0, y0, x1, y1)`` crop of the image at ``path`` (pixel
            coordinates after EXIF orientation, x1/y1 exclusive), or None
            for the whole image.
        sha256: content hash, see :func:`content_hash`; filled by the readers.
    """

    path: str
    label: int
    source: str
    surface: str | None = None
    box: Box | None = None
    sha256: str = ""


def box_suffix(box: Box) -> bytes:
    """The bytes appended to the file bytes when hashing a crop."""
    x0, y0, x1, y1 = box
    return f":{x0},{y0},{x1},{y1}".encode("ascii")


def file_hasher(path: str | os.PathLike) -> "hashlib._Hash":
    """A sha256 object fed with the bytes of ``path`` (copy it to add a box suffix)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h


def content_hash(path: str | os.PathLike, box: Box | None = None) -> str:
    """sha256 of the file bytes, with ``":x0,y0,x1,y1"`` appended when ``box`` is set."""
    h = file_hasher(path)
    if box is not None:
        h.update(box_suffix(box))
    return h.hexdigest()


class HashCache:
    """Hashes each file once, however many crops of it are hashed.

    Keyed by path only: meant for the lifetime of one read, not across edits.
    """

    def __init__(self) -> None:
        self._files: dict[str, "hashlib._Hash"] = {}

    def __call__(self, path: str | os.PathLike, box: Box | None = None) -> str:
        key = os.fspath(path)
        base = self._files.get(key)
        if base is None:
            base = self._files[key] = file_hasher(key)
        h = base.copy()
        if box is not None:
            h.update(box_suffix(box))
        return h.hexdigest()
