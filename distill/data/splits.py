"""Leakage-free splits, label subsampling and CSV manifests.

Splits are made per *source* image, never per sample: patches cut from one
photo are near-duplicates, and letting them straddle train and test inflates
test scores. Each source goes to a split by a stable hash of
``(seed, source)`` mapped to [0, 1) and compared with the cumulative
fractions. That makes the assignment

- deterministic and independent of the order of the samples,
- stable when data is added: a new source never moves an existing one,
- exact at the source level (a source is in exactly one split) but only
  approximate in sample counts, especially for few or unequal sources.

A manifest is a CSV file (``path,label,source,surface,box,sha256``) that
freezes a split, so a training run can be repeated and audited; with
``verify=True`` reading it checks that no file changed since.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from inspector.fsio import write_atomic

from distill.data.layouts import DatasetError
from distill.data.samples import HashCache, Sample

MANIFEST_COLUMNS = ("path", "label", "source", "surface", "box", "sha256")


def source_unit(seed: int, source: str, salt: str = "split") -> float:
    """Stable pseudo-random number in [0, 1) for a source (same on every machine)."""
    digest = hashlib.sha256(f"{salt}:{seed}:{source}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_by_source(
    samples: Iterable[Sample],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    names: Sequence[str] = ("train", "val", "test"),
) -> dict[str, list[Sample]]:
    """Split samples so that no source is in two splits (see the module docstring).

    Fractions refer to sources, not samples. Raises :class:`DatasetError` if a
    split with a non-zero fraction ends up empty (too few sources).
    """
    samples = list(samples)
    if len(fractions) != len(names):
        raise ValueError(f"{len(fractions)} fractions for {len(names)} names")
    if len(set(names)) != len(names):
        raise ValueError(f"split names must be distinct: {names}")
    if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {tuple(fractions)}")
    bounds = [sum(fractions[: i + 1]) for i in range(len(fractions))]

    def split_of(source: str) -> str:
        u = source_unit(seed, source)
        for name, bound, frac in zip(names, bounds, fractions):
            if u < bound and frac > 0:
                return name
        return [n for n, f in zip(names, fractions) if f > 0][-1]  # float rounding at 1.0

    assigned = {source: split_of(source) for source in {s.source for s in samples}}
    out: dict[str, list[Sample]] = {name: [] for name in names}
    for s in sorted(samples, key=_sort_key):
        out[assigned[s.source]].append(s)
    empty = [n for n, f in zip(names, fractions) if f > 0 and not out[n]]
    if empty:
        raise DatasetError(
            f"split(s) {empty} would be empty: only {len(assigned)} source(s) for fractions "
            f"{dict(zip(names, fractions))}. Splits are made per source image so that patches "
            "of one photo never leak between them; add data, change the seed or the fractions, "
            "or use a finer source rule only if the sources really are independent."
        )
    return out


def subsample_labels(samples: Iterable[Sample], fraction: float, seed: int = 0) -> list[Sample]:
    """Keep all samples of ``fraction`` of the sources (at least one), sorted by path.

    For the "only 10 % of the images are labelled" regime. Sources are grouped
    by their majority label and each group keeps ``round(fraction * n)`` of
    its sources (at least one), so both classes stay present where possible.
    Within a group sources are ranked by a stable hash, so the result does not
    depend on sample order and a smaller fraction keeps a subset of what a
    larger one keeps (same seed).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    samples = sorted(samples, key=_sort_key)
    by_source: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_source[s.source].append(s)
    strata: dict[int, list[str]] = defaultdict(list)
    for source, members in by_source.items():
        counts = Counter(s.label for s in members)
        majority = min(counts, key=lambda label: (-counts[label], label))
        strata[majority].append(source)
    keep: set[str] = set()
    for sources in strata.values():
        ranked = sorted(sources, key=lambda src: (source_unit(seed, src, "subsample"), src))
        keep.update(ranked[: max(1, round(fraction * len(ranked)))])
    return [s for s in samples if s.source in keep]


def write_manifest(path: str | os.PathLike, samples: Iterable[Sample]) -> None:
    """Write samples as CSV (header ``path,label,source,surface,box,sha256``).

    ``box`` is written as ``"x0 y0 x1 y1"``, empty for whole images; an
    unknown surface is empty. Written to a temporary file first, so an
    interrupted write never leaves a half manifest.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(raw) -> None:
        f = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        w = csv.writer(f)
        w.writerow(MANIFEST_COLUMNS)
        for s in samples:
            box = " ".join(str(v) for v in s.box) if s.box is not None else ""
            w.writerow([s.path, s.label, s.source, s.surface or "", box, s.sha256])
        f.flush()
        f.detach()   # write_atomic fsyncs and closes the file itself

    write_atomic(path, write)


def read_manifest(path: str | os.PathLike, *, verify: bool = False) -> list[Sample]:
    """Read a manifest written by :func:`write_manifest`.

    Relative paths are taken relative to the manifest's folder. With
    ``verify=True`` every hash is recomputed and :class:`DatasetError` lists
    the missing files and the ones whose content changed.
    """
    path = Path(path)
    base = path.parent.resolve()
    samples = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != MANIFEST_COLUMNS:
            raise DatasetError(
                f"{path}: not a manifest, the header must be {','.join(MANIFEST_COLUMNS)}"
            )
        for line_no, row in enumerate(reader, start=2):
            try:
                samples.append(_parse_row(row, base))
            except (ValueError, TypeError) as err:
                raise DatasetError(f"{path}, line {line_no}: {err}") from err
    if verify:
        _verify(path, samples)
    return samples


def _parse_row(row: list[str], base: Path) -> Sample:
    if len(row) != len(MANIFEST_COLUMNS):
        raise ValueError(f"expected {len(MANIFEST_COLUMNS)} fields, got {len(row)}")
    p, label, source, surface, box, sha = row
    parsed_box = None
    if box.strip():
        values = tuple(int(v) for v in box.split())
        if len(values) != 4:
            raise ValueError(f"box must be 4 integers 'x0 y0 x1 y1', got {box!r}")
        parsed_box = values
    full = p if os.path.isabs(p) else str(base / p)
    return Sample(full, int(label), source, surface or None, parsed_box, sha)


def hash_mismatches(samples: list[Sample]) -> tuple[list[str], list[str]]:
    """``(missing, changed)``: the samples' files that are gone, and those (with their box) whose
    pixels no longer hash to what the manifest recorded."""
    hasher = HashCache()
    missing, changed = [], []
    for s in samples:
        if not os.path.isfile(s.path):
            missing.append(s.path)
        elif hasher(s.path, s.box) != s.sha256:
            changed.append(s.path + (f" box {s.box}" if s.box else ""))
    return missing, changed


def _verify(path: Path, samples: list[Sample]) -> None:
    missing, changed = hash_mismatches(samples)
    if missing or changed:
        def listing(title: str, items: list[str], limit: int = 50) -> str:
            items = sorted(set(items))
            more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
            return f"{title} ({len(items)}):\n  " + "\n  ".join(items[:limit]) + more

        parts = [listing("missing", missing)] if missing else []
        parts += [listing("content changed (sha256 mismatch)", changed)] if changed else []
        raise DatasetError(f"manifest {path} does not match the files:\n" + "\n".join(parts))


def _sort_key(s: Sample) -> tuple:
    return (s.path, s.box or (), s.label, s.source)
