"""A stand-in for ``distill update`` in the app's fast tests: same arguments, the same JSON-lines
events (made with inspector.update.protocol, so they are valid by construction), a real
``OUT/update.json`` and real candidate packages (the shipped packages re-written under a bumped
version with inspector.edge.package.write_package, so a device verifies and runs them). No torch.

    python tests/fake_update.py update --base PKG --labelled DIR [--unlabelled DIR] --out DIR ...

``FAKE_UPDATE_MODE``: ``pass`` (default), ``fail`` (the gate fails on site validation),
``error`` (the job fails in distil), ``hold`` (stops in the second student epoch and sleeps:
for Cancel and screenshots). SIGTERM: a ``cancelled`` event, exit 3, nothing half-written.
``FAKE_UPDATE_DELAY``: seconds between events (default 0.01).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inspector.update import protocol as U  # noqa: E402

MODE = os.environ.get("FAKE_UPDATE_MODE", "pass")
DELAY = float(os.environ.get("FAKE_UPDATE_DELAY", "0.01"))
current_stage = "read"


def emit(kind: str, **fields) -> None:
    print(U.encode(U.make_event(kind, **fields)), flush=True)
    time.sleep(DELAY)


def on_term(signum, frame) -> None:
    emit("cancelled", stage=current_stage)
    sys.exit(U.EXIT_CANCELLED)


def bump(version: str) -> str:
    major, minor, *_ = (version.split("-")[0].split(".") + ["0", "0"])[:3]
    return f"{major}.{int(minor) + 1}.0"


def stage(name: str, index: int, work: int = 4, detail: str | None = None) -> None:
    global current_stage
    current_stage = name
    emit("stage", stage=name, status="start", index=index, of=len(U.STAGES), **({"detail": detail} if detail else {}))
    for done in range(1, work + 1):
        emit("progress", stage=name, done=done, total=work, eta_s=round((work - done) * 0.5, 1))


def stage_done(name: str, index: int) -> None:
    emit("stage", stage=name, status="done", index=index, of=len(U.STAGES))


def write_candidates(base: Path, out: Path, version: str) -> dict:
    from inspector.edge.package import load_package, write_package

    int8_src = base if "-int8" in base.name else base.with_name(base.name.replace(".crackpkg", "-int8.crackpkg"))
    if not int8_src.is_file():
        from inspector.paths import default_model
        int8_src = default_model()
    fp32_src = int8_src.with_name(int8_src.name.replace("-int8", ""))
    paths = {}
    for key, src, ver, parent in (("int8", int8_src, f"{version}-int8", version),
                                  ("fp32", fp32_src, version, base_version(base))):
        if not src.is_file():
            continue
        p = load_package(src, verify_reference=False)
        m = p.manifest.to_dict()
        m.update(version=ver, parent_version=parent, signature=None,
                 created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        name = f"crack-student-{ver}.crackpkg"
        paths[key] = str(write_package(out / name, m, p.onnx_bytes, p.reference, verify=key == "int8"))
    ckpt = out / f"crack-student-{version}.pt"
    ckpt.write_bytes(b"fake checkpoint of a test job, not a torch file\n")
    paths["checkpoint"] = str(ckpt)
    return paths


def base_version(base: Path) -> str:
    import zipfile

    with zipfile.ZipFile(base) as zf:
        m = json.loads(zf.read("manifest.json"))
    return m["parent_version"] if m["version"].endswith("-int8") and m.get("parent_version") else m["version"]


def gate(passed: bool) -> dict:
    """A verdict shaped like distill/update/gate.py's: FP32 and INT8 metrics per set, base and
    candidate, the INT8-vs-FP32 drift, four rules."""
    site_cand = 0.71 if passed else 0.52
    golden = ({"mcc": 0.912, "f1": 0.94, "accuracy": 0.955, "n": 466}, {"mcc": 0.918, "f1": 0.945, "accuracy": 0.958,
                                                                       "n": 466})
    site = ({"mcc": 0.583, "f1": 0.70, "accuracy": 0.81, "n": 60}, {"mcc": site_cand, "f1": 0.80, "accuracy": 0.87,
                                                                   "n": 60})
    metrics = {"golden": {"base": golden[0], "candidate": golden[1]},
               "site_validation": {"base": site[0], "candidate": site[1]},
               "golden (int8)": {"base": {**golden[0], "mcc": 0.910}, "candidate": {**golden[1], "mcc": 0.915}},
               "int8_vs_fp32": {"agreement": 0.994, "heatmap_correlation": 0.962, "n": 526}}
    dv = round(site_cand - 0.583, 4)
    rules = [
        {"name": "golden_mcc", "passed": True, "value": 0.006, "limit": -0.01,
         "detail": "golden MCC 0.9120 -> 0.9180 (+0.0060; may drop at most 0.01)"},
        {"name": "site_validation_mcc", "passed": passed, "value": dv, "limit": 0.0,
         "detail": f"site-validation MCC 0.5830 -> {site_cand:.4f} ({dv:+.4f}; must rise) on 60 patches"},
        {"name": "int8_top1_agreement", "passed": True, "value": 0.994, "limit": 0.98,
         "detail": "INT8 agrees with FP32 on 0.9940 of 526 images (at least 0.98)"},
        {"name": "int8_heatmap_correlation", "passed": True, "value": 0.962, "limit": 0.9,
         "detail": "crack heat-map correlation INT8 vs FP32 0.962 over 431 visible maps (at least 0.9)"},
    ]
    return {"passed": passed, "rules": rules, "metrics": metrics}


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["update"]:
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="fake-update")
    p.add_argument("--base", type=Path, required=True)
    p.add_argument("--labelled", type=Path, required=True)
    p.add_argument("--unlabelled", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true")
    p.add_argument("--override-gate", action="store_true")
    p.add_argument("--confirm")
    p.add_argument("--pushed-by")
    args, _ = p.parse_known_args(argv)     # the real job's tuning options mean nothing here
    signal.signal(signal.SIGTERM, on_term)
    args.out.mkdir(parents=True, exist_ok=True)
    base_v = base_version(args.base)
    version = bump(base_v)
    emit("start", base={"name": "crack-student", "version": base_v}, out=str(args.out), stages=list(U.STAGES))
    print("a library printed this to stdout", flush=True)
    print(f"fake update: labelled {args.labelled}, unlabelled {args.unlabelled}", file=sys.stderr, flush=True)
    labelled = sum(1 for _ in args.labelled.rglob("*.png")) if args.labelled.is_dir() else 0
    stage("read", 0, detail=f"{labelled} patches")
    emit("log", level="info", message=f"read {labelled} patches from the review export")
    stage_done("read", 0)
    stage("split", 1)
    stage_done("split", 1)
    stage("adapt_teachers", 2, work=2)
    emit("epoch", stage="adapt_teachers", model="teacher:efficientnet_lite0", epoch=1, epochs=1, loss=0.41,
         val_mcc=0.62)
    stage_done("adapt_teachers", 2)
    stage("teacher_outputs", 3)
    stage_done("teacher_outputs", 3)
    stage("distil", 4, work=2)
    for epoch, (loss, mcc) in enumerate(((0.62, 0.48), (0.44, 0.61), (0.37, 0.66)), 1):
        if MODE == "error" and epoch == 2:
            emit("error", message="the student diverged (loss is NaN) in epoch 2", stage="distil")
            return U.EXIT_ERROR
        emit("epoch", stage="distil", model="student", epoch=epoch, epochs=3, loss=loss, val_mcc=mcc)
        if MODE == "hold" and epoch == 2:
            emit("log", level="info", message="holding here (FAKE_UPDATE_MODE=hold)")
            time.sleep(600)
    stage_done("distil", 4)
    stage("calibrate", 5)
    stage_done("calibrate", 5)
    stage("export", 6)
    candidates = write_candidates(args.base, args.out, version)
    stage_done("export", 6)
    stage("gate", 7)
    verdict = gate(MODE != "fail")
    emit("gate", **verdict)
    stage_done("gate", 7)
    stage("write", 8)
    promoted = verdict["passed"] or bool(args.override_gate)
    record = {"format": "crack-update/1", "base": {"name": "crack-student", "version": base_v},
              "candidate": {"name": "crack-student", "version": version, **candidates},
              "gate": verdict, "promoted": promoted,
              "lineage": {"parent": base_v, "labelled": str(args.labelled), "unlabelled": str(args.unlabelled),
                          "seed": args.seed, "pushed_by": args.pushed_by}}
    tmp = args.out / ".update.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, args.out / "update.json")
    stage_done("write", 8)
    emit("result", update_json=str(args.out / "update.json"), promoted=promoted,
         candidate={"version": version, **candidates})
    return U.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
