"""INT8 accuracy per integer ISA, old 8-bit against new 7-bit weights, and INT8 speed on this machine.

    nice -n 10 python benchmarks/int8_isa.py                # ~45 min on 2 cores, nearly all of it qemu
    python benchmarks/int8_isa.py --table-only              # remake the md from the committed rows

Why: with full 8-bit weights onnxruntime's u8s8 kernels for x86 CPUs with AVX2 but no VNNI sum
pairs of u8×s8 products into a saturating int16 (``vpmaddubsw``), so the old INT8 package
(crack-student 1.1.0) computed other numbers there than on a CPU with VNNI or AMX. 1.1.1 is the
same FP32 model re-quantized with 7-bit weights (``reduce_range``), which cannot saturate.

**Accuracy**: for each INT8 package (old 8-bit ``../runs/old-models/crack-student-1.1.0-int8``,
new 7-bit ``models/crack-student-1.1.1-int8``) and each numeric path

* ``native``: onnxruntime's kernels for this CPU (:func:`inspector.edge.numerics.int8_isa`),
* ``x86-avx2``: its AVX2 kernels, under ``qemu-x86_64-static -cpu Haswell-v4``
  (``scripts/numeric_paths/paths.py``; bit-exact with an AMD EPYC, meaningless for speed),

on the project's eval sets (``scripts/build_default_models.py``'s ``prepare``: Özgenel wall test,
CrackForest pavement, UAV75 bridges; the crack-only port quay set is skipped, MCC is undefined
there): MCC of the argmax, top-1 agreement with the FP32 parent and max |Δp| against it (FP32 run
natively only: it cannot saturate, and under qemu it takes tens of minutes), plus for the AVX2
path the agreement and max |Δp| against the same package's native run. The FP32 parents' MCC is a
row of its own.

**Speed** (natively only): ``InferenceEngine(path, threads=2).inspect(frame)`` on a CrackForest
image resized with cv2 to 640×480 and 1280×720, median of 30 runs (3 blocks of 10 per model,
models taking turns, each block after 5 warm-up runs) for FP32, old INT8 and new INT8.

Rows go to ``docs/benchmarks/int8_isa.rows.jsonl``; ``docs/benchmarks/int8_isa.md`` is made from
them (``--table-only`` remakes it without running anything).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "scripts" / "numeric_paths"))

OUT = REPO / "docs" / "benchmarks"
ROWS = OUT / "int8_isa.rows.jsonl"
MD = OUT / "int8_isa.md"
OLD_DIR = REPO.parent / "runs" / "old-models"
PACKAGES = {  # name: (INT8 package, its FP32 parent, weights)
    "old": (OLD_DIR / "crack-student-1.1.0-int8.crackpkg", OLD_DIR / "crack-student-1.1.0.crackpkg", "8-bit"),
    "new": (REPO / "models" / "crack-student-1.1.1-int8.crackpkg", REPO / "models" / "crack-student-1.1.1.crackpkg",
            "7-bit"),
}
EVAL_SETS = ("ozgenel_test (wall)", "crackforest_cfd (pavement, unseen)", "uav75 (bridge, unseen)")
LABELS = ("no_crack", "crack")
AVX2 = "x86-avx2"
AVX2_ISA = "AVX2 (qemu Haswell-v4)"
CHUNK = 256
FRAMES = {"640x480": (640, 480), "1280x720": (1280, 720)}
FRAME_SOURCE = "crackforest_cfd/images/001.jpg"
RUNS, BLOCKS, WARMUP, THREADS = 30, 3, 5, 2
# Measured by a colleague on an AMD EPYC (AVX2, no VNNI), quiet machine, 2 threads, the old 1.1.0
# packages, InferenceEngine.inspect; not re-measured here.
EPYC = {"640x480": {"int8": 40.4, "fp32": 68.3}, "1280x720": {"int8": 130.7, "fp32": 195.1}}


def machine() -> dict:
    import onnxruntime as ort

    from inspector.edge import numerics

    return {"cpu": numerics.cpu_model(), "native_isa": numerics.int8_isa(), "onnxruntime": ort.__version__,
            "machine": platform.machine(), "cores": os.cpu_count()}


# --------------------------------------------------------------------------- accuracy


def eval_data(limit: int | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from build_default_models import DATA, prepare
    from distill.export.package import uint8_patches

    with tempfile.TemporaryDirectory(prefix="int8-isa-") as tmp:
        _, eval_sets = prepare(Path(tmp), 96)
    out = {}
    for name in EVAL_SETS:
        samples = eval_sets[name][:limit] if limit else eval_sets[name]
        out[name] = (uint8_patches(samples, 96), np.array([s.label for s in samples], np.int64))
        print(f"{name}: {len(samples)} patches ({int(out[name][1].sum())} crack) from {DATA}", flush=True)
    return out


def run_native(onnx_bytes: bytes, images: np.ndarray) -> np.ndarray:
    from inspector.edge import numerics

    sess = numerics.session(onnx_bytes, numerics.OPTIMISED, threads=1)  # as runner.py: one thread
    return np.concatenate([sess.run(["probs"], {"image": images[i:i + CHUNK]})[0]
                           for i in range(0, len(images), CHUNK)])


def run_avx2(onnx_bytes: bytes, images: np.ndarray) -> tuple[np.ndarray, dict]:
    import paths as foreign

    parts, info = [], {}
    for i in range(0, len(images), CHUNK):
        probs, _, info = foreign.run(AVX2, onnx_bytes, images[i:i + CHUNK])
        parts.append(probs)
    return np.concatenate(parts), info


def accuracy(limit: int | None, mach: dict, use_avx2: bool) -> list[dict]:
    import hashlib

    from distill.metrics import mcc
    from inspector.edge.package import load_package

    data = eval_data(limit)
    rows: list[dict] = []
    fp32_cache: dict[str, dict[str, np.ndarray]] = {}  # FP32 model sha256 -> set -> probs
    for key, (int8_path, fp32_path, weights) in PACKAGES.items():
        int8, fp32 = load_package(int8_path, verify_reference=False), load_package(fp32_path, verify_reference=False)
        assert tuple(int8.manifest.labels) == LABELS == tuple(fp32.manifest.labels), int8.manifest.labels
        fp32_sha = hashlib.sha256(fp32.onnx_bytes).hexdigest()
        base = {"kind": "accuracy", "cpu": mach["cpu"], "onnxruntime": mach["onnxruntime"]}
        if fp32_sha not in fp32_cache:
            fp32_cache[fp32_sha] = {}
            for name, (images, _) in data.items():
                t0 = time.perf_counter()
                fp32_cache[fp32_sha][name] = run_native(fp32.onnx_bytes, images)
                print(f"FP32 {fp32_path.name} {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        ref = fp32_cache[fp32_sha]
        for name, (_, labels) in data.items():
            rows.append({**base, "package": fp32_path.name, "package_key": key, "weights": "fp32", "path": "native",
                         "isa": mach["native_isa"], "set": name, "n": len(labels),
                         "mcc": mcc(labels, ref[name].argmax(1)), "model_sha256": fp32_sha})
            print(f"{fp32_path.name:36s} native   {name:36s} MCC {rows[-1]['mcc']:.4f}", flush=True)
        native: dict[str, np.ndarray] = {}
        paths = ("native", AVX2) if use_avx2 else ("native",)
        for path in paths:
            for name, (images, labels) in data.items():
                t0 = time.perf_counter()
                info: dict = {}
                if path == "native":
                    probs = native[name] = run_native(int8.onnx_bytes, images)
                    isa, onnxruntime = mach["native_isa"], mach["onnxruntime"]
                else:
                    probs, info = run_avx2(int8.onnx_bytes, images)
                    isa, onnxruntime = AVX2_ISA, info.get("onnxruntime", mach["onnxruntime"])
                seconds = time.perf_counter() - t0
                pred, fpred = probs.argmax(1), ref[name].argmax(1)
                row = {**base, "onnxruntime": onnxruntime, "package": int8_path.name, "package_key": key,
                       "weights": weights, "path": path, "isa": isa, "set": name, "n": len(labels),
                       "mcc": mcc(labels, pred), "fp32_mcc": mcc(labels, fpred),
                       "top1_agree_fp32": float(np.mean(pred == fpred)), "top1_differ_fp32": int(np.sum(pred != fpred)),
                       "max_dp_fp32": float(np.max(np.abs(probs.astype(np.float64) - ref[name]))),
                       "seconds": round(seconds, 1), "model_sha256": hashlib.sha256(int8.onnx_bytes).hexdigest()}
                if path != "native":
                    row.update(top1_differ_native=int(np.sum(pred != native[name].argmax(1))),
                               max_dp_native=float(np.max(np.abs(probs.astype(np.float64) - native[name]))),
                               runner=info)
                rows.append(row)
                extra = (f", vs native: {row['top1_differ_native']} differ, max |Δp| {row['max_dp_native']:.3g}"
                         if path != "native" else "")
                print(f"{int8_path.name:36s} {path:8s} {name:36s} MCC {row['mcc']:.4f} (FP32 {row['fp32_mcc']:.4f}), "
                      f"agree {row['top1_agree_fp32']:.4f}, max |Δp| {row['max_dp_fp32']:.3g}{extra} "
                      f"[{seconds:.0f} s]", flush=True)
    return rows


# --------------------------------------------------------------------------- speed


def frames() -> dict[str, np.ndarray]:
    import cv2

    from build_default_models import DATA

    bgr = cv2.imread(str(DATA / FRAME_SOURCE), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return {k: np.ascontiguousarray(cv2.resize(rgb, wh, interpolation=cv2.INTER_LINEAR)) for k, wh in FRAMES.items()}


def speed(mach: dict) -> list[dict]:
    from inspector.edge.engine import InferenceEngine

    models = {"fp32": PACKAGES["new"][1], "old int8": PACKAGES["old"][0], "new int8": PACKAGES["new"][0]}
    weights = {"fp32": "fp32", "old int8": PACKAGES["old"][2], "new int8": PACKAGES["new"][2]}
    engines = {k: InferenceEngine(p, threads=THREADS) for k, p in models.items()}  # reference check on
    rows = []
    for fname, frame in frames().items():
        times: dict[str, list[float]] = {k: [] for k in engines}
        load0 = os.getloadavg()
        for _ in range(BLOCKS):  # models take turns, so a change in the machine's load hits all of them
            for k, eng in engines.items():
                for _ in range(WARMUP):
                    eng.inspect(frame)
                for _ in range(RUNS // BLOCKS):
                    t0 = time.perf_counter()
                    res = eng.inspect(frame)
                    times[k].append((time.perf_counter() - t0) * 1e3)
        load1 = os.getloadavg()
        for k, ts in times.items():
            q = np.percentile(ts, [10, 90])
            rows.append({"kind": "speed", "package": models[k].name, "model": k, "weights": weights[k],
                         "frame": fname, "tiles": len(res.tiles), "threads": THREADS, "runs": len(ts),
                         "median_ms": statistics.median(ts), "p10_ms": float(q[0]), "p90_ms": float(q[1]),
                         "providers": list(engines[k].providers), "cpu": mach["cpu"], "isa": mach["native_isa"],
                         "onnxruntime": mach["onnxruntime"], "loadavg_1min": [load0[0], load1[0]],
                         "niceness": os.nice(0), "frame_source": FRAME_SOURCE})
            print(f"speed {fname:9s} {k:9s} median {rows[-1]['median_ms']:.1f} ms "
                  f"(p10 {q[0]:.1f}, p90 {q[1]:.1f}), load {load0[0]:.2f}->{load1[0]:.2f}", flush=True)
    return rows


# --------------------------------------------------------------------------- the table


def _short(name: str) -> str:
    return name.split(" (")[0]


def findings(acc: list[dict]) -> list[str]:
    """One line per INT8 package: how its AVX2 run differs from its native one, summed over the sets."""
    out = []
    for key in dict.fromkeys(r["package_key"] for r in acc if r["weights"] != "fp32"):
        avx2 = [r for r in acc if r["package_key"] == key and r["path"] == AVX2]
        native = {r["set"]: r for r in acc if r["package_key"] == key and r["path"] == "native" and r["weights"] != "fp32"}
        if not avx2:
            continue
        n, differ = sum(r["n"] for r in avx2), sum(r["top1_differ_native"] for r in avx2)
        dp = max(r["max_dp_native"] for r in avx2)
        dmcc = ", ".join(f"{_short(r['set'])} {native[r['set']]['mcc']:.4f} → {r['mcc']:.4f}" for r in avx2
                         if r["set"] in native)
        what = (f"gives bit-identical probabilities to its native run on all {n} patches" if differ == 0 and dp == 0.0
                else f"differs from its native run: {differ} of {n} verdicts flip, max |Δp| {dp:.3g}")
        out.append(f"- **{avx2[0]['package']}** ({avx2[0]['weights']} weights) on AVX2 {what}; "
                   f"MCC native → AVX2: {dmcc}.")
    return out


def table(rows: list[dict]) -> str:
    acc = [r for r in rows if r["kind"] == "accuracy"]
    spd = [r for r in rows if r["kind"] == "speed"]
    meta = (acc or spd)[0]
    native_isa = next((r["isa"] for r in rows if r.get("path", "native") == "native"), "?")
    lines = [
        "# INT8 per integer ISA: 8-bit against 7-bit weights",
        "",
        f"Made by `python benchmarks/int8_isa.py` from `int8_isa.rows.jsonl` (`--table-only` remakes this page). "
        f"Machine: {meta['cpu']} ({native_isa}), onnxruntime {meta['onnxruntime']}.",
        "",
        "With 8-bit weights onnxruntime's u8s8 kernels for x86 CPUs with AVX2 but no VNNI sum pairs of u8×s8 "
        "products into a saturating int16 (`vpmaddubsw`); 7-bit weights (`reduce_range`) cannot saturate. "
        "`native` is this CPU's kernels; `x86-avx2` is onnxruntime's AVX2 kernels under `qemu-x86_64-static -cpu "
        "Haswell-v4` (`scripts/numeric_paths/paths.py`), which computes what an AMD EPYC computes. The FP32 parents "
        "(1.1.0 and 1.1.1 have the same FP32 model bytes) are run natively.",
        "",
        "## Accuracy",
        "",
        "MCC of the argmax on the project's eval sets (`scripts/build_default_models.py`; the crack-only port quay "
        "set is left out). Agreement and max |Δp| are against the FP32 parent run natively; for the AVX2 path "
        "also against the same package's native run.",
        "",
        "| package | weights | path (integer ISA) | eval set | n | MCC | FP32 MCC | top-1 agreement with FP32 | "
        "max \\|Δp\\| vs FP32 | vs native: top-1 differ / max \\|Δp\\| |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in acc:
        if r["weights"] == "fp32":
            continue
        vs_native = (f"{r['top1_differ_native']} / {r['max_dp_native']:.3g}" if "max_dp_native" in r else "–")
        lines.append(f"| {r['package']} | {r['weights']} | {r['path']} ({r['isa']}) | {_short(r['set'])} | {r['n']} | "
                     f"{r['mcc']:.4f} | {r['fp32_mcc']:.4f} | {r['top1_agree_fp32']:.4f} "
                     f"({r['top1_differ_fp32']} differ) | {r['max_dp_fp32']:.3g} | {vs_native} |")
    lines += ["", *findings(acc)]
    fp32 = [r for r in acc if r["weights"] == "fp32"]
    if fp32:
        lines += ["", "FP32 parents, native:", "", "| package | eval set | n | MCC |", "|---|---|---|---|"]
        lines += [f"| {r['package']} | {_short(r['set'])} | {r['n']} | {r['mcc']:.4f} |" for r in fp32]
    if spd:
        s0 = spd[0]
        loads = [x for r in spd for x in r["loadavg_1min"]]
        lines += [
            "", "## Speed on this machine", "",
            f"`InferenceEngine(path, threads={s0['threads']}).inspect(frame)` on a CrackForest image "
            f"(`{s0['frame_source']}`) resized with cv2; median of {s0['runs']} runs (3 blocks of 10 per model, "
            f"models taking turns, 5 warm-up runs before each block), p10-p90 in brackets. CPU: {s0['cpu']}, "
            f"integer ISA {s0['isa']}, onnxruntime {s0['onnxruntime']}, providers {', '.join(s0['providers'])}. "
            f"Not a quiet machine: it is shared with other jobs; the 1-minute load average around the speed runs "
            f"was {min(loads):.2f}-{max(loads):.2f} on {meta.get('cores', '?')} cores (this benchmark itself counts "
            f"about 1) and the benchmark ran at niceness {s0['niceness']}, so a busier moment would be slower.",
            "", "| model | package | weights | frame | tiles | median ms | (p10-p90) |", "|---|---|---|---|---|---|---|",
        ]
        for r in spd:
            lines.append(f"| {r['model']} | {r['package']} | {r['weights']} | {r['frame']} | {r['tiles']} | "
                         f"{r['median_ms']:.1f} | ({r['p10_ms']:.1f}-{r['p90_ms']:.1f}) |")
    lines += [
        "", "## Speed measured earlier on an AMD EPYC (AVX2 only): not re-measured here", "",
        "Measured by a colleague on an AMD EPYC with AVX2 and no VNNI, quiet machine, 2 threads, "
        "`InferenceEngine.inspect`, with the **old 1.1.0 packages** (8-bit INT8 weights). These numbers are "
        "copied, not produced by this script.", "",
        "| frame | INT8 (1.1.0, 8-bit weights) | FP32 (1.1.0) |", "|---|---|---|",
    ]
    for fname, v in EPYC.items():
        lines.append(f"| {fname.replace('x', '×')} | {v['int8']} ms | {v['fp32']} ms |")
    lines += ["", "The 7-bit weights of 1.1.1 run through the same onnxruntime kernels (the same u8s8 GEMM on the same "
              "tensor shapes; only the weights' range differs), so its INT8 speed on that EPYC is **expected** to be "
              "the same as 1.1.0's. That is an expectation, not a measurement: 1.1.1 has not been timed on an AVX2 "
              "machine (qemu's times say nothing about speed)."]
    return "\n".join(lines) + "\n"


def read_rows() -> list[dict]:
    return [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table-only", action="store_true", help="remake the md from the committed rows")
    ap.add_argument("--limit", type=int, help="first N patches per eval set (a quick trial; writes nothing)")
    ap.add_argument("--no-avx2", action="store_true", help="skip the qemu AVX2 path (a quick trial; writes nothing)")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed runs (a quick trial; writes nothing)")
    args = ap.parse_args()
    if args.table_only:
        rows = read_rows()
        MD.write_text(table(rows))
        print(table(rows))
        return 0
    trial = bool(args.limit or args.no_avx2 or args.no_speed)
    t0 = time.perf_counter()
    mach = machine()
    print(json.dumps(mach), flush=True)
    rows = accuracy(args.limit, mach, not args.no_avx2)
    print(f"accuracy: {time.perf_counter() - t0:.0f} s", flush=True)
    if not args.no_speed:
        t1 = time.perf_counter()
        rows += speed(mach)
        print(f"speed: {time.perf_counter() - t1:.0f} s", flush=True)
    for r in rows:
        r["cores"] = mach["cores"]
    if not trial:
        ROWS.write_text("".join(json.dumps(r) + "\n" for r in rows))
        MD.write_text(table(rows))
    print(table(rows))
    print(f"total: {time.perf_counter() - t0:.0f} s{' (trial: nothing written)' if trial else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
