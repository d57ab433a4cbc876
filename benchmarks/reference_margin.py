"""How far apart are a wrong model and a correct numeric path? The margin of the reference check.

    python benchmarks/reference_margin.py [--wrong-models DIR] [--no-foreign]   # ~10-25 min on 2 cores

For each shipped package (INT8 student, FP32 student, teacher ensemble) it runs the package's
reference images

* along every **correct numeric path** reachable here: onnxruntime's optimised kernels (this
  CPU), the unfused QDQ path (graph optimisations off), the emulated accelerator (dithered
  requantization + float16 float parts; 5 dither seeds), and under qemu onnxruntime's AVX2 and
  SSE kernels (INT8 only: float under qemu's x86 emulation takes tens of minutes) and ARM kernels
  (``scripts/numeric_paths``; ``--no-foreign`` skips them);
* through **wrong models**: a sibling trained with another seed and another version (a
  ``distill update`` fine-tune), both from ``scripts/make_wrong_models.py`` (``--wrong-models``,
  default ``../runs/wrong-models``; skipped when absent), the class order swapped, a corrupted
  initializer, and one layer perturbed by 1 %-100 % of its weights' spread (first, middle and
  last convolution); for the teachers also the student's model;

and measures each against the shipped outputs (:func:`inspector.edge.numerics.measure`). Every row
goes to ``docs/benchmarks/reference_margin.rows.jsonl``; the table
``docs/benchmarks/reference_margin.md`` and ``reference_margin.json`` are made from the rows
(``--table-only`` remakes them without running anything).

The margin, per package and metric: the smallest difference a wrong model shows over the largest
a correct path shows (max |Δp|; for correlation, 1 - r).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts" / "numeric_paths"))

import paths as foreign  # noqa: E402
import wrong_models  # noqa: E402

from inspector.edge import numerics  # noqa: E402
from inspector.edge.package import load_package  # noqa: E402
from inspector.paths import default_model  # noqa: E402

OUT = REPO / "docs" / "benchmarks"
ROWS = OUT / "reference_margin.rows.jsonl"
PERTURB = (0.01, 0.03, 0.1, 0.3, 1.0)
EMULATION_SEEDS = (7, 11, 13, 17, 19)


def shipped() -> dict[str, Path]:
    int8 = default_model()
    return {"int8": int8, "fp32": int8.with_name(int8.name.replace("-int8", "")),
            "teachers": sorted((REPO / "models").glob("crack-teachers-*.crackpkg"))[-1]}


def _ort(onnx_bytes: bytes, images: np.ndarray, path: str = numerics.OPTIMISED):
    return numerics.session(onnx_bytes, path).run(["probs", "cam"], {"image": images})


def _emulated(onnx_bytes: bytes, images: np.ndarray, seed: float):
    return numerics.session(onnx_bytes, numerics.EMULATED_TENSORRT, seed=seed).run(["probs", "cam"], {"image": images})


def measure_package(kind: str, path: Path, wrong_dir: Path, use_foreign: bool, machine: dict):
    pkg = load_package(path, verify_reference=False)
    ref, images = pkg.reference, np.ascontiguousarray(pkg.reference["image"])

    def row(case: str, name: str, probs, cam, **extra) -> dict:
        m = numerics.measure(ref["probs"], probs, ref["cam"], cam)
        out = {"package": kind, "file": path.name, "case": case, "name": name, **m.to_dict(),
               **extra, "machine": machine}
        print(f"{kind:9s} {case:7s} {name:40s} {m}", flush=True)
        return out

    rows = []
    rows.append(row("correct", "optimised (this CPU)", *_ort(pkg.onnx_bytes, images), isa=machine["isa"]))
    rows.append(row("correct", "unfused QDQ (graph optimisations off)", *_ort(pkg.onnx_bytes, images, numerics.UNFUSED)))
    for seed in EMULATION_SEEDS:
        rows.append(row("correct", f"emulated accelerator (seed {seed})", *_emulated(pkg.onnx_bytes, images, seed)))
    if use_foreign:
        for fpath in foreign.FOREIGN:
            if fpath in foreign.X86_CPUS and kind != "int8":
                # float kernels under qemu's x86 emulation take tens of minutes; only INT8 can saturate
                continue
            why = foreign.available(fpath)
            if why:
                print(f"{kind}: skipping {fpath}: {why}", flush=True)
                continue
            t0 = time.perf_counter()
            probs, cam, info = foreign.run(fpath, pkg.onnx_bytes, images)
            rows.append(row("correct", f"{fpath} (qemu)", probs, cam, runner=info,
                            seconds=round(time.perf_counter() - t0, 1)))

    rows.append(row("wrong", "class order swapped", *_ort(wrong_models.swap_labels(pkg.onnx_bytes), images)))
    rows.append(row("wrong", "corrupted initializer (64 bytes)",
                    *_ort(wrong_models.corrupt_initializer(pkg.onnx_bytes), images)))
    model = __import__("onnx").load_from_string(pkg.onnx_bytes)
    n_conv = len(wrong_models.conv_weights(model))
    for layer, where in ((0, "first"), (n_conv // 2, "middle"), (n_conv - 1, "last")):
        for rel in PERTURB:
            rows.append(row("wrong", f"{where} conv perturbed {rel:g}x its spread",
                            *_ort(wrong_models.perturb_layer(pkg.onnx_bytes, rel, layer=layer), images),
                            perturb={"layer": layer, "rel": rel}))
    others = []
    if kind == "teachers":
        others.append(("the student's model (another model)", shipped()["fp32"]))
    else:
        suffix = "-int8" if kind == "int8" else ""
        for version, what in (("9.0.0", "sibling, another seed"), ("9.1.0", "another version (fine-tuned)")):
            others.append((what, wrong_dir / f"crack-student-{version}{suffix}.crackpkg"))
    for what, other in others:
        if not other.is_file():
            print(f"{kind}: no {other} (python scripts/make_wrong_models.py {wrong_dir})", flush=True)
            continue
        rows.append(row("wrong", what, *_ort(load_package(other, verify_reference=False).onnx_bytes, images),
                        other=other.name))
    return rows


# --------------------------------------------------------------------------- the table


def _passes(row: dict, rule: str) -> bool:
    """Whether a row's measurement meets ``rule`` as the rules stand now (rows keep only the measurement)."""
    m = numerics.Measured(*(row[k] for k in ("n_images", "verdict_mismatches", "probs_max_abs", "cam_corr",
                                             "cam_peak")))
    return not numerics.failures(m, numerics.RULES[rule])


def _whole(row: dict) -> bool:
    """Another whole model (another seed, version or label order; the student for the teachers),
    as opposed to the perturbation and corruption sweeps, which chart the detection limit."""
    return row["case"] == "wrong" and "perturb" not in row and not row["name"].startswith("corrupted")


def summarise(rows: list[dict]) -> dict:
    """Per package and for its CPU and accelerator rule: the largest spread of the correct paths
    that rule covers, the smallest difference of another whole model, their ratio (the margin),
    and the smallest perturbation of each layer the rule refuses (the detection limit)."""
    out: dict = {}
    for kind in dict.fromkeys(r["package"] for r in rows):
        mine = [r for r in rows if r["package"] == kind]
        precision = "int8" if kind == "int8" else "fp32"
        whole = [r for r in mine if _whole(r)]
        out[kind] = {"file": mine[0]["file"], "rules": {}}
        for where in ("cpu", "accelerator"):
            rule = f"{where}-{precision}"
            correct = [r for r in mine if r["case"] == "correct"
                       and (where == "accelerator" or not r["name"].startswith("emulated"))]
            worst = max(correct, key=lambda r: r["probs_max_abs"])
            entry = {
                "correct_paths": [r["name"] for r in correct],
                "correct_max_dp": worst["probs_max_abs"], "correct_max_dp_path": worst["name"],
                "correct_min_corr": min(r["cam_corr"] for r in correct),
                "correct_max_peak": max(r["cam_peak"] for r in correct),
                "correct_failing": [r["name"] for r in correct if not _passes(r, rule)],
                "wrong_refused": [r["name"] for r in mine if r["case"] == "wrong" and not _passes(r, rule)],
                "wrong_passing": [r["name"] for r in mine if r["case"] == "wrong" and _passes(r, rule)],
                "detection_limit": {},
            }
            if whole:
                closest = min(whole, key=lambda r: r["probs_max_abs"])
                entry.update(wrong_min_dp=closest["probs_max_abs"], wrong_min_dp_model=closest["name"],
                             wrong_max_corr=max(r["cam_corr"] for r in whole),
                             wrong_min_peak=min(r["cam_peak"] for r in whole),
                             margin_dp=closest["probs_max_abs"] / max(worst["probs_max_abs"], 1e-9),
                             margin_corr=(1 - max(r["cam_corr"] for r in whole))
                             / max(1 - entry["correct_min_corr"], 1e-9),
                             margin_peak=min(r["cam_peak"] for r in whole) / max(entry["correct_max_peak"], 1e-9))
            for r in mine:
                if "perturb" in r and not _passes(r, rule):
                    where_ = r["name"].split(" conv")[0]
                    prev = entry["detection_limit"].get(where_)
                    entry["detection_limit"][where_] = min(prev, r["perturb"]["rel"]) if prev else r["perturb"]["rel"]
            out[kind]["rules"][rule] = entry
    return out


def _f(x: float) -> str:
    return f"{x:.2g}" if x < 0.01 else f"{x:.3f}"


def table(rows: list[dict]) -> str:
    s = summarise(rows)
    machine = rows[0]["machine"]
    lines = [
        "# The reference check's margin: other models against correct numeric paths",
        "",
        f"Made by `python benchmarks/reference_margin.py` from the rows in `reference_margin.rows.jsonl` "
        f"(`--table-only` remakes this page and `reference_margin.json`). Machine: {machine['cpu']}, integer "
        f"ISA **{machine['isa']}**, onnxruntime {machine['onnxruntime']}. Bounds: `inspector/edge/numerics.py` "
        "(`RULES`); design: `docs/design/edge-models.md`. Each package is run on its own 48 reference images.",
        "",
        "## The margin",
        "",
        "Correct paths: for a CPU rule the CPU paths (this CPU's optimised kernels, the unfused QDQ path and, "
        "under qemu, onnxruntime's AVX2, SSE and ARM kernels where run); for an accelerator rule also the "
        "emulated accelerator (5 dither seeds). Other models: another seed and another version of the "
        "student (`scripts/make_wrong_models.py`), the class order swapped, and for the teachers the "
        "student. Margin = the other models' smallest difference / the correct paths' largest "
        "(for correlation: 1 − r).",
        "",
        "| package | rule | correct paths: max \\|Δp\\| | 1 − r | peak Δ | other models: min \\|Δp\\| | "
        "1 − r | peak Δ | margin \\|Δp\\| | 1 − r | peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, v in s.items():
        for rule, e in v["rules"].items():
            if "margin_dp" not in e:
                continue
            lines.append(
                f"| {v['file']} | {rule} | {_f(e['correct_max_dp'])} ({e['correct_max_dp_path']}) | "
                f"{1 - e['correct_min_corr']:.1e} | {_f(e['correct_max_peak'])} | {_f(e['wrong_min_dp'])} "
                f"({e['wrong_min_dp_model']}) | {1 - e['wrong_max_corr']:.3f} | {_f(e['wrong_min_peak'])} | "
                f"{e['margin_dp']:.0f}× | {e['margin_corr']:.0f}× | {e['margin_peak']:.0f}× |")
    lines += ["", "## Detection limit: one layer perturbed", "",
              "The smallest perturbation (× the layer's weight spread, of 0.01, 0.03, 0.1, 0.3, 1) that each "
              "rule refuses; '–' none of them. The last convolution in graph order is the in-graph Grad-CAM's, "
              "which moves only the heat-map. Smaller changes are below what any numeric check can tell from "
              "an accelerator's rounding: identity (sha256, signature) refuses every changed byte.", "",
              "| package | rule | first conv | middle conv | last conv |", "|---|---|---|---|---|"]
    for kind, v in s.items():
        for rule, e in v["rules"].items():
            lim = e["detection_limit"]
            lines.append(f"| {v['file']} | {rule} | " + " | ".join(
                f"{lim[k]:g}×" if k in lim else "–" for k in ("first", "middle", "last")) + " |")
    lines += ["", "## Every row", "",
              "| package | case | path or model | verdicts differ | max \\|Δp\\| | heat-map r | peak Δ | "
              + " | ".join(f"passes {r}" for r in numerics.RULES) + " |",
              "|---|---|---|---|---|---|---|" + "---|" * len(numerics.RULES)]
    for r in rows:
        lines.append(f"| {r['package']} | {r['case']} | {r['name']} | {r['verdict_mismatches']}/{r['n_images']} | "
                     f"{_f(r['probs_max_abs'])} | {r['cam_corr']:.6f} | {_f(r['cam_peak'])} | "
                     + " | ".join("yes" if _passes(r, k) else "no" for k in numerics.RULES) + " |")
    lines += ["", "## Rules", ""]
    for rule in numerics.RULES.values():
        lines.append(f"- **{rule.name}**: verdicts equal, max |Δp| ≤ {rule.probs_atol:g}, heat-map r ≥ "
                     f"{rule.cam_corr_min:g}, peak Δ ≤ {rule.cam_peak_max:g}. {rule.why}.")
    failing = {f"{k} {rule}": e["correct_failing"] for k, v in s.items() for rule, e in v["rules"].items()
               if e["correct_failing"]}
    lines += ["", f"**Correct paths failing their rule:** {failing or 'none'}."]
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict]) -> None:
    (OUT / "reference_margin.md").write_text(table(rows))
    (OUT / "reference_margin.json").write_text(json.dumps(summarise(rows), indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wrong-models", default=str(REPO.parent / "runs" / "wrong-models"))
    ap.add_argument("--no-foreign", action="store_true", help="skip the qemu paths (AVX2, SSE, ARM)")
    ap.add_argument("--only", choices=("int8", "fp32", "teachers"), action="append")
    ap.add_argument("--table-only", action="store_true", help="remake the table from the committed rows")
    args = ap.parse_args()
    if args.table_only:
        write_table([json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()])
        print(table([json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]))
        return 0
    import onnxruntime as ort

    machine = {"cpu": numerics.cpu_model(), "isa": numerics.int8_isa(), "onnxruntime": ort.__version__,
               "machine": platform.machine()}
    rows: list[dict] = []
    for kind, path in shipped().items():
        if args.only and kind not in args.only:
            continue
        rows += measure_package(kind, path, Path(args.wrong_models), not args.no_foreign, machine)
    ROWS.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_table(rows)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
