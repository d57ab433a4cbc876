"""Re-release the shipped student without retraining: same FP32 weights, exact INT8, telling references.

    python scripts/rerelease_student.py --from 1.1.0 --to 1.1.1     # ~5 min on 2 cores

From ``models/crack-student-FROM.crackpkg`` (its ``model.onnx`` is reused byte for byte) it writes

* ``crack-student-TO.crackpkg``: the same FP32 model with the new reference set (48 real patches,
  24 of them near the decision boundary: :mod:`distill.export.reference`) and its provenance;
* ``crack-student-TO-int8.crackpkg``: re-quantized with 7-bit weights (``reduce_range``), the
  same 256 calibration patches and min-max ranges as before, so that onnxruntime computes it
  exactly on every CPU, AVX2 included (:mod:`distill.export.quantize`);
* ``crack-student-TO.report.json`` and ``crack-student-TO.pt`` (a copy of FROM's weights);

and gives ``crack-teachers-*.crackpkg`` the new reference set in place (same model, same version).
Every package gets a new version when its model changes; the FP32 model does not change, but
it travels with its INT8 child (``NAME-V.crackpkg`` beside ``NAME-V-int8.crackpkg``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from build_default_models import TRAINING_DATA, prepare  # noqa: E402


def rereference_teachers(models: Path, splits) -> Path:
    """The teacher package with the new reference set; model, version and metrics unchanged."""
    from distill.export import reference as refsel
    from distill.export.package import onnx_session, reference_pool, reference_spec, run_onnx
    from inspector.edge.package import load_package, write_package

    path = sorted(models.glob("crack-teachers-*.crackpkg"))[-1]
    pkg = load_package(path, verify_reference=False)
    session = onnx_session(pkg.onnx_bytes)
    pool = reference_pool(splits["train"], pkg.manifest.input.size, seed=0)
    crack = pkg.manifest.label_index("crack")
    images = pool[refsel.select(run_onnx(session, pool)["probs"][:, crack])]
    ref = run_onnx(session, images, outputs=("probs", "cam"))
    manifest = pkg.manifest.to_dict()
    manifest["reference"] = reference_spec("fp32", session)
    return write_package(path, manifest, pkg.onnx_bytes, {"image": images, **ref})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", default="1.1.0")
    ap.add_argument("--to", dest="dst", default="1.1.1")
    ap.add_argument("--models", default=str(REPO / "models"))
    ap.add_argument("--work", default=str(REPO / "runs" / "rerelease"))
    args = ap.parse_args()
    models, work = Path(args.models), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    from distill.export.package import package_onnx
    from inspector.edge.package import load_package

    src = load_package(models / f"crack-student-{args.src}.crackpkg")
    m = src.manifest
    splits, eval_sets = prepare(work, m.input.size)
    meta = {"architecture": m.architecture, "size": m.input.size, "labels": list(m.labels),
            "mean": list(m.preprocessing.mean), "std": list(m.preprocessing.std)}
    extra = {**m.extra, "rerelease_of": args.src,
             "rerelease": (f"model.onnx of {args.src} byte for byte; INT8 re-quantized with 7-bit weights "
                           f"(exact on AVX2 too); 48 reference images chosen to tell models apart")}
    with tempfile.TemporaryDirectory(prefix="rerelease-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        fp32.write_bytes(src.onnx_bytes)
        report = package_onnx(fp32, models, meta=meta, name=m.name, version=args.dst, calibration=splits["train"],
                              eval_sets=eval_sets, training_data=TRAINING_DATA, parent_version=args.src,
                              tiling=m.tiling.to_dict() if m.tiling else None, extra=extra)
    old_report = models / f"crack-student-{args.src}.report.json"
    if old_report.is_file():
        old = json.loads(old_report.read_text())
        report = {**{k: old[k] for k in ("export", "student_summary", "recipe") if k in old}, **report}
    (models / f"crack-student-{args.dst}.report.json").write_text(json.dumps(report, indent=2, default=str))
    shutil.copyfile(models / f"crack-student-{args.src}.pt", models / f"crack-student-{args.dst}.pt")
    teachers = rereference_teachers(models, splits)
    print(json.dumps({"packages": report["packages"], "teachers": str(teachers),
                      "int8": {k: v.get("mcc") for k, v in report["metrics"]["int8"].items()},
                      "fp32": {k: v.get("mcc") for k, v in report["metrics"]["fp32"].items()},
                      "reference": report["reference"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
