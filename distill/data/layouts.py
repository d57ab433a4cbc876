"""Reading crack datasets from the folder layouts people actually use.

Four layouts are understood (``detect_layout`` picks one):

``folders``
    One sub-folder per class, e.g. ``crack/`` + ``no_crack/`` or Özgenel's
    ``Positive/`` + ``Negative/``. Folder names are matched case-insensitively,
    with ``-``, ``_`` and spaces equivalent: first against the ``labels``
    names themselves, then against the aliases crack / cracked / positive /
    pos / 1 / anything starting with "c" (crack), and no_crack / nocrack /
    non_crack / uncracked / negative / neg / 0 / anything starting with "u"
    (no crack). Files in nested sub-folders of a class folder belong to it.

``sdnet``
    SDNET2018: ``D|P|W/C<x>|U<x>/*.jpg`` (bridge deck, pavement, wall;
    cracked / uncracked). A single surface folder (``.../D`` with ``CD/`` and
    ``UD/``) is read the same way.

``masks``
    ``images/`` + ``masks/`` with the same stems (the mask may have another
    extension). Patches are cut with :func:`distill.data.patches.cut_patches`.

``boxes``
    ``images/`` + ``labels_yolo/`` (or ``labels/``): detection-annotated
    patches, one YOLO text file per image (e.g. the port quay set). An image
    with at least one box is *crack*, one with an empty label file is *no
    crack*; an image without a label file is skipped and reported.

Sources (what splits keep together; see ``splits.py``):

- folders: the true source photo of a patch is unknown. Patches of one photo
  are believed to be numbered consecutively, so by default (``"block:50"``)
  the source is the file's folder (relative to the root) + the name prefix
  (text before the last run of digits) + ``number // 50``: a *proxy* that
  keeps blocks of 50 consecutive numbers together. The folder is part of the
  source because numbering restarts in every class folder. Other rules:
  ``"block:N"``, ``"regex:<pattern>"`` (the named group ``source`` of a
  search in the file stem), ``"none"`` (every file its own source).
  A name without digits is its own source.
- sdnet: surface letter + the part of ``<sourceimage>-<patchnum>`` before
  the dash (e.g. ``D7001``).
- masks: the frame's file stem.
- boxes: the stem without trailing tile coordinates ``_<row>_<col>`` (patches
  cut from one drone photo stay together), else the stem.
- In every layout, files with identical bytes are merged into one source, so
  a duplicated photo can never sit on both sides of a split.

Bad files never stop a read: each image is decoded once with
:func:`~distill.data.imageio.check_image`; unusable ones are left out and
listed in ``report`` as skipped, converted ones are kept and listed. Without
a ``report`` the summary is logged as a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from distill.data.imageio import BadFileReport, BadImageError, check_image, image_size, load_mask
from distill.data.patches import PatchRule, check_mask_size, patches_from_mask
from distill.data.samples import LABELS, HashCache, Sample
from distill.errors import DistillError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
SDNET_SURFACES = {"d": "deck", "p": "pavement", "w": "wall"}
_CRACK_ALIASES = {"crack", "cracks", "cracked", "positive", "pos", "1"}
_NO_CRACK_ALIASES = {
    "no_crack", "no_cracks", "nocrack", "non_crack", "noncrack", "not_crack",
    "uncracked", "negative", "neg", "0",
}
_BOX_LABEL_DIRS = ("labels_yolo", "labels")
_TILE_SUFFIX = re.compile(r"^(?P<source>.+)_\d+_\d+$")
_MASK_PREFERENCE = (".png", ".bmp", ".tif", ".tiff", ".webp", ".jpg", ".jpeg")


class DatasetError(DistillError, ValueError):
    """The dataset cannot be read as asked; the message says what to change."""


def detect_layout(root: str | os.PathLike, *, labels: tuple[str, ...] = LABELS) -> str:
    """"folders", "sdnet", "masks" or "boxes" for the dataset folder ``root``.

    Raises :class:`DatasetError` naming the sub-folders if none fits.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    subdirs = _subdirs(root)
    names = {d.name.lower() for d in subdirs}
    if {"images", "masks"} <= names:
        return "masks"
    if "images" in names and names & set(_BOX_LABEL_DIRS):
        return "boxes"
    if _is_sdnet(root, subdirs):
        return "sdnet"
    unknown = [d.name for d in subdirs if _class_of(d.name, labels) is None
               and not (d.name == FLAGS_EXPORT_UNLABELLED and _flags_export_sources(root) is not None)]
    if subdirs and not unknown:
        return "folders"
    raise DatasetError(
        f"cannot tell the layout of {root}: found sub-folders {sorted(d.name for d in subdirs)}. "
        "Expected one of: a folder per class (e.g. crack/ and no_crack/, Positive/ and "
        "Negative/), SDNET2018 (D/, P/, W/ with C*/ and U*/ inside), images/ + masks/, or "
        "images/ + labels_yolo/."
        + (f" Not a class name: {sorted(unknown)}." if unknown else "")
    )


def read_dataset(
    root: str | os.PathLike,
    *,
    layout: str = "auto",
    patch_rule: PatchRule = PatchRule(),
    source_rule: str = "block:50",
    labels: tuple[str, ...] = LABELS,
    report: BadFileReport | None = None,
    surface: str | None = None,
) -> list[Sample]:
    """Read every usable sample under ``root``, sorted by (path, box).

    ``source_rule`` applies to the "folders" layout; ``surface`` is given to
    every sample of the "folders" and "masks" layouts (SDNET has its own).
    """
    root = Path(os.path.abspath(root))
    source_of = _source_fn(source_rule)  # fail on a bad rule before reading anything
    if layout == "auto":
        layout = detect_layout(root, labels=labels)
    own_report = report is None
    report = BadFileReport() if report is None else report
    hasher = HashCache()
    if layout == "folders":
        samples = _read_folders(root, labels, source_of, surface, report, hasher)
    elif layout == "sdnet":
        samples = _read_sdnet(root, labels, report, hasher)
    elif layout == "masks":
        samples = _read_masks(root, labels, patch_rule, surface, report, hasher)
    elif layout == "boxes":
        samples = _read_boxes(root, labels, surface, report, hasher)
    else:
        raise DatasetError(f"unknown layout {layout!r}; use auto, folders, sdnet, masks or boxes")
    if own_report and len(report):
        log.warning("%s: %s", root, report.summary())
    if not samples:
        raise DatasetError(
            f"no usable sample in {root} (layout {layout}). " + report.summary()
        )
    samples = _merge_duplicate_sources(samples)
    return sorted(samples, key=lambda s: (s.path, s.box or ()))


# --------------------------------------------------------------------------- layouts


def _read_folders(root, labels, source_of, surface, report, hasher) -> list[Sample]:
    classes = {}
    unknown = []
    export_sources = _flags_export_sources(root)
    for d in _subdirs(root):
        if export_sources is not None and d.name == FLAGS_EXPORT_UNLABELLED:
            continue  # unlabelled frames of a flag export: for distillation through teachers only
        label = _class_of(d.name, labels)
        if label is None:
            unknown.append(d.name)
        else:
            classes[d] = label
    if unknown or not classes:
        raise DatasetError(
            f"{root}: sub-folder(s) {sorted(unknown)} are not class names. Use one folder per "
            f"class named after {list(labels)} or crack / no_crack spellings such as "
            "cracked, positive, pos, 1 and uncracked, negative, neg, 0."
        )
    samples = []
    for d, label in sorted(classes.items()):
        for path in _images(d, recursive=True):
            if check_image(path, report):
                rel = path.relative_to(root).as_posix()
                if export_sources is not None and rel in export_sources:
                    source = f"flag:{export_sources[rel]}"
                else:
                    source = f"{path.parent.relative_to(root).as_posix()}/{source_of(path.stem)}"
                samples.append(Sample(str(path), label, source, surface, sha256=hasher(path)))
    return samples


FLAGS_EXPORT_FORMAT = "crack-inspector-flags-export/"
FLAGS_EXPORT_UNLABELLED = "unlabelled"


def _flags_export_sources(root: Path) -> dict[str, str] | None:
    """``{relative file: source}`` of an export of the app's flag store (``metadata.json`` of
    format crack-inspector-flags-export/2 or later), else None. Each patch's source there is
    its flag's uid: one frame's crack and clean tiles must stay in one split, which the file
    name rule cannot know."""
    meta = root / "metadata.json"
    if not meta.is_file():
        return None
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"{meta}: not readable JSON ({err})") from err
    fmt = doc.get("format", "") if isinstance(doc, dict) else ""
    if not isinstance(fmt, str) or not fmt.startswith(FLAGS_EXPORT_FORMAT) or fmt.endswith("/1"):
        return None
    try:
        return {str(p["file"]): str(p["source"]) for p in doc["patches"]}
    except (KeyError, TypeError) as err:
        raise DatasetError(f"{meta}: a flag export whose patches lack file/source ({err})") from err


def _read_sdnet(root, labels, report, hasher) -> list[Sample]:
    crack, no_crack = _binary_labels(labels, "sdnet")
    subdirs = _subdirs(root)
    surfaces = (
        [root] if root.name.lower() in SDNET_SURFACES
        and not any(d.name.lower() in SDNET_SURFACES for d in subdirs)
        else [d for d in subdirs if d.name.lower() in SDNET_SURFACES]
    )
    samples = []
    for sdir in surfaces:
        letter = sdir.name.upper()
        for cdir in _subdirs(sdir):
            first = cdir.name[:1].lower()
            if first not in ("c", "u"):
                raise DatasetError(f"{cdir}: SDNET class folders start with C or U (CD, UD, ...)")
            label = crack if first == "c" else no_crack
            for path in _images(cdir, recursive=True):
                if check_image(path, report):
                    source = letter + path.stem.split("-", 1)[0]
                    samples.append(
                        Sample(str(path), label, source, SDNET_SURFACES[letter.lower()],
                               sha256=hasher(path))
                    )
    return samples


def _read_masks(root, labels, rule, surface, report, hasher) -> list[Sample]:
    crack, no_crack = _binary_labels(labels, "masks")
    dirs = {d.name.lower(): d for d in _subdirs(root)}
    images, masks = _images(dirs["images"]), _images(dirs["masks"])
    masks_by_stem: dict[str, Path] = {}
    for m in sorted(masks, key=lambda p: _mask_rank(p)):
        masks_by_stem.setdefault(m.stem, m)
    image_stems = {p.stem for p in images}
    for stem, m in sorted(masks_by_stem.items()):
        if stem not in image_stems:
            report.add(m, "mask without an image of the same stem in images/", "skipped")
    samples = []
    for path in images:
        mask_path = masks_by_stem.get(path.stem)
        if mask_path is None:
            report.add(path, "no mask with the same stem in masks/", "skipped")
            continue
        if not check_image(path, report):
            continue
        try:
            mask = load_mask(mask_path)
            check_mask_size(mask, image_size(path), mask_path)
        except (BadImageError, OSError) as err:
            report.add(path, f"unusable mask {mask_path.name}: {err}", "skipped")
            continue
        for box, is_crack in patches_from_mask(mask, rule):
            samples.append(
                Sample(str(path), crack if is_crack else no_crack, path.stem, surface, box,
                       hasher(path, box))
            )
    return samples


def _read_boxes(root, labels, surface, report, hasher) -> list[Sample]:
    crack, no_crack = _binary_labels(labels, "boxes")
    dirs = {d.name.lower(): d for d in _subdirs(root)}
    label_dir = next(dirs[n] for n in _BOX_LABEL_DIRS if n in dirs)
    samples = []
    for path in _images(dirs["images"]):
        txt = label_dir / f"{path.stem}.txt"
        if not txt.is_file():
            report.add(path, f"no label file {txt.name} in {label_dir.name}/", "skipped")
            continue
        if not check_image(path, report):
            continue
        has_box = any(line.split() for line in txt.read_text().splitlines())
        tile = _TILE_SUFFIX.match(path.stem)
        source = tile.group("source") if tile else path.stem
        samples.append(Sample(str(path), crack if has_box else no_crack, source, surface, None, hasher(path, None)))
    return samples


# --------------------------------------------------------------------------- helpers


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(d: Path, recursive: bool = False) -> list[Path]:
    """Image files by extension, hidden files and folders excluded, sorted."""
    out = []
    for p in sorted(d.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if recursive:
                out.extend(_images(p, recursive=True))
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            out.append(p)
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-\s]+", "_", name.strip().lower())


def _class_of(folder: str, labels: tuple[str, ...]) -> int | None:
    name = _norm(folder)
    normed = [_norm(label) for label in labels]
    if name in normed:
        return normed.index(name)
    if name in _NO_CRACK_ALIASES or name.startswith("u"):
        canonical = "no_crack"
    elif name in _CRACK_ALIASES or name.startswith("c"):
        canonical = "crack"
    else:
        return None
    return normed.index(canonical) if canonical in normed else None


def _binary_labels(labels: tuple[str, ...], layout: str) -> tuple[int, int]:
    normed = [_norm(label) for label in labels]
    if "crack" not in normed or "no_crack" not in normed:
        raise DatasetError(f"the {layout} layout needs labels 'crack' and 'no_crack', got {labels}")
    return normed.index("crack"), normed.index("no_crack")


def _is_sdnet(root: Path, subdirs: list[Path]) -> bool:
    def has_cu(d: Path) -> bool:
        inner = _subdirs(d)
        return bool(inner) and all(p.name[:1].lower() in ("c", "u") for p in inner)

    surfaces = [d for d in subdirs if d.name.lower() in SDNET_SURFACES]
    if surfaces and len(surfaces) == len(subdirs):
        return all(has_cu(d) for d in surfaces)
    # A single SDNET surface folder such as ".../D" holding CD/ and UD/.
    return root.name.lower() in SDNET_SURFACES and has_cu(root) and all(
        len(d.name) == 2 and d.name[1:].lower() == root.name.lower() for d in subdirs
    )


def _mask_rank(p: Path) -> tuple[int, str]:
    ext = p.suffix.lower()
    return (_MASK_PREFERENCE.index(ext) if ext in _MASK_PREFERENCE else 99, p.name)


def _source_fn(rule: str) -> Callable[[str], str]:
    """Turn a source rule string into a function of the file stem."""
    if rule == "none":
        return lambda stem: stem
    if rule.startswith("block:"):
        try:
            block = int(rule[6:])
        except ValueError:
            block = 0
        if block < 1:
            raise DatasetError(f"bad source rule {rule!r}: block size must be an integer >= 1")
        digits = re.compile(r"^(.*?)(\d+)(\D*)$")

        def by_block(stem: str) -> str:
            m = digits.match(stem)
            return f"{m.group(1)}{int(m.group(2)) // block}" if m else stem

        return by_block
    if rule.startswith("regex:"):
        try:
            pattern = re.compile(rule[6:])
        except re.error as err:
            raise DatasetError(f"bad source rule {rule!r}: {err}") from err
        if "source" not in pattern.groupindex:
            raise DatasetError(f"bad source rule {rule!r}: needs a named group (?P<source>...)")

        def by_regex(stem: str) -> str:
            m = pattern.search(stem)
            if m is None or m.group("source") is None:
                raise DatasetError(f"source rule {rule!r} does not match the file name {stem!r}")
            return m.group("source")

        return by_regex
    raise DatasetError(f"bad source rule {rule!r}: use 'block:N', 'regex:<pattern>' or 'none'")


def _merge_duplicate_sources(samples: list[Sample]) -> list[Sample]:
    """Give samples with identical content one source (the smallest of their sources)."""
    parent: dict[str, str] = {}

    def find(s: str) -> str:
        while parent.get(s, s) != s:
            s = parent[s]
        return s

    first_source: dict[str, str] = {}
    for s in samples:
        other = first_source.setdefault(s.sha256, s.source)
        a, b = find(s.source), find(other)
        if a != b:
            parent[max(a, b)] = min(a, b)
    if not parent:
        return samples
    return [s if find(s.source) == s.source else _with_source(s, find(s.source)) for s in samples]


def _with_source(s: Sample, source: str) -> Sample:
    return Sample(s.path, s.label, source, s.surface, s.box, s.sha256)
