"""Reviewed flags as a dataset the distillation engine reads: the inspector's labels, never the model's.

Layout of the export (the "folders" layout of ``distill/data/layouts.py``)::

    crack/<flag uid>_<tile>.png       tiles a person called crack
    no_crack/<flag uid>_<tile>.png    tiles a person called clean
    unlabelled/<flag uid>_<tile>.png  only with include_unreviewed: tiles nobody labelled (of
                                      unreviewed and "unsure" frames, and the unknown tiles of
                                      crack frames), for distillation through the teachers' soft labels
    metadata.csv, metadata.json       one row per patch

Rules:

- A tile is written to ``crack/`` or ``no_crack/`` only with a label a person gave it
  (``store_schema`` v4); ``label_source`` says how: ``tile_marked`` (the inspector toggled that
  tile), ``frame_clean`` (N: the whole frame is clean), ``verdicts_accepted`` (Space: the
  verdicts shown were accepted). A ``no_crack`` frame's unknown tiles (a frame labelled clean
  through the v2 ``update`` API) are clean: that is what the frame label says (``frame_clean``).
- A tile nobody labelled is **never** written as ``no_crack``: the unknown tiles of a ``crack``
  frame (C said "there is a crack here", not where) are treated like the tiles of an
  unreviewed frame: written to ``unlabelled/`` with ``include_unreviewed`` (``label_source``
  "unlabelled"), else left out. A ``crack`` frame without any tile a person called crack is
  listed in ``needs_tiles`` (its known tiles are still written).
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

from inspector.store.checks import check_prob
from inspector.store.query import FlagFilter
from inspector.store.schema import TILE_LABELS, StoreError

log = logging.getLogger(__name__)

FORMAT = "crack-inspector-flags-export/2"
UNLABELLED = "unlabelled"
# how a person gave a tile its label (store_schema.TILE_SOURCES) -> metadata ``label_source``
LABEL_SOURCES = {"marked": "tile_marked", "frame_clean": "frame_clean", "accepted": "verdicts_accepted"}
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
    reviewed: int = 0             # patches labelled by a person (any LABEL_SOURCES value)
    skipped: tuple[str, ...] = ()  # uids left out because their frame could not be read
    needs_tiles: tuple[str, ...] = ()  # uids of crack frames without a tile a person called crack
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
        if rec.label == "crack" and rec.needs_tiles:
            needs_tiles.append(rec.uid)
        labels = _patch_labels(rec, include_unreviewed)
        if not any(label is not None for label, _ in labels):
            left_out += rec.label not in TILE_LABELS
            continue
        try:
            frame = store.load_frame(rec)
        except StoreError as err:
            log.warning("export: flag %s skipped: %s", rec.uid, err)
            skipped.append(rec.uid)
            continue
        flags += 1
        for i, (tile, (label, source)) in enumerate(zip(rec.tiles, labels)):
            if label is not None:
                rows.append(_write_patch(out, frame, rec, i, tile, label, source))
    _write_metadata(out, rows)
    count = {label: sum(r["label"] == label for r in rows) for label in folders}
    return ExportReport(out, flags, count["crack"], count["no_crack"], count.get(UNLABELLED, 0),
                        sum(r["label_source"] in LABEL_SOURCES.values() for r in rows), tuple(skipped),
                        tuple(needs_tiles), left_out)


def count_export(store, *, include_unreviewed: bool = False, flt: FlagFilter | None = None) -> dict[str, int]:
    """What :func:`export_flags` would write, without writing or reading a picture: patches per
    label (``crack``, ``no_crack``, ``unlabelled``) and frames (``frames``: labelled,
    ``unlabelled_frames``, ``needs_tiles``). Flags whose image is unreadable are still counted."""
    counts = {"crack": 0, "no_crack": 0, UNLABELLED: 0, "frames": 0, "unlabelled_frames": 0, "needs_tiles": 0}
    for rec in store.query(flt or FlagFilter(), sort="time", descending=False):
        counts["needs_tiles"] += rec.needs_tiles
        labels = [label for label, _ in _patch_labels(rec, include_unreviewed) if label is not None]
        if not labels:
            continue
        counts["frames" if rec.label in TILE_LABELS else "unlabelled_frames"] += 1
        for label in labels:
            counts[label] += 1
    return counts


def _patch_labels(rec, include_unreviewed: bool) -> list[tuple[str | None, str | None]]:
    """``(label, label_source)`` of each tile of ``rec`` in the export; label None: left out."""
    unknown = (UNLABELLED, UNLABELLED) if include_unreviewed else (None, None)
    if rec.label not in TILE_LABELS:
        return [unknown] * len(rec.tiles)
    out = []
    for i in range(len(rec.tiles)):
        label = rec.tile_labels[i] if rec.tile_labels is not None else None
        if label is not None:
            out.append((label, LABEL_SOURCES[rec.tile_source(i) or "marked"]))
        elif rec.label == "no_crack":   # a clean frame has only clean tiles: what the person said
            out.append(("no_crack", LABEL_SOURCES["frame_clean"]))
        else:                           # a crack frame's tile nobody labelled: never no_crack
            out.append(unknown)
    return out


def _write_patch(out: Path, frame: np.ndarray, rec, i: int, tile: dict, label: str, source: str) -> dict:
    x0, y0, x1, y1 = tile["box"]
    name = f"{label}/{rec.uid}_{i:03d}.png"
    patch = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", patch)
    if not ok:
        raise StoreError(f"OpenCV could not encode tile {i} of flag {rec.uid} as PNG")
    (out / name).write_bytes(buf.tobytes())
    teacher = rec.teacher_probs[i] if rec.teacher_probs is not None else None
    return {"file": name, "flag_uid": rec.uid, "source": rec.uid, "box": [x0, y0, x1, y1], "label": label,
            "label_source": source, "crack_prob": tile["crack_prob"],
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
