"""Reviewed flags as a dataset the distillation engine reads: the inspector's labels, never the model's.

Layout of the export (the "folders" layout of ``distill/data/layouts.py``)::

    crack/<flag uid>_<tile>.png       tiles the inspector's review calls crack
    no_crack/<flag uid>_<tile>.png    tiles the review calls clean
    unlabelled/<flag uid>_<tile>.png  only with include_unreviewed: unreviewed and "unsure" frames,
                                      for distillation through the teachers' soft labels
    metadata.csv, metadata.json       one row per patch

Rules:

- A frame reviewed ``crack`` or ``no_crack`` exports every tile with its reviewed tile label
  (``label_source`` "review"). The review view always stores tile labels with a frame label;
  a ``crack`` frame without them (labelled by a v2 app, which did not say which tiles hold the
  crack) is left out and counted in ``needs_tiles``, not filled in with the model's verdicts.
- Unreviewed and ``unsure`` frames are left out, unless ``include_unreviewed``: then their
  tiles go to ``unlabelled/`` (``label`` "unlabelled").
- Every patch's ``source`` is its flag's uid, and ``distill`` reads it from ``metadata.json``, so a
  split can never put two tiles of one frame on both sides (the file-name rule of the folders
  layout would make one frame's crack and clean tiles different sources).
- Flags whose frame cannot be read are skipped and listed.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .store_checks import check_prob
from .store_query import FlagFilter
from .store_schema import TILE_LABELS, StoreError

log = logging.getLogger(__name__)

FORMAT = "crack-inspector-flags-export/2"
UNLABELLED = "unlabelled"
METADATA_FIELDS = ("file", "flag_uid", "source", "box", "label", "label_source", "crack_prob", "teacher_prob",
                   "frame_label", "reviewer", "reviewed_at", "camera", "model_name", "model_version",
                   "model_sha256", "created", "location", "note")


@dataclass(frozen=True)
class ExportReport:
    out_dir: Path
    flags: int                    # flags whose patches were exported
    crack: int                    # patches per label
    no_crack: int
    unlabelled: int = 0
    reviewed: int = 0             # patches labelled by a review
    skipped: tuple[str, ...] = ()  # uids left out because their frame could not be read
    needs_tiles: tuple[str, ...] = ()  # uids of crack frames without tile labels (left out)
    left_out: int = 0             # unreviewed or unsure flags not exported

    @property
    def patches(self) -> int:
        return self.crack + self.no_crack + self.unlabelled


def export_flags(store, out_dir: str | os.PathLike, *, include_unreviewed: bool = False,
                 flt: FlagFilter | None = None, threshold: float | None = None) -> ExportReport:
    """Write the flags ``flt`` matches (default: all) to ``out_dir`` (see the module docstring).

    ``threshold`` is accepted for the v2 command line and ignored: labels come from the review.
    """
    if threshold is not None:
        check_prob("threshold", threshold)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StoreError(f"{out} is not an empty folder; export into a new or empty one")
    records = store.query(flt or FlagFilter(), sort="time", descending=False)
    folders = TILE_LABELS + ((UNLABELLED,) if include_unreviewed else ())
    for folder in folders:
        (out / folder).mkdir(parents=True, exist_ok=True)
    rows, skipped, needs_tiles, left_out, flags = [], [], [], 0, 0
    for rec in records:
        labels = _patch_labels(rec, include_unreviewed)
        if labels is None:
            if rec.label == "crack":
                needs_tiles.append(rec.uid)
            else:
                left_out += 1
            continue
        try:
            frame = store.load_frame(rec)
        except StoreError as err:
            log.warning("export: flag %s skipped: %s", rec.uid, err)
            skipped.append(rec.uid)
            continue
        flags += 1
        for i, (tile, label) in enumerate(zip(rec.tiles, labels)):
            rows.append(_write_patch(out, frame, rec, i, tile, label))
    _write_metadata(out, rows)
    count = {label: sum(r["label"] == label for r in rows) for label in folders}
    return ExportReport(out, flags, count["crack"], count["no_crack"], count.get(UNLABELLED, 0),
                        sum(r["label_source"] == "review" for r in rows), tuple(skipped), tuple(needs_tiles),
                        left_out)


def count_export(store, *, include_unreviewed: bool = False, flt: FlagFilter | None = None) -> dict[str, int]:
    """What :func:`export_flags` would write, without writing or reading a picture: patches per
    label (``crack``, ``no_crack``, ``unlabelled``) and frames (``frames``: labelled,
    ``unlabelled_frames``, ``needs_tiles``). Flags whose image is unreadable are still counted."""
    counts = {"crack": 0, "no_crack": 0, UNLABELLED: 0, "frames": 0, "unlabelled_frames": 0, "needs_tiles": 0}
    for rec in store.query(flt or FlagFilter(), sort="time", descending=False):
        labels = _patch_labels(rec, include_unreviewed)
        if labels is None:
            counts["needs_tiles"] += rec.label == "crack"
            continue
        counts["unlabelled_frames" if labels and labels[0] == UNLABELLED else "frames"] += 1
        for label in labels:
            counts[label] += 1
    return counts


def _patch_labels(rec, include_unreviewed: bool) -> tuple[str, ...] | None:
    """The label of each tile of ``rec`` in the export, or None to leave the flag out."""
    if rec.label in TILE_LABELS:
        if rec.tile_labels is not None:
            return rec.tile_labels
        if rec.label == "no_crack":   # a clean frame has only clean tiles
            return ("no_crack",) * len(rec.tiles)
        return None
    return (UNLABELLED,) * len(rec.tiles) if include_unreviewed else None


def _write_patch(out: Path, frame: np.ndarray, rec, i: int, tile: dict, label: str) -> dict:
    x0, y0, x1, y1 = tile["box"]
    name = f"{label}/{rec.uid}_{i:03d}.png"
    patch = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", patch)
    if not ok:
        raise StoreError(f"OpenCV could not encode tile {i} of flag {rec.uid} as PNG")
    (out / name).write_bytes(buf.tobytes())
    teacher = rec.teacher_probs[i] if rec.teacher_probs is not None else None
    return {"file": name, "flag_uid": rec.uid, "source": rec.uid, "box": [x0, y0, x1, y1], "label": label,
            "label_source": "review" if label != UNLABELLED else UNLABELLED, "crack_prob": tile["crack_prob"],
            "teacher_prob": teacher, "frame_label": rec.label, "reviewer": rec.reviewer,
            "reviewed_at": rec.reviewed_at, "camera": rec.source, "model_name": rec.model.name,
            "model_version": rec.model.version, "model_sha256": rec.model.sha256, "created": rec.created,
            "location": rec.location, "note": rec.note}


# A spreadsheet runs a cell that starts with one of these as a formula ("CSV injection"): a
# note typed in the field, e.g. "=HYPERLINK(...)", must open as the text it is.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_FREE_TEXT = ("camera", "location", "note", "reviewer")


def csv_text(value) -> str:
    """A free-text field for metadata.csv: an apostrophe before a formula start (spreadsheets
    show the text without it); metadata.json keeps the text exactly as typed."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _write_metadata(out: Path, rows: list[dict]) -> None:
    with open(out / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=METADATA_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "box": " ".join(map(str, row["box"])),
                             **{k: csv_text(row[k]) for k in _FREE_TEXT}})
    doc = {"format": FORMAT, "labels": list(TILE_LABELS), "unlabelled_folder": UNLABELLED,
           "source": "flag_uid", "patches": rows}
    (out / "metadata.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False), encoding="utf-8")
