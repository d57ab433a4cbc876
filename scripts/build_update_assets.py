"""Build what ``distill update`` needs beside the shipped student, from the shipped packages and the
shared data (offline, deterministic):

    python scripts/build_update_assets.py                 # all three
    python scripts/build_update_assets.py --checkpoint    # only models/crack-student-<V>.pt

* ``models/crack-student-<V>.pt``: the base student's PyTorch weights, recovered from the FP32
  package's ONNX initializers (``distill/export/recover.py``), batch-norm statistics re-measured on 512 of
  its training patches, stored as float16. Checked: re-exported, the float32 recovery reproduces
  the package's reference probs and heat-maps (printed; ≤ 1e-5 required), the float16 file within
  within 1e-3 (float16 weights: 3.4e-4 measured).
* ``models/golden/``: the test patches of the base's exact split (Özgenel + port quay), never
  trained on; checked against the train and validation splits by content hash.
* ``models/replay/``: a fixed, seeded sample of the base's training patches for replay.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
REPLAY_PER_SET = {"ozgenel_ccic_subset": 360, "omu_port_quay": 40}


def recover_checkpoint(models: Path, version: str, splits) -> None:
    import numpy as np

    from distill.models.checkpoint import atomic_torch_save, load_classifier
    from distill.models.weights import FORMAT
    from distill.export.package import uint8_patches
    from distill.export.recover import recover_classifier, verify_against_package
    from inspector.edge.package import load_package

    pkg = load_package(models / f"crack-student-{version}.crackpkg")
    train = [s for parts in splits.values() for s in parts["train"]]
    rng = np.random.default_rng(0)
    calib = uint8_patches([train[i] for i in sorted(rng.choice(len(train), 512, replace=False))], pkg.manifest.input.size)
    model = recover_classifier(pkg, calib)
    with tempfile.TemporaryDirectory() as tmp:
        exact = verify_against_package(model, pkg, tmp)
        print(f"recovered (float32), re-exported vs the package's reference: {exact}")
        if exact["probs_max_abs_diff"] > 1e-5 or exact.get("cam_max_abs_diff", 0.0) > 1e-5:
            raise SystemExit("recovery does not reproduce the package within 1e-5")
        out = models / f"crack-student-{version}.pt"
        # float16 weights (half the file); the folded normalisation's mean/std stay float32
        state = {k: v.detach().half() if v.is_floating_point() and k not in ("mean", "std") else v.detach()
                 for k, v in model.state_dict().items()}
        atomic_torch_save({"format": FORMAT, "meta": model.meta.to_dict(), "state_dict": state,
                           "info": {"recovered_from": f"crack-student-{version}.crackpkg",
                                    "model_sha256": pkg.manifest.model_sha256, "stored_as": "float16",
                                    "reexport_vs_package_float32": exact}}, out)
        stored = verify_against_package(load_classifier(out), pkg, tmp)
    print(f"stored (float16) {out}: {stored} (bound {FLOAT16_ATOL})")
    if stored["probs_max_abs_diff"] > FLOAT16_ATOL:
        raise SystemExit(f"the float16 checkpoint does not reproduce the package within {FLOAT16_ATOL}")


# float16 weights move p by up to 3.4e-4 on the reference images near the decision boundary; another
# model moves it by tenths (docs/benchmarks/reference_margin.md)
FLOAT16_ATOL = 1e-3


def write_set(folder: Path, name: str, samples, readme: str) -> None:
    from distill.data.splits import write_manifest
    from distill.update.basedata import SETS

    if folder.exists():
        shutil.rmtree(folder)
    rows = []
    for s in samples:
        rel = Path("images") / ("ozgenel" if s.surface == "wall" else "port_quay") / \
            ("crack" if s.label == 1 else "no_crack") / Path(s.path).name
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(s.path, folder / rel)
        rows.append(s.__class__(str(rel), s.label, s.source, s.surface, s.box, s.sha256))
    write_manifest(folder / name, rows)
    (folder / "README.md").write_text(readme)
    credits = "\n".join(f"- `{'ozgenel' if surface == 'wall' else 'port_quay'}/`: {cite}. Licence: {licence}."
                        for surface, licence, cite in SETS.values())
    (folder / "CREDITS.md").write_text(
        "# Credits\n\nThe images here are unchanged copies from two public datasets:\n\n" + credits +
        "\n\nCC BY 4.0: https://creativecommons.org/licenses/by/4.0/ ; CC BY-SA 4.0: "
        "https://creativecommons.org/licenses/by-sa/4.0/ (share-alike: redistribute the port quay images under the "
        "same licence).\n")


def build_golden(models: Path, splits) -> None:
    test = [s for parts in splits.values() for s in parts["test"]]
    seen = {s.sha256 for parts in splits.values() for k in ("train", "val") for s in parts[k]}
    leaked = [s.path for s in test if s.sha256 in seen]
    if leaked:
        raise SystemExit(f"{len(leaked)} test patches have a twin in the train/val split: {leaked[:3]}")
    counts = {name: len(parts["test"]) for name, parts in splits.items()}
    write_set(models / "golden", "golden.csv", test, GOLDEN_README.format(n=len(test), **counts))
    print(f"golden: {len(test)} patches {counts}, none in the base's train or validation split (by content hash)")


def build_replay(models: Path, splits) -> None:
    from distill.data.splits import source_unit

    picked = []
    for name, n in REPLAY_PER_SET.items():
        train = sorted(splits[name]["train"], key=lambda s: source_unit(0, s.sha256, "replay-pool"))
        picked += train[:n]
    write_set(models / "replay", "replay.csv", picked, REPLAY_README.format(n=len(picked), **REPLAY_PER_SET))
    print(f"replay: {len(picked)} training patches")


GOLDEN_README = """# The golden set

{n} patches the shipped student never trained on: the **test** part of the exact split
`scripts/build_default_models.py` made (`distill/update/basedata.py: base_splits`, seed 0,
70/15/15 by source): Özgenel wall patches ({ozgenel_ccic_subset}; source = blocks of 50 file
numbers) and port quay patches ({omu_port_quay}; source = drone photo, all crack). Built by
`scripts/build_update_assets.py`, which checks by content hash that none of them is in the
train or validation split.

`distill update` gates every candidate on it: a candidate may lose at most 0.01 MCC here
against its base. Frozen: never train on it, never change it (a changed golden set makes
gate results of different updates incomparable). `golden.csv` is the manifest (paths
relative to it; `surface` says which set).
"""

REPLAY_README = """# The replay set

{n} patches of the shipped student's **training** split (Özgenel {ozgenel_ccic_subset}, port quay
{omu_port_quay}, a seeded sample), replayed by `distill update` with their labels so that a
student fine-tuned on a new site does not forget the surfaces it knew. Built by
`scripts/build_update_assets.py`; `replay.csv` is the manifest (paths relative to it).
Disjoint from the golden set.
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=str(REPO / "models"))
    ap.add_argument("--version", default="1.1.1")
    ap.add_argument("--checkpoint", action="store_true")
    ap.add_argument("--golden", action="store_true")
    ap.add_argument("--replay", action="store_true")
    args = ap.parse_args()
    every = not (args.checkpoint or args.golden or args.replay)
    from distill.update.basedata import base_splits

    splits = base_splits(DATA)
    models = Path(args.models)
    if every or args.checkpoint:
        recover_checkpoint(models, args.version, splits)
    if every or args.golden:
        build_golden(models, splits)
    if every or args.replay:
        build_replay(models, splits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
