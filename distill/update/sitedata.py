"""The site's data: labelled patches, unlabelled frames, and their split by source.

* ``--labelled``: any layout ``distill`` reads (a flag export of the app is the folders layout,
  its per-patch ``source`` the flag uid; mask-annotated frames are cut with ``PatchRule`` at
  ``patch_size``).
* ``--unlabelled``: a folder of images, or the ``unlabelled/`` of a flag export (used when
  ``--unlabelled`` is not given and the labelled folder has one). An image at least twice
  ``patch_size`` on a side is a camera frame and is cut on the centred ``patch_size`` grid of
  the masks layout; a smaller one is a patch. They reach the student only through the
  teachers' soft labels (``label`` = :data:`UNLABELLED`).

The labelled data are split **by source** (``distill/data/splits.py``) into the *adapt* part
(teachers and student train on it) and the *site-validation* part (the gate's site check and
the threshold rule). Unlabelled patches of a site-validation source are dropped, so no pixel
of a validation frame is trained on, not even through the teachers.

:func:`make_site_folders` builds a field-like site from a mask-annotated set (tests, benchmarks).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from distill.data.samples import Sample
from distill.update.errors import UpdateDataError

UNLABELLED = -1
MIN_LABELLED = 8


def read_labelled(path: str, patch_size: int) -> list[Sample]:
    from distill.data.layouts import DatasetError
    from distill.update.basedata import read_set

    try:
        samples = read_set(path, patch_size)
    except (DatasetError, FileNotFoundError) as exc:
        raise UpdateDataError(f"--labelled {path}: {exc}") from None
    counts = [sum(s.label == c for s in samples) for c in (0, 1)]
    if len(samples) < MIN_LABELLED or min(counts) == 0:
        raise UpdateDataError(f"--labelled {path}: {counts[1]} crack and {counts[0]} no-crack patches; an update "
                              f"needs both classes and at least {MIN_LABELLED} labelled patches")
    return samples


def unlabelled_dir(cfg_unlabelled: str | None, labelled: str) -> str | None:
    if cfg_unlabelled:
        return cfg_unlabelled
    inside = Path(labelled) / "unlabelled"
    return str(inside) if inside.is_dir() and any(inside.iterdir()) else None


def read_unlabelled(folder: str | None, patch_size: int) -> list[Sample]:
    """Every patch of the images in ``folder`` (see the module docstring), label UNLABELLED."""
    from distill.data.imageio import BadFileReport, check_image, image_size
    from distill.data.layouts import _images
    from distill.data.patches import PatchRule
    from distill.data.samples import HashCache

    if folder is None:
        return []
    root = Path(folder)
    sources = _export_sources(root)
    rule, hasher, report = PatchRule(size=patch_size, stride=patch_size), HashCache(), BadFileReport()
    out = []
    for path in _images(root, recursive=True):
        if not check_image(path, report):
            continue
        source = sources.get(path.name, path.stem)
        w, h = image_size(path)
        boxes = rule.grid(w, h) if max(w, h) >= 2 * patch_size else [None]
        out += [Sample(str(path), UNLABELLED, source, None, box, hasher(path, box)) for box in boxes]
    if not out:
        raise UpdateDataError(f"--unlabelled {folder}: no usable image ({report.summary()})")
    return out


def _export_sources(root: Path) -> dict[str, str]:
    """``{file name: "flag:<uid>"}`` for the unlabelled/ folder of a flag export, as layouts.py names sources."""
    meta = root.parent / "metadata.json"
    if root.name != "unlabelled" or not meta.is_file():
        return {}
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
        return {Path(p["file"]).name: f"flag:{p['source']}" for p in doc["patches"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def site_units(samples: list[Sample]) -> dict[str, tuple[int, int]]:
    """source → (crack patches, clean patches)."""
    units: dict[str, list[int]] = {}
    for s in samples:
        u = units.setdefault(s.source, [0, 0])
        u[0 if s.label == 1 else 1] += 1
    return {k: (v[0], v[1]) for k, v in units.items()}


def split_site(labelled: list[Sample], val_fraction: float, seed: int):
    """(adapt, site-validation, the SiteSplit): stratified by class over sources by
    ``inspector.update.plan.site_split`` (the rule the app's plan shows before Start).
    UpdateDataError, before any training, when site validation cannot hold at least
    ``SITE_MIN_PER_CLASS`` patches of each class (the gate could not promote the candidate)."""
    from inspector.update.plan import SITE_MIN_PER_CLASS, site_split

    split = site_split(site_units(labelled), val_fraction=val_fraction, seed=seed)
    if split.missing:
        raise UpdateDataError(
            f"--labelled: the site-validation part cannot hold {SITE_MIN_PER_CLASS} crack and "
            f"{SITE_MIN_PER_CLASS} clean patches ({split.val_crack} crack / {split.val_clean} clean from "
            f"{len(split.val)} sources; training part {split.adapt_crack} crack / {split.adapt_clean} clean), so no "
            f"candidate could pass the gate's site rule; stopped before training: " + "; ".join(split.missing))
    val_sources = set(split.val)
    adapt = [s for s in labelled if s.source not in val_sources]
    val = [s for s in labelled if s.source in val_sources]
    return adapt, val, split


LABEL_SOURCES = ("tile_marked", "frame_clean", "verdicts_accepted")


def label_source_counts(folder: str, labelled: list[Sample] | None = None) -> dict[str, int]:
    """How the labelled patches of a flag export were labelled: ``{label_source: patches}`` from
    its metadata.json (or metadata.csv), per labelled patch; ``unknown`` where the field is absent
    (older exports) or the folder is no flag export. ``labelled``: count these samples (matched
    by file) instead of every labelled row of the metadata."""
    import csv

    root = Path(folder)
    rows = None
    try:
        if (root / "metadata.json").is_file():
            rows = json.loads((root / "metadata.json").read_text(encoding="utf-8"))["patches"]
        elif (root / "metadata.csv").is_file():
            with open(root / "metadata.csv", newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
    except (OSError, ValueError, KeyError, TypeError):
        rows = None
    by_file = {}
    for r in rows or []:
        if isinstance(r, dict) and r.get("file") and r.get("label") != "unlabelled":
            by_file[str(Path(str(r["file"])))] = str(r.get("label_source") or "unknown")
    if labelled is None:
        names = list(by_file.values())
    else:
        names = []
        for s in labelled:
            try:
                rel = str(Path(s.path).resolve().relative_to(root.resolve()))
            except ValueError:
                rel = None
            names.append(by_file.get(rel, "unknown") if rel is not None else "unknown")
    out: dict[str, int] = {}
    for n in names:
        out[n] = out.get(n, 0) + 1
    return dict(sorted(out.items()))


def usable_unlabelled(unlabelled: list[Sample], labelled: list[Sample], val: list[Sample],
                      cap: int | None, seed: int) -> list[Sample]:
    """Drop duplicates of labelled patches and every patch of a validation source; cap by source."""
    from distill.data.splits import source_unit

    seen = {s.sha256 for s in labelled}
    val_sources = {s.source for s in val}
    kept = [s for s in unlabelled if s.sha256 not in seen and s.source not in val_sources]
    if cap is not None and len(kept) > cap:
        order = sorted({s.source for s in kept}, key=lambda src: source_unit(seed, src, "unlabelled"))
        chosen, n = set(), 0
        by_source: dict[str, int] = {}
        for s in kept:
            by_source[s.source] = by_source.get(s.source, 0) + 1
        for src in order:
            if n + by_source[src] > cap and chosen:
                break
            chosen.add(src)
            n += by_source[src]
        kept = [s for s in kept if s.source in chosen]
    return kept


def make_site_folders(masks_root: str | os.PathLike, out: str | os.PathLike, *, n_labelled: int = 100,
                      test_fraction: float = 0.3, patch_size: int = 96, seed: int = 0,
                      max_frames: int | None = None) -> dict:
    """A field-like site from mask-annotated frames (``images/`` + ``masks/``), split by frame:

    ``out/test/`` (held-out frames, masks layout), ``out/labelled/`` (whole frames, masks layout,
    taken in a seeded order until they give ``n_labelled`` patches) and ``out/unlabelled/`` (the
    other frames, images only). Returns the counts. ``max_frames`` caps the frames used (tests).
    """
    from distill.data.layouts import read_dataset
    from distill.data.patches import PatchRule
    from distill.data.splits import source_unit

    root, out = Path(masks_root), Path(out)
    samples = read_dataset(root, patch_rule=PatchRule(size=patch_size, stride=patch_size))
    frames: dict[str, list[Sample]] = {}
    for s in samples:
        frames.setdefault(s.source, []).append(s)
    names = sorted(frames, key=lambda f: source_unit(seed, f, "site-frames"))[:max_frames]
    test = [f for f in names if source_unit(seed, f, "site-test") < test_fraction]
    rest = [f for f in names if f not in test]
    labelled, n = [], 0
    for f in rest:
        if n >= n_labelled:
            break
        labelled.append(f)
        n += len(frames[f])
    unlabelled = [f for f in rest if f not in labelled]
    for part, chosen, with_masks in (("test", test, True), ("labelled", labelled, True), ("unlabelled", unlabelled, False)):
        for f in chosen:
            image = Path(frames[f][0].path)
            dest = out / part / ("images" if with_masks else "") / image.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(image, dest)
            if with_masks:
                mask = next(p for p in (root / "masks").iterdir() if p.stem == image.stem)
                (out / part / "masks").mkdir(parents=True, exist_ok=True)
                shutil.copy2(mask, out / part / "masks" / mask.name)
    count = lambda fs: sum(len(frames[f]) for f in fs)  # noqa: E731
    return {"frames": {"test": len(test), "labelled": len(labelled), "unlabelled": len(unlabelled)},
            "patches": {"test": count(test), "labelled": count(labelled), "unlabelled_labelled": count(unlabelled)}}
