"""The base data of the shipped student: its exact splits, the golden set and the replay set.

``base_splits`` recreates the split ``scripts/build_default_models.py`` trained the shipped
student on (``split_by_source``, seed 0, fractions 0.7/0.15/0.15, Özgenel with the folders
layout's default source rule ``block:50``, port quay by drone photo); that script calls it, so
the two cannot drift apart.

Two folders ship in ``models/`` (built by ``scripts/build_update_assets.py``), each a manifest
CSV (``distill/data/splits.py`` format, paths relative to it) beside the images:

* ``models/golden/golden.csv``: the **test** patches of both sets, which the base never trained
  on; the gate's frozen yardstick. Never train on it.
* ``models/replay/replay.csv``: a fixed sample of the base's **training** patches, replayed
  during an update so that the student does not forget the base data.
"""
from __future__ import annotations

import os
from pathlib import Path

from distill.data.samples import Sample

SEED = 0
FRACTIONS = (0.7, 0.15, 0.15)
MANIFEST_NAMES = ("golden.csv", "replay.csv", "manifest.csv")
SETS = {  # name in the shared data folder -> (surface, licence, citation)
    "ozgenel_ccic_subset": ("wall", "CC BY 4.0",
                            "Özgenel (2019), Concrete Crack Images for Classification, Mendeley Data, "
                            "doi:10.17632/5y9wdsg2zt"),
    "omu_port_quay": ("quay wall", "CC BY-SA 4.0", "Komi et al., Sensors 25 (2025) 4325"),
}


def base_splits(data_root: str | os.PathLike) -> dict[str, dict[str, list[Sample]]]:
    """``{set name: {"train", "val", "test": samples}}`` exactly as the shipped student was split."""
    from distill.data.layouts import read_dataset
    from distill.data.splits import split_by_source

    root = Path(data_root)
    return {name: split_by_source(read_dataset(root / name, surface=surface), fractions=FRACTIONS, seed=SEED)
            for name, (surface, _, _) in SETS.items()}


def read_set(path: str | os.PathLike, patch_size: int = 96, *, verify: bool = False) -> list[Sample]:
    """Samples of a manifest CSV, of a folder holding one (``golden.csv``, ``replay.csv``,
    ``manifest.csv``), or of a dataset folder in any layout ``distill`` reads. ``verify``: a
    manifest's files are re-hashed against it (DatasetError names the missing and changed ones);
    a dataset folder is hashed as it is read anyway."""
    from distill.data.patches import PatchRule
    from distill.data.splits import read_manifest
    from distill.training.runs import read_samples

    path = Path(path)
    if path.is_dir():
        for name in MANIFEST_NAMES:
            if (path / name).is_file():
                return read_manifest(path / name, verify=verify)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix.lower() == ".csv":
        return read_manifest(path, verify=verify)
    return read_samples(path, patch_rule=PatchRule(size=patch_size, stride=patch_size))


def verify_samples(samples: list[Sample], what: str = "golden set") -> None:
    """Re-hash every sample's pixels against the hash it was read with; DatasetError naming the
    missing and changed files (the gate calls it each time it reads the golden set)."""
    from distill.data.layouts import DatasetError
    from distill.data.splits import hash_mismatches

    missing, changed = hash_mismatches(samples)
    if missing or changed:
        parts = ([f"missing ({len(missing)}): " + ", ".join(sorted(missing)[:10])] if missing else []) + \
                ([f"content changed ({len(changed)}): " + ", ".join(sorted(changed)[:10])] if changed else [])
        raise DatasetError(f"the {what} does not match its hashes: " + "; ".join(parts))
