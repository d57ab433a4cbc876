"""``distill``: train teachers, distil students, evaluate models, split datasets.

    distill split DATA --out DIR
    distill train-teacher --arch efficientnet_lite0 --data DATA --out runs/t0
    distill distil --student mobilenet_v3_small --teacher runs/t0/best.pt --loss kd --data DATA --out runs/s
    distill eval MODEL DATA --out metrics.json
    distill export-teachers T0.pt T1.pt T2.pt --samples DATA --eval NAME=PATH --out models/
    distill update --base PACKAGE --labelled DIR --out DIR     (JSON-line events on stdout)
    distill demo

Every training command takes ``--config FILE`` (YAML); flags given on the command line win.
The resolved configuration is written to ``<out>/config.yaml``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distill.config import ConfigError, RunConfig, apply_overrides, load_config
from distill.training.progress import ProgressPrinter

EXIT_USAGE = 2


def _common_training_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML configuration file (flags override it)")
    p.add_argument("--data", help="dataset folder: folder per class, SDNET2018 or images/+masks/")
    p.add_argument("--train-manifest", help="train split manifest (CSV) instead of --data")
    p.add_argument("--val-manifest")
    p.add_argument("--test-manifest")
    p.add_argument("--out", help="run folder (checkpoints, manifests, config, summary)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--patience", type=int, help="epochs without better val MCC before stopping")
    p.add_argument("--input-size", type=int, help="model input side in pixels")
    p.add_argument("--label-fraction", type=float, help="use only this fraction of training sources")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--max-steps", type=int, help="cap steps per epoch (quick runs)")
    p.add_argument("--no-augment", action="store_true", help="disable training augmentation")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if <out>/last.pt exists")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("split", help="split a dataset by source image and write manifests")
    p.add_argument("data")
    p.add_argument("--out", required=True)
    p.add_argument("--layout", default="auto", choices=["auto", "folders", "sdnet", "masks"])
    p.add_argument("--source-rule", default="block:50")
    p.add_argument("--fractions", type=float, nargs=3, default=(0.7, 0.15, 0.15))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patch-size", type=int, default=96)
    p.add_argument("--patch-stride", type=int, default=96)

    p = sub.add_parser("train-teacher", help="fine-tune a teacher on hard labels")
    p.add_argument("--arch", help="architecture (default efficientnet_lite0)")
    p.add_argument("--init", help="start from this local weights file instead of ImageNet")
    p.add_argument("--scratch", action="store_true", help="random initialisation")
    _common_training_flags(p)

    p = sub.add_parser("distil", help="distil a student from a teacher ensemble")
    p.add_argument("--student", help="student architecture (default mobilenet_v3_small)")
    p.add_argument("--teacher", action="append", help="teacher checkpoint (repeat for an ensemble)")
    p.add_argument("--average", choices=["logits", "probs"], help="how the ensemble averages")
    p.add_argument("--loss", help="ce, kd, kd+fitnet, kd+rkd, kd+fitnet+rkd")
    p.add_argument("-T", "--temperature", type=float)
    p.add_argument("--alpha", type=float, help="weight of the KD term against hard-label CE")
    p.add_argument("--init", help="start the student from this local weights file")
    p.add_argument("--imagenet", action="store_true", help="start the student from ImageNet (Lite only)")
    p.add_argument("--cache", help="teacher-output cache file (shared between runs)")
    _common_training_flags(p)

    p = sub.add_parser("eval", help="evaluate a model on a dataset folder and write every metric as JSON")
    p.add_argument("model", help="checkpoint (.pt) or model package (.crackpkg, FP32 or INT8)")
    p.add_argument("data", help="dataset folder in any supported layout, or a manifest CSV")
    p.add_argument("--out", help="metrics JSON file (default: print only)")
    p.add_argument("--layout", default="auto", choices=["auto", "folders", "sdnet", "masks"])
    p.add_argument("--source-rule", default="block:50")
    p.add_argument("--patch-size", type=int, default=96)
    p.add_argument("--patch-stride", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=128)

    p = sub.add_parser("export", help="export a checkpoint to FP32 and INT8 model packages (.crackpkg)")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="folder for the packages and the report")
    p.add_argument("--name", required=True, help="package name, e.g. crack-student")
    p.add_argument("--version", required=True, help="e.g. 1.0.0 (the INT8 child gets 1.0.0-int8)")
    p.add_argument("--parent", help="what this model was fine-tuned from: a version, or its package (.crackpkg), "
                                    "whose version and tiling the new packages inherit")
    p.add_argument("--tiling", metavar="SIZE[:OVERLAP]",
                   help="frame pixels per tile (and overlap fraction) for the app; default: the parent package's, "
                        "else the checkpoint's")
    p.add_argument("--calibration", required=True, help="training data (folder or manifest) to calibrate INT8 on")
    p.add_argument("--eval", action="append", default=[], metavar="NAME=PATH",
                   help="evaluation set recorded in the manifest (repeat); the first is held out for the INT8 report")
    p.add_argument("--training-data", action="append", default=[], metavar="NAME=LICENCE",
                   help="dataset the model was trained on, with its licence (repeat)")
    p.add_argument("--no-int8", action="store_true", help="write only the FP32 package")
    p.add_argument("--calibration-count", type=int, default=256)
    p.add_argument("--method", default="minmax", choices=["minmax", "entropy", "percentile"])
    p.add_argument("--patch-size", type=int, default=96)

    p = sub.add_parser("export-teachers", help="export a teacher ensemble to one FP32 model package (.crackpkg)")
    p.add_argument("teachers", nargs="+", help="teacher checkpoints (.pt), averaged as in distillation")
    p.add_argument("--out", required=True, help="folder for the package and its report")
    p.add_argument("--name", default="crack-teachers")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--average", default="logits", choices=["logits", "probs"],
                   help="how the ensemble averages (distillation's default: logits)")
    p.add_argument("--samples", required=True,
                   help="training data (folder or manifest): real patches to check the export and as references")
    p.add_argument("--eval", action="append", default=[], metavar="NAME=PATH",
                   help="evaluation set recorded in the manifest (repeat)")
    p.add_argument("--training-data", action="append", default=[], metavar="NAME=LICENCE",
                   help="dataset the teachers were trained on, with its licence (repeat)")
    p.add_argument("--tile-size", type=int, default=160, help="frame pixels per tile: the student's (manifest)")
    p.add_argument("--tile-overlap", type=float, default=0.0, help="tile overlap: the student's (manifest)")
    p.add_argument("--patch-size", type=int, default=96)

    from distill.update.command import add_parser as add_update_parser

    add_update_parser(sub)

    p = sub.add_parser("demo", help="a few-minute end-to-end demo on the shared Özgenel data")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/ozgenel_ccic_subset"))
    p.add_argument("--out", default="runs/demo")
    return parser


def _training_config(args, defaults: dict) -> RunConfig:
    """The command's defaults, then the --config file, then the flags given."""
    cfg = apply_overrides(RunConfig(), defaults)
    if args.config:
        cfg = load_config(args.config, base=cfg)
    overrides = {
        "data.root": args.data, "data.train_manifest": args.train_manifest,
        "data.val_manifest": args.val_manifest, "data.test_manifest": args.test_manifest,
        "out": args.out, "train.epochs": args.epochs, "train.batch_size": args.batch_size,
        "train.lr": args.lr, "train.seed": args.seed, "train.patience": args.patience,
        "data.input_size": args.input_size, "data.label_fraction": args.label_fraction,
        "train.device": args.device, "train.num_workers": args.workers,
        "train.max_steps_per_epoch": args.max_steps,
        "data.augment": False if args.no_augment else None,
    }
    return apply_overrides(cfg, overrides)


def cmd_train_teacher(args) -> int:
    from distill.training.runs import run

    cfg = _training_config(args, {"loss.name": "ce", "model.arch": "efficientnet_lite0",
                                  "model.pretrained": True, "train.lr": 3e-4, "out": "runs/teacher"})
    pretrained = args.init if args.init else (False if args.scratch else None)
    apply_overrides(cfg, {"model.arch": args.arch, "model.pretrained": pretrained, "loss.name": "ce"})
    summary = run(cfg, callback=ProgressPrinter(), resume=not args.no_resume)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_distil(args) -> int:
    from distill.training.runs import run

    from distill.training.losses import needs_teacher

    cfg = _training_config(args, {"out": "runs/student"})
    pretrained = args.init if args.init else (True if args.imagenet else None)
    apply_overrides(cfg, {
        "model.arch": args.student, "model.pretrained": pretrained, "loss.name": args.loss,
        "loss.temperature": args.temperature, "loss.alpha": args.alpha, "teachers": args.teacher,
        "ensemble_average": args.average, "cache": args.cache,
    })
    if needs_teacher(cfg.loss.name):
        if not cfg.teachers:
            raise ConfigError(f"loss {cfg.loss.name!r} needs a teacher: give --teacher CHECKPOINT "
                              "(repeat it for an ensemble) or teachers: in the --config file")
        for path in cfg.teachers:
            if not Path(path).is_file():
                raise FileNotFoundError(f"no teacher checkpoint at {path}")
    summary = run(cfg, callback=ProgressPrinter(), resume=not args.no_resume)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_eval(args) -> int:
    from distill.data.patches import PatchRule
    from distill.training.runs import evaluate_model_path

    result = evaluate_model_path(args.model, args.data, layout=args.layout, batch_size=args.batch_size,
                                 patch_rule=PatchRule(size=args.patch_size, stride=args.patch_stride),
                                 source_rule=args.source_rule)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    m = result["metrics"]
    print(f"{args.model} on {args.data}: n={m['n']} MCC {m['mcc']:.4f} acc {m['accuracy']:.4f} "
          f"F1 {m['f1']:.4f} AUC {m['roc_auc'] if m['roc_auc'] is None else round(m['roc_auc'], 4)}")
    skipped = [e for e in result["bad_files"] if e["action"] == "skipped"]
    if skipped:   # the metrics are over the rest: say so, with or without --out
        where = f" (all listed in {args.out})" if args.out else ""
        print(f"skipped {len(skipped)} files that could not be used, not counted in n{where}:")
        for e in skipped[:20]:
            print(f"  {e['path']}: {e['reason']}")
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more" + ("" if args.out else "; --out FILE.json lists them all"))
    return 0


def cmd_split(args) -> int:
    from distill.data.imageio import BadFileReport
    from distill.data.patches import PatchRule
    from distill.data.splits import split_by_source, write_manifest
    from distill.training.runs import read_samples

    report = BadFileReport()
    samples = read_samples(args.data, layout=args.layout, report=report, source_rule=args.source_rule,
                           patch_rule=PatchRule(size=args.patch_size, stride=args.patch_stride))
    splits = split_by_source(samples, fractions=tuple(args.fractions), seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        write_manifest(out / f"{name}.csv", part)
        crack = sum(s.label == 1 for s in part)
        print(f"{name}: {len(part)} samples ({crack} crack), {len({s.source for s in part})} sources")
    report.to_json(out / "bad_files.json")
    if len(report):
        print(report.summary())
    return 0


def _named(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{flag} takes NAME=VALUE, got {item!r}")
        out[key] = value
    return out


def cmd_export(args) -> int:
    from distill.data.patches import PatchRule
    from distill.export.package import build_packages
    from distill.training.runs import read_samples

    rule = PatchRule(size=args.patch_size, stride=args.patch_size)
    eval_sets = {k: read_samples(v, patch_rule=rule) for k, v in _named(args.eval, "--eval").items()}
    if not eval_sets:
        raise ValueError("give at least one --eval NAME=PATH: a package records its metrics")
    training = [{"name": k, "licence": v} for k, v in _named(args.training_data, "--training-data").items()]
    if not training:
        raise ValueError("give --training-data NAME=LICENCE for every dataset the model was trained on")
    parent_version, tiling = _export_lineage(args)
    report = build_packages(args.checkpoint, args.out, name=args.name, version=args.version,
                            parent_version=parent_version, calibration=read_samples(args.calibration, patch_rule=rule),
                            eval_sets=eval_sets, training_data=training, int8=not args.no_int8,
                            calibration_count=args.calibration_count, method=args.method, tiling=tiling)
    if report["tiling"] is None:
        print("warning: the packages have no tiling: the app will cut tiles of the model's input size with 25 % "
              "overlap; give --tiling SIZE[:OVERLAP] or --parent PACKAGE", file=sys.stderr)
    for variant, path in report["packages"].items():
        mccs = "  ".join(f"{k} MCC {v['mcc']:.4f}" for k, v in report["metrics"][variant].items())
        print(f"{variant}: {path}  {mccs}")
    if "quantization" in report:
        q = report["quantization"]
        print(f"INT8 vs FP32: {q['size_ratio']:.2f}x smaller, top-1 agreement {q['top1_agreement']:.4f}, "
              f"heat-map correlation {q['cam_corr_mean']:.3f}, speed-up {q['speedup_batch1']:.2f}x (batch 1), "
              f"{q['speedup_tile']:.2f}x (tile batch)")
    return 0


def parse_tiling(text: str) -> dict:
    size, _, overlap = text.partition(":")
    try:
        tiling = {"size": int(size), "overlap": float(overlap) if overlap else 0.0}
    except ValueError:
        raise ValueError(f"--tiling takes SIZE[:OVERLAP] (e.g. 160 or 160:0.25), got {text!r}") from None
    if tiling["size"] < 1 or not 0.0 <= tiling["overlap"] < 1.0:
        raise ValueError(f"--tiling: size must be >= 1 and overlap in [0, 1), got {text!r}")
    return tiling


def _export_lineage(args) -> tuple[str | None, dict | None]:
    """(parent version, tiling) from --parent (a version or a package) and --tiling."""
    parent, tiling = args.parent, parse_tiling(args.tiling) if args.tiling else None
    if parent and parent.endswith(".crackpkg"):
        from inspector.edge.fields import PackageError
        from inspector.edge.package import load_package

        try:
            m = load_package(parent, verify_reference=False).manifest
        except PackageError as exc:
            raise ValueError(f"--parent {parent}: {exc}") from None
        parent = m.version if m.quantization.type == "fp32" else m.parent_version
        if tiling is None and m.tiling is not None:
            tiling = m.tiling.to_dict()
    return parent, tiling


def cmd_export_teachers(args) -> int:
    from distill.data.patches import PatchRule
    from distill.training.runs import read_samples
    from distill.export.teachers import build_teacher_package

    rule = PatchRule(size=args.patch_size, stride=args.patch_size)
    eval_sets = {k: read_samples(v, patch_rule=rule) for k, v in _named(args.eval, "--eval").items()}
    training = [{"name": k, "licence": v} for k, v in _named(args.training_data, "--training-data").items()]
    if not training:
        raise ValueError("give --training-data NAME=LICENCE for every dataset the teachers were trained on")
    for path in args.teachers:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no teacher checkpoint at {path}")
    report = build_teacher_package(args.teachers, args.out, samples=read_samples(args.samples, patch_rule=rule),
                                   eval_sets=eval_sets, training_data=training, name=args.name,
                                   version=args.version, average=args.average,
                                   tiling={"size": args.tile_size, "overlap": args.tile_overlap})
    check = report["export"]
    mccs = "  ".join(f"{k} MCC {v['mcc']:.4f}" for k, v in report["metrics"].items())
    print(f"{Path(args.out) / report['package']}  probs vs PyTorch max |Δ| {check['probs_max_abs_diff']:.2g}  {mccs}")
    return 0


def cmd_update(args) -> int:
    from distill.update.command import main as update_main

    return update_main(args)


def cmd_demo(args) -> int:
    from distill.demo import run_demo

    return run_demo(Path(args.data), Path(args.out))


COMMANDS = {"split": cmd_split, "train-teacher": cmd_train_teacher, "distil": cmd_distil,
            "eval": cmd_eval, "export": cmd_export, "export-teachers": cmd_export_teachers, "demo": cmd_demo,
            "update": cmd_update}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"distill {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # permissions, a full disk: not a usage error, but no traceback either
        print(f"distill {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"distill {args.command}: interrupted (training resumes from <out>/last.pt when run again)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
