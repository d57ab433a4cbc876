"""The field loop measured: does an update on N labelled patches of a new site make the student
good there, without forgetting, and how long does it take?

New sites: patches cut from ``crackforest_cfd`` (pavement) and ``uav75`` (bridges), which the
shipped student never saw (mask rule of ``distill/data/patches.py``, 96 px). Each site's frames
are split **by source frame** (stable hash) into a labelled pool (40 %), an unlabelled pool
(30 %) and a test part (30 %). For each N labelled patches (drawn from the labelled pool by
seed) and each seed, four recipes of ``distill update`` (``distill/update/config.py``):

(a) ``threshold``: recalibrate the decision threshold only,
(b) ``finetune``: fine-tune the student alone on the N labels (+ replay),
(c) ``kd``: distil the student from the un-adapted teachers,
(d) ``full``: the teachers learn the site, then the student is distilled from them on every
    site frame (labelled + unlabelled) + replay.

Columns: site test MCC of the candidate's INT8 package (mean ± sd over seeds; the gate does not
decide what is measured here: every candidate is evaluated), the golden-set MCC change
(forgetting, from the gate), time to candidate. N = 0 is the shipped student itself. Plus, with
``--click-to-live``: the time from starting the update (recipe d, N = 200) to the new version
live on a loopback device agent (push, verify, activate, first-inference checks).

    python benchmarks/field_update.py --docs                          # the whole grid (hours on 2 cores)
    python benchmarks/field_update.py --sites crackforest --n 25 100 --seeds 0 1 2 --fast --docs
    python benchmarks/field_update.py --report-only --docs            # the table from the committed rows

Every run's row (site, N, seed, recipe, settings, MCCs, times, the machine) is appended to
``docs/benchmarks/field_update.rows.jsonl``, which is committed: the table is made from it, and a
cell already there is not run again (delete its line to re-measure). The working files (cut
patches, update outputs) stay in ``--work``.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import re
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = Path(os.environ.get("CRACK_DATA_DIR", REPO.parent / "shared" / "data"))
# site -> (dataset, patch side): "@160" sites are cut at the app's tile size (160 px), which the
# shipped student sees downscaled to its 96 px input and a px160 student sees whole
SITES = {"crackforest": ("crackforest_cfd", 96), "uav75": ("uav75", 96),
         "crackforest@160": ("crackforest_cfd", 160), "uav75@160": ("uav75", 160)}
RECIPES = {"a": "threshold", "b": "finetune", "c": "kd", "d": "full"}
POOLS = (("labelled", 0.4), ("unlabelled", 0.7), ("test", 1.0))   # cumulative fractions of the frames
# settings beside a recipe, combined with "+" ("lwf+mix+px160"); "" is none of them. lwf and mix keep
# the base's knowledge (distill/update/anchor.py), px160 is a student that takes 160 px tiles whole
VARIANT_PARTS = {"lwf": {"lwf": 0.5, "lwf_site": 0.2}, "lwfr": {"lwf": 1.0, "lwf_site": 0.0},
                 "mix": {"weight_mix": "auto"}, "px160": {"input_size": 160},
                 "need": {}}   # need: the N labels are the pool's "most in need" (need_order), not a random draw
VARIANTS = ["", "lwf", "mix", "lwf+mix", "lwfr+mix", "px160", "mix+px160", "lwf+mix+px160", "lwfr+mix+px160", "need",
            "mix+need", "lwf+mix+need", "lwfr+mix+need"]

NONE_OF_THEM = {"lwf": 0.0, "lwf_site": 0.0, "weight_mix": "off", "input_size": None}   # "": the recipe as it was
GOALS = {"site_mcc_n100": 0.8, "forgetting": 0.01, "click_to_live_s": 180.0}
READY = re.compile(r"AGENT READY port=(\d+) tls=(\d) cert_sha256=(\S+) pairing_code=(\d+)")


def variant_settings(variant: str) -> dict:
    """UpdateConfig settings of a variant, every one of them explicit (not the app's default of the day)."""
    settings: dict = dict(NONE_OF_THEM)
    for part in filter(None, variant.split("+")):
        settings.update(VARIANT_PARTS[part])
    return settings


# --------------------------------------------------------------------------- site data


def _pool_of(source: str) -> str:
    u = int(hashlib.sha256(f"field-update:{source}".encode()).hexdigest()[:12], 16) / 16**12
    return next(name for name, upto in POOLS if u < upto)


def prepare_site(site: str, work: Path) -> dict:
    """Cut the site's patches once into ``work/<site>/{labelled_pool,unlabelled,test}`` (crack/ and
    no_crack/ folders with a flag-export-style metadata.json, so each patch's source is its frame)."""
    import cv2

    from distill.data.layouts import read_dataset

    root = work / site
    done = root / "pools.json"
    if done.is_file():
        return json.loads(done.read_text())
    from distill.data.patches import PatchRule

    folder, patch = SITES[site]
    samples = read_dataset(DATA / folder, layout="masks", patch_rule=PatchRule(size=patch, stride=patch))
    pools: dict[str, list] = {"labelled": [], "unlabelled": [], "test": []}
    for s in samples:
        pools[_pool_of(s.source)].append(s)
    info = {}
    for name, members in pools.items():
        folder = root / ("labelled_pool" if name == "labelled" else name)
        rows = []
        for i, s in enumerate(members):
            label = "crack" if s.label == 1 else "no_crack"
            img = cv2.imread(s.path, cv2.IMREAD_COLOR)
            x0, y0, x1, y1 = s.box
            # the unlabelled pool is a flat folder of images, as an inspector's would be
            rel = f"{s.source}_{i:05d}.png" if name == "unlabelled" else f"{label}/{s.source}_{i:05d}.png"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / rel), img[y0:y1, x0:x1])
            rows.append({"file": rel, "source": s.source, "label": label})
        if name != "unlabelled":
            _write_meta(folder, rows)
        info[name] = {"patches": len(rows), "frames": len({r["source"] for r in rows}),
                      "crack": sum(r["label"] == "crack" for r in rows)}
    done.write_text(json.dumps(info, indent=1))
    return info


def _write_meta(folder: Path, rows: list[dict]) -> None:
    doc = {"format": "crack-inspector-flags-export/2", "labels": ["crack", "no_crack"], "source": "flag_uid",
           "patches": rows}
    (folder / "metadata.json").write_text(json.dumps(doc))


def draw_labelled(site_root: Path, n: int, seed: int, out: Path) -> Path:
    """N patches of the labelled pool (a seeded draw, at least a fifth of each class when the
    pool has them), linked into ``out`` with their sources."""
    import random

    meta = json.loads((site_root / "labelled_pool" / "metadata.json").read_text())["patches"]
    rng = random.Random(seed)
    crack = [r for r in meta if r["label"] == "crack"]
    clean = [r for r in meta if r["label"] == "no_crack"]
    k = min(len(crack), max(n // 5, round(n * len(crack) / len(meta))))
    return _link_draw(site_root, rng.sample(crack, k) + rng.sample(clean, min(len(clean), n - k)), out)


def _link_draw(site_root: Path, chosen: list[dict], out: Path) -> Path:
    """The ``chosen`` rows of the labelled pool hard-linked into ``out``, with their metadata."""
    for r in chosen:
        dst = out / r["file"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.link(site_root / "labelled_pool" / r["file"], dst)
    _write_meta(out, [{k: r[k] for k in ("file", "source", "label")} for r in chosen])
    return out


def need_order(site_root: Path) -> list[dict]:
    """The labelled pool in the review's "most in need" order (``inspector.store.query``'s "need"
    sort: disagreement, then uncertainty), as an inspector labelling the first N would meet it.
    Each patch is scored by the shipped student (INT8, the app's live model) and the shipped
    teacher ensemble (the app's teacher scorer): disagreement |p_teacher − p_student|,
    uncertainty the binary entropy of p_student. Frames are ranked by their most disagreeing
    patch, and patches are taken one per frame per round (diversity: many frames before a second
    patch of one). The labels are only read afterwards, as the inspector's answers."""
    from distill.data.layouts import read_dataset
    from distill.export.package import onnx_session, run_onnx, uint8_patches
    from inspector.edge.package import load_package
    from inspector.paths import default_model, default_teachers
    from inspector.store.schema import disagreement_of, uncertainty_of   # the review's own scores

    cached = site_root / "need_order.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    meta = {r["file"]: r for r in json.loads((site_root / "labelled_pool" / "metadata.json").read_text())["patches"]}
    samples = read_dataset(site_root / "labelled_pool", layout="folders")
    probs = {}
    for name, path in (("student", default_model()), ("teacher", default_teachers())):
        pkg = load_package(path)
        p = run_onnx(onnx_session(pkg.onnx_bytes), uint8_patches(samples, pkg.manifest.input.size))["probs"]
        probs[name] = p[:, list(pkg.manifest.labels).index("crack")]
    rows = []
    for s, a, b in zip(samples, probs["student"].tolist(), probs["teacher"].tolist()):
        rel = str(Path(s.path).resolve().relative_to((site_root / "labelled_pool").resolve()))
        rows.append({**meta[rel], "disagreement": disagreement_of([b], [a]), "uncertainty": uncertainty_of([a])})
    frames: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (-r["disagreement"], -r["uncertainty"], r["file"])):
        frames.setdefault(r["source"], []).append(r)
    ranked = list(frames.values())        # frames in order of their most disagreeing patch
    order = [f[i] for i in range(max(map(len, ranked))) for f in ranked if i < len(f)]
    cached.write_text(json.dumps(order))
    return order


def draw_by_need(site_root: Path, n: int, out: Path) -> Path:
    """The first N patches of :func:`need_order`, linked into ``out`` with their sources."""
    return _link_draw(site_root, need_order(site_root)[:n], out)


def frame_ms(package: Path, runs: int = 30) -> float:
    """Median ms of one 640×480 frame through the live engine (tiling, INT8 inference with its
    Grad-CAM map, stitching) on a CrackForest photo, after 5 warm-up frames."""
    import cv2

    from inspector.edge.engine import InferenceEngine

    photo = sorted((DATA / "crackforest_cfd" / "images").glob("*.jpg"))[0]
    frame = cv2.resize(cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB), (640, 480))
    engine = InferenceEngine(package)
    times = []
    for i in range(runs + 5):
        t0 = time.perf_counter()
        engine.inspect(frame)
        if i >= 5:
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def site_mcc(package: Path, test_dir: Path) -> float:
    from distill.training.runs import evaluate_model_path

    return evaluate_model_path(package, test_dir)["metrics"]["mcc"]


# --------------------------------------------------------------------------- one update


def run_recipe(site_root: Path, n: int, seed: int, recipe: str, work: Path, fast: bool, variant: str = "") -> dict:
    from distill.update.config import UpdateConfig
    from distill.update.pipeline import run_update
    from inspector.paths import default_model

    run_dir = (work / "runs" / f"{site_root.name}-n{n}-s{seed}-{recipe}{'' if fast else '-default'}"
               f"{'-' + variant if variant else ''}")
    if "need" in variant.split("+"):
        labelled = draw_by_need(site_root, n, work / "draws" / f"{site_root.name}-n{n}-need")
    else:
        labelled = draw_labelled(site_root, n, seed, work / "draws" / f"{site_root.name}-n{n}-s{seed}")
    cfg = UpdateConfig(base=str(default_model()), labelled=str(labelled), out=str(run_dir),
                       unlabelled=str(site_root / "unlabelled"), recipe=recipe, seed=seed, fast=fast,
                       **variant_settings(variant),
                       override_gate=True, confirm="benchmark: every candidate is measured", pushed_by="field_update")
    t0 = time.perf_counter()
    result = run_update(cfg, emit=lambda event: None)
    seconds = time.perf_counter() - t0
    update = json.loads((run_dir / "update.json").read_text())
    int8 = run_dir / Path(result["candidate"]["int8"]).name   # update.json names files in run_dir
    golden = _golden_change(update)
    return {"recipe": recipe, "n": n, "seed": seed, "seconds": seconds,
            "site_mcc": site_mcc(int8, site_root / "test"), "golden_change": golden,
            "int8_frame_ms": frame_ms(int8),
            "gate_passed": update.get("gate", {}).get("passed"), "verdict": update.get("gate", {}).get("verdict"),
            "failed": update.get("gate", {}).get("failed"), "mix_lambda": _mix_lambda(update),
            "timings_s": update.get("timings_s")}


def _mix_lambda(update: dict) -> float | None:
    """The weight-mix λ an update chose (None: the mix was off)."""
    mix = update["recipe"]["student"].get("weight_mix")
    return mix["lam"] if mix else None


def _golden_change(update: dict) -> float | None:
    metrics = update.get("gate", {}).get("metrics", {})
    golden = metrics.get("golden") or next((v for k, v in metrics.items() if "golden" in k), None)
    try:
        return golden["candidate"]["mcc"] - golden["base"]["mcc"]
    except (TypeError, KeyError):
        return None


# --------------------------------------------------------------------------- click to live


def click_to_live(site_root: Path, work: Path, fast: bool) -> dict:
    """From the click to the new version live on a loopback agent, the app's way: the
    ``distill update`` command line the app builds (a separate process: torch is imported there),
    then :func:`inspector.update.deploy.deploy_to_device` (sign, upload, activate, poll until the
    device reports the version live after its first-inference checks). The agent shares this
    machine's cores with the job all along, as a demo device on the laptop would, at nice 19 as
    the app puts its demo device while an update trains."""
    import shutil
    import tempfile

    from inspector.update.deploy import deploy_to_device
    from inspector.update.job import training_base, update_command
    from inspector.update.plan import estimate_seconds
    from inspector.link.client import DeviceClient
    from inspector.link.demo import lower_priority
    from inspector.link.signing import SigningKey
    from inspector.paths import default_model

    with tempfile.TemporaryDirectory(prefix="field-update-agent-") as tmp:
        cmd = [sys.executable, "-m", "inspector.agent", "--port", "0", "--host", "127.0.0.1", "--data",
               str(Path(tmp) / "agent"), "--no-mdns", "--model", str(default_model())]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            m = READY.match(proc.stdout.readline().strip()) if ready else None
            if not m:
                return {"error": "the agent did not start"}
            key = SigningKey.generate()
            client = DeviceClient("127.0.0.1", int(m[1]), tls=m[2] == "1", cert_sha256=m[3] if m[2] == "1" else None)
            pairing = client.pair(m[4], "field-update", key)
            lower_priority(proc.pid)     # as the app does with its demo device while an update trains
            labelled = draw_labelled(site_root, 200, 0, work / "draws" / f"{site_root.name}-n200-live")
            out = work / "runs" / f"{site_root.name}-click-to-live"
            shutil.rmtree(out, ignore_errors=True)
            argv = update_command(training_base(default_model()), labelled, out,
                                  unlabelled=site_root / "unlabelled", seed=0, fast=fast,
                                  override_reason="benchmark: push whatever the gate says",
                                  pushed_by="field_update")
            t0 = time.perf_counter()
            job = subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if job.returncode != 0:
                return {"error": f"distill update exited {job.returncode}: {job.stderr[-500:]}"}
            t_candidate = time.perf_counter()
            int8 = next(out.glob("crack-student-*-int8.crackpkg"))
            marks = {}
            info, _ = deploy_to_device(pairing, key, int8, timeout=300,
                                       progress=lambda what, *a: marks.setdefault(what, time.perf_counter()))
            t_live = time.perf_counter()
            pushed = marks.get("activated", t_live)
            # what the app's plan dialog would have said for these tiles (its estimate of the job)
            unlabelled = sum(1 for p in (site_root / "unlabelled").iterdir() if p.is_file())
            estimate = estimate_seconds(200, min(unlabelled, 3000), fast=fast)
            record = json.loads((out / "update.json").read_text())
            return {"update_s": t_candidate - t0, "push_s": pushed - t_candidate, "activate_s": t_live - pushed,
                    "timings_s": record["timings_s"], "weight_mix_lambda": _mix_lambda(record),
                    "click_to_live_s": t_live - t0, "version": info.id, "estimate_s": estimate,
                    "unlabelled_tiles": unlabelled, "machine": _machine()}
        finally:
            proc.terminate()
            proc.wait(20)


# --------------------------------------------------------------------------- report


def summarise(rows: list[dict], base: dict[str, float]) -> list[dict]:
    """Mean ± sd over seeds per site, N, recipe and settings (``fast`` or the app's default)."""
    out = []
    for site in sorted({r["site"] for r in rows}):
        out.append({"site": site, "n": 0, "recipe": "shipped student", "mcc_mean": base[site], "mcc_sd": 0.0,
                    "golden_change": 0.0, "seconds": 0.0, "seeds": 0})
        for n in sorted({r["n"] for r in rows if r["site"] == site}):
            for fast, (letter, recipe), variant in itertools.product((True, False), RECIPES.items(), VARIANTS):
                group = sorted((r for r in rows if r["site"] == site and r["n"] == n and r["recipe"] == recipe
                                and bool(r.get("fast")) == fast and r.get("variant", "") == variant),
                               key=lambda r: r["seed"])
                if not group:
                    continue
                mccs = [r["site_mcc"] for r in group]
                # what the inspector ends up with: the candidate if the gate passed it, else the base
                shipped = [r["site_mcc"] if _verdict(r) == "passed" else base[site] for r in group]
                golden = [r["golden_change"] for r in group if r["golden_change"] is not None]
                out.append({"site": site, "n": n, "recipe": f"({letter}) {recipe}" + ("" if fast else ", default")
                            + (f", {variant}" if variant else ""),
                            "mcc_mean": statistics.fmean(mccs),
                            "mcc_sd": statistics.stdev(mccs) if len(mccs) > 1 else 0.0,
                            "shipped_mean": statistics.fmean(shipped),
                            "golden_change": statistics.fmean(golden) if golden else None,
                            "golden_per_seed": [r["golden_change"] for r in group],
                            "verdicts": [_verdict(r) for r in group],
                            "lambdas": [r.get("mix_lambda") for r in group],
                            "frame_ms": statistics.fmean(ms) if (ms := [r["int8_frame_ms"] for r in group
                                                                         if r.get("int8_frame_ms")]) else None,
                            "seconds": statistics.fmean(r["seconds"] for r in group), "seeds": len(group)})
    return out


def _verdict(row: dict) -> str:
    """The gate's verdict of a row (rows from before verdicts were recorded have gate_passed only)."""
    return row.get("verdict") or ("passed" if row.get("gate_passed") else "refused")


def table(r: dict) -> str:
    lines = [f"{platform.machine()} CPU ({os.cpu_count()} cores); seeds {r['seeds']}; pools: {json.dumps(r['pools'])}.",
             "Recipes with `--fast` settings (at most 1 student / 2 teacher epochs, 500 unlabelled patches) unless "
             "marked *default* (the app's Update model: 3 student / 4 teacher epochs, up to 3000 unlabelled).", "",
             "Variants (`distill/update/anchor.py`): *lwf* = the base student's outputs mixed into the KD targets "
             f"({VARIANT_PARTS['lwf']}; *lwfr*: on replay only, {VARIANT_PARTS['lwfr']}), *mix* = the WiSE-FT weight mix with the base ({VARIANT_PARTS['mix']}); "
             f"*px160* = a student taking 160 px inputs ({VARIANT_PARTS['px160']}), on the `@160` sites (patches cut "
             "at the app's 160 px tile, which the 96 px students see downscaled); *need* = the N labels drawn in the "
             "review's most-in-need order instead of at random. Golden change and the gate's "
             "verdict are listed per seed (seed order), with the mixing weight λ chosen.", "",
             "A row without a variant is the recipe as it was before the weight mix (`weight_mix` off); the app's "
             "default since 2026-12-06 is the *mix* row. "
             "*Shipped* is what the inspector ends up with: the candidate's site MCC when the gate passes it, "
             "the base's when it refuses (mean over seeds).", "",
             "| site | N labelled | recipe | site test MCC (mean ± sd) | shipped | golden MCC change per seed | "
             "gate per seed | λ | INT8 ms / 640×480 frame | time to candidate (s) | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in r["summary"]:
        golden = " / ".join("–" if g is None else f"{g:+.3f}" for g in s.get("golden_per_seed", [s["golden_change"]]))
        verdicts = " / ".join(_SHORT.get(v, v) for v in s.get("verdicts", [])) or "–"
        lams = " / ".join("–" if x is None else f"{x:g}" for x in s.get("lambdas", [])) if any(
            x is not None for x in s.get("lambdas", [])) else "–"
        shipped = f"{s['shipped_mean']:.3f}" if "shipped_mean" in s else f"{s['mcc_mean']:.3f}"
        lines.append(f"| {s['site']} | {s['n']} | {s['recipe']} | {s['mcc_mean']:.3f} ± {s['mcc_sd']:.3f} | {shipped} | {golden} | "
                     f"{verdicts} | {lams} | {'–' if not s.get('frame_ms') else format(s['frame_ms'], '.1f')} | "
                     f"{s['seconds']:.0f} | {s['seeds']} |")
    for live in r.get("click_to_live") or []:
        lines += ["", "Click to live, recipe (d) with N = 200, on a loopback agent: " + (
            f"{live['click_to_live_s']:.0f} s (update {live['update_s']:.0f} s, push {live['push_s']:.1f} s, "
            f"activate until live {live['activate_s']:.1f} s; goal ≤ {GOALS['click_to_live_s']:.0f} s)"
            + (f", {live.get('unlabelled_tiles')} unlabelled tiles; the plan dialog's estimate of the update "
               f"{live['estimate_s']:.0f} s, {live['update_s'] / live['estimate_s'] - 1:+.0%} off (goal within ±30 %)"
               if live.get("estimate_s") else "")
            + (f"; {live['machine']['cpu']} ({live['machine']['isa']}), {live['machine']['date']}"
               if live.get("machine") else "")
            + (f"; weight mix λ = {live['weight_mix_lambda']}" if live.get("weight_mix_lambda") is not None
               else "; no weight mix (before it was the default)")
            if "error" not in live else f"not measured: {live['error']}")]
    return "\n".join(lines) + "\n"


_SHORT = {"passed": "pass", "failed": "refused", "not_enough_evidence": "not enough evidence"}


def _machine() -> dict:
    """The CPU a row was measured on (model name and integer ISA) and the onnxruntime version."""
    import onnxruntime as ort

    from inspector.edge.numerics import cpu_model, int8_isa

    return {"cpu": cpu_model(), "isa": int8_isa(), "cores": os.cpu_count(), "onnxruntime": ort.__version__,
            "date": time.strftime("%Y-%m-%d")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", nargs="+", default=list(SITES), choices=list(SITES))
    ap.add_argument("--n", nargs="+", type=int, default=[25, 50, 100, 200])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--variants", nargs="+", default=[""], choices=list(VARIANTS),
                    help="settings beside the recipe, '+'-combined: '' (none), lwf, lwfr, mix, px160, need")
    ap.add_argument("--fast", action="store_true", help="distill update --fast settings (fewer epochs)")
    ap.add_argument("--click-to-live", action="store_true")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "field_update")
    ap.add_argument("--json", default=str(REPO / "runs" / "field_update.json"))
    ap.add_argument("--docs", action="store_true", help="write docs/benchmarks/field_update.md")
    ap.add_argument("--rows", type=Path, default=REPO / "docs" / "benchmarks" / "field_update.rows.jsonl",
                    help="the per-run rows (committed; the table is made from them)")
    ap.add_argument("--report-only", action="store_true",
                    help="no new runs: the table from the rows already measured in --work (rows.jsonl)")
    args = ap.parse_args()
    from inspector.paths import default_model

    result: dict = {"fast": args.fast, "seeds": args.seeds, "pools": {}, "rows": []}
    modes = (True, False) if args.report_only else (args.fast,)   # a report shows both settings it has
    base: dict[str, float] = {}
    done_path = args.rows
    done = [json.loads(line) for line in done_path.read_text().splitlines()] if done_path.is_file() else []
    for site in args.sites:
        if args.report_only and not any(d["site"] == site for d in done):
            continue            # a site never measured has no place in the table
        result["pools"][site] = prepare_site(site, args.work)
        base[site] = site_mcc(default_model(), args.work / site / "test")
        for n in args.n:
            for seed in args.seeds:
                for letter, fast, variant in itertools.product(args.recipes, modes,
                                                               VARIANTS if args.report_only else args.variants):
                    key = {"site": site, "n": n, "seed": seed, "recipe": RECIPES[letter], "fast": fast,
                           "variant": variant}
                    row = next((d for d in done if all(d.get(k, "" if k == "variant" else None) == v
                                                       for k, v in key.items())), None)
                    if row is None and args.report_only:
                        continue
                    if row is None:
                        row = {**key, **run_recipe(args.work / site, n, seed, RECIPES[letter], args.work, fast,
                                                   variant),
                               "machine": _machine()}
                        done_path.parent.mkdir(parents=True, exist_ok=True)
                        with open(done_path, "a") as f:
                            f.write(json.dumps(row) + "\n")
                    print(f"  {site} N={n} seed={seed} {row['recipe']} {variant}: site MCC {row['site_mcc']:.3f}, "
                          f"golden {row['golden_change']}, {row['seconds']:.0f} s", flush=True)
                    result["rows"].append(row)
    result["summary"] = summarise(result["rows"], base)
    live_rows = args.rows.with_name("field_update.click_to_live.jsonl")   # committed, one line a run
    if args.click_to_live:
        live = click_to_live(args.work / args.sites[0], args.work, args.fast)
        if "error" not in live:
            with open(live_rows, "a") as f:
                f.write(json.dumps({**live, "site": args.sites[0], "fast": args.fast}) + "\n")
        result["click_to_live"] = [live]
    if live_rows.is_file():
        result["click_to_live"] = [json.loads(line) for line in live_rows.read_text().splitlines() if line.strip()]
    text = table(result)
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    if args.docs:
        (REPO / "docs" / "benchmarks" / "field_update.md").write_text(
            "# Field update benchmark (`benchmarks/field_update.py`)\n\n"
            f"Made from the {len(result['rows'])} rows in [field_update.rows.jsonl](field_update.rows.jsonl) "
            "(each names its machine) by `python benchmarks/field_update.py --report-only --docs`. The "
            "2026-12-03 grid and its analysis, whose rows were lost: "
            "[field_update-2026-12-03.md](field_update-2026-12-03.md).\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
