"""Make "wrong models": packages that look like the shipped student but are not it.

For measuring how well a model package's reference check (``reference.npz`` against the
package's own ONNX) tells a different model from the right one; ``benchmarks/reference_margin.py``
will use them. Not shipped, not for inspection: write them outside the repository.

    python scripts/make_wrong_models.py OUT_DIR     # ~10 min on 2 shared cores, 1 torch thread

(measured: sibling training 445 s, its packages 61 s; the update 47 s; evaluation ~20 s.)

Makes, into OUT_DIR (each skipped when its two packages are already there):

* **sibling** ``crack-student-9.0.0{,-int8}.crackpkg``: the shipped student's recipe
  (``scripts/build_default_models.py``: ResNet-18 from scratch, 96 px, Hinton KD from the
  shipped teachers ``models/teachers/*.pt``, same split, batch 64, lr 2e-3) with another seed
  (``SIBLING_SEED``) and 2 epochs instead of 4: the same kind of model, trained apart.
  Its checkpoint and report lie beside it; the training run is in ``OUT_DIR/work/sibling``.
* **other version** ``crack-student-9.1.0{,-int8}.crackpkg``: the shipped 1.1.0 fine-tuned
  by ``distill update --fast --recipe finetune`` (``distill.update.pipeline.run_update``) on
  about 200 labelled CrackForest pavement patches (``make_site_folders``, seed 0) plus the replay
  set (about 5 steps), with the threshold recalibration the update adopts (0.9, baked in). The
  gate passed it (golden MCC -0.004); pass or refuse does not matter here. ``update.json``, its
  checkpoint and report lie beside it.

Plain versions, no ``-sibling`` suffix: the INT8 child's version is ``VERSION-int8`` and the
package format allows one pre-release part only (``9.0.0-sibling-int8`` is refused). What each is
stands in the manifests' ``extra`` (the sibling's purpose and seed; the update's lineage).

Every seed is fixed (torch on one thread; distill.training.loop.fit is deterministic on CPU), so a re-run
should give the same models (not checked bit for bit). Finally
``OUT_DIR/wrong-models.json`` lists the packages with their MCC on the Özgenel test split.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import build_default_models as bdm  # noqa: E402  (prepare, TRAINING_DATA, DATA, TEACHERS)

NAME = "crack-student"
SHIPPED = REPO / "models" / "crack-student-1.1.1.crackpkg"
SIBLING_VERSION, SIBLING_SEED, SIBLING_EPOCHS = "9.0.0", 1, 2   # the shipped student: seed 0, 4 epochs
OTHER_VERSION, OTHER_SEED, OTHER_LABELLED = "9.1.0", 0, 200
HELD_OUT = "ozgenel_test (wall)"


def packages(out: Path, version: str) -> dict[str, Path]:
    return {"fp32": out / f"{NAME}-{version}.crackpkg", "int8": out / f"{NAME}-{version}-int8.crackpkg"}


def have(out: Path, version: str) -> bool:
    return all(p.is_file() for p in packages(out, version).values())


def make_sibling(out: Path, splits, eval_sets) -> None:
    """The shipped recipe (build_default_models.main's student), another seed, shipped teachers."""
    from distill.models.checkpoint import atomic_torch_save
    from distill.models.weights import read_checkpoint
    from distill.training.progress import ProgressPrinter
    from distill.config import DataConfig, LossConfig, ModelConfig, RunConfig
    from distill.export.package import build_packages
    from distill.training.runs import run
    from distill.training.loop import TrainConfig
    from inspector.edge.package import load_package

    work = out / "work" / "sibling"
    cfg = RunConfig(
        data=DataConfig(train_manifest=str(out / "work" / "train.csv"), val_manifest=str(out / "work" / "val.csv"),
                        test_manifest=str(out / "work" / "test.csv"), input_size=96),
        model=ModelConfig("resnet18", pretrained=False), loss=LossConfig(name="kd"),
        train=TrainConfig(batch_size=64, patience=2, seed=SIBLING_SEED, epochs=SIBLING_EPOCHS, lr=2e-3),
        teachers=[str(REPO / "models" / "teachers" / f"{arch}.pt") for arch in bdm.TEACHERS],
        cache=str(work / "teacher_cache.sqlite"), out=str(work))
    t0 = time.perf_counter()
    summary = run(cfg, callback=ProgressPrinter("sibling "))
    print(f"sibling: trained in {time.perf_counter() - t0:.0f} s (best val MCC {summary['best_val_mcc']:.4f}, "
          f"epoch {summary['best_epoch'] + 1} of {summary['epochs_run']})", flush=True)

    t0 = time.perf_counter()
    tiling = load_package(SHIPPED, verify_reference=False).manifest.tiling.to_dict()
    report = build_packages(work / "best.pt", out, name=NAME, version=SIBLING_VERSION,
                            calibration=splits["train"], eval_sets=eval_sets, training_data=bdm.TRAINING_DATA,
                            tiling=tiling, extra={"purpose": "wrong model for reference-check margins (sibling of 1.1.0), not shipped",
                                                  "seed": SIBLING_SEED, "epochs": SIBLING_EPOCHS})
    report["student_summary"] = summary
    (out / f"{NAME}-{SIBLING_VERSION}.report.json").write_text(json.dumps(report, indent=2, default=str))
    # float32 weights beside the packages, as distill update expects of a base
    ckpt = read_checkpoint(work / "best.pt")
    ckpt["meta"].setdefault("extra", {})["tiling"] = tiling
    atomic_torch_save(ckpt, out / f"{NAME}-{SIBLING_VERSION}.pt")
    print(f"sibling: packaged in {time.perf_counter() - t0:.0f} s", flush=True)


def make_other(out: Path) -> None:
    """distill update --fast --recipe finetune from the shipped 1.1.0 on a few CrackForest patches."""
    from distill.update.config import UpdateConfig
    from distill.update.pipeline import run_update
    from distill.update.sitedata import make_site_folders

    t0 = time.perf_counter()
    site = out / "work" / "crackforest-site"
    if not (site / "labelled").is_dir():
        counts = make_site_folders(bdm.DATA / "crackforest_cfd", site, n_labelled=OTHER_LABELLED, seed=OTHER_SEED)
        print(f"other: CrackForest site {counts}", flush=True)

    def show(event: dict) -> None:
        kind = event.get("event")
        if kind == "stage" and event.get("status") in ("done", "skipped"):
            print(f"other: {event['stage']} {event['status']}: {event.get('detail') or ''}", flush=True)
        elif kind in ("epoch", "gate", "error") or (kind == "log" and event.get("level") != "info"):
            print(f"other: {json.dumps(event, default=str)}", flush=True)

    cfg = UpdateConfig(base=str(SHIPPED), labelled=str(site / "labelled"), out=str(out), recipe="finetune",
                       fast=True, seed=OTHER_SEED, version=OTHER_VERSION, threads=1,
                       site_name="crackforest (wrong-model maker)", site_licence="CrackForest, non-commercial")
    record = run_update(cfg, emit=show)
    shutil.rmtree(out / ".work", ignore_errors=True)   # a refused update keeps it for an override; not needed
    print(f"other: done in {time.perf_counter() - t0:.0f} s (gate {'passed' if record['gate']['passed'] else 'refused'}"
          f": {', '.join(record['gate']['failed']) or '-'})", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder for the packages (outside the repository)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    (out / "work").mkdir(parents=True, exist_ok=True)

    import torch

    torch.set_num_threads(1)
    from distill.export.package import evaluate_package

    t0 = time.perf_counter()
    splits, eval_sets = bdm.prepare(out / "work", 96)
    print(f"data: splits {({k: len(v) for k, v in splits.items()})} in {time.perf_counter() - t0:.0f} s", flush=True)

    for version, make in ((SIBLING_VERSION, lambda: make_sibling(out, splits, eval_sets)),
                          (OTHER_VERSION, lambda: make_other(out))):
        if have(out, version):
            print(f"{version}: already in {out}, skipped", flush=True)
            continue
        t0 = time.perf_counter()
        make()
        print(f"{version}: {time.perf_counter() - t0:.0f} s", flush=True)

    summary = {}
    for version in (SIBLING_VERSION, OTHER_VERSION):
        for variant, path in packages(out, version).items():
            m = evaluate_package(path, eval_sets[HELD_OUT])
            summary[path.name] = {"path": str(path), "mcc_ozgenel_test": m["mcc"], "accuracy": m["accuracy"],
                                  "n": m["n"]}
            print(f"wrote {path}  Özgenel test MCC {m['mcc']:.4f} (n={m['n']})", flush=True)
    (out / "wrong-models.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
