"""What temporal tile reuse costs in accuracy and saves in compute, per segment of the field video.

Every frame of a video goes through the same engine (the shipped student, the app's default
variant on this CPU) three ways, in one run: **full** (every tile, ``InferenceEngine.inspect``),
**reuse** (``inspector.edge.reuse.ReusingEngine``, no cap) and **reuse, live cap** (the cap the
live view uses: half a 30 fps frame interval at this machine's measured ms per tile). Against
full inference, per segment kind (static, slow pan, pause, shake, fast pan, exposure change):

- *tiles inferred*: fresh tiles / tiles;
- *tile agreement*: tiles whose verdict (crack probability ≥ the threshold) equals full inference's;
- *flag recall*: of the frames full inference would flag (``FlagPolicy().reason_for``: a crack or
  an uncertain tile), the share for which reuse flags a frame within ``RECALL_WINDOW`` frames
  (the refresh period: a flag needs fresh tiles; the flagger keeps 2 s between flags anyway);
- *heat-map r*: Pearson correlation of the two heat-maps, frames where both have structure;
- *MCC vs truth*: tile verdicts against the video's ground-truth mask (a tile is a crack when
  ``TRUTH_SHARE`` of its pixels are crack), for full and reuse: does reuse move the real error?
- *ms per frame* (mean): full and reuse, this process alone on the machine's cores;
- *full: verdicts changed from the frame before*: the model's own flicker (same grid tile, full
  inference, consecutive frames). On a still camera it is the floor: reuse cannot agree with
  full inference better than full inference agrees with itself one frame later.

    python benchmarks/tile_reuse.py                      # field video 1280×720 and 640×480, sample video
    python benchmarks/tile_reuse.py --videos field720 --docs

The field videos are rebuilt from ``../shared/data`` by ``scripts/make_field_video.py`` when missing.
Writes ``runs/tile_reuse.json`` (``--docs``: also docs/benchmarks/tile_reuse.{rows.json,md}).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.int8_isa import machine  # noqa: E402
from distill.metrics import mcc  # noqa: E402  (numpy only)
from inspector.edge.reuse import ReusePolicy, ReusingEngine, fitted_to  # noqa: E402
from inspector.live.flagging import FlagPolicy  # noqa: E402

# frames: the refresh period, the promise reuse makes (every tile judged afresh within K frames);
# the flagger keeps 2 s between flags anyway
RECALL_WINDOW = ReusePolicy().refresh_frames
TRUTH_SHARE = 0.005     # of a tile's pixels crack: the tile is a crack in the ground truth
VIDEOS = {"field720": (1280, 720), "field480": (640, 480), "sample": None}
ARMS = ("full", "reuse", "reuse, live cap")
DOCS = REPO / "docs" / "benchmarks"


def open_video(name: str):
    """(frames iterator of RGB, per-frame segment kind, ground-truth mask function or None)."""
    if VIDEOS[name] is None:
        from inspector.paths import sample_video

        meta = json.loads(sample_video().with_suffix(".json").read_text())
        kinds = ["other"] * int(meta["frames"])
        for seg, (a, b) in meta["segments"].items():
            kinds[a:b + 1] = [seg] * (b - a + 1)
        return video_frames(sample_video()), kinds, None
    from scripts.make_field_video import ensure_field_video, frame_mask, load_field_meta

    json_path = ensure_field_video(VIDEOS[name])
    meta = load_field_meta(json_path)
    wall_mask = cv2.imread(str(json_path.parent / "wall_mask.png"), cv2.IMREAD_GRAYSCALE)
    return video_frames(json_path.parent / meta["file"]), list(meta["segment_kind"]), lambda i: frame_mask(
        meta, wall_mask, i)


def video_frames(path: Path):
    """The frames of a video file, in order, as RGB (a generator: one frame in memory at a time)."""
    cap = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def measure(engine, name: str, threshold: float, limit: int | None = None) -> list[dict]:
    """One row per frame and arm: segment, fresh/total tiles, verdicts, flag reason, ms, heat r, truth."""
    frames, kinds, truth_of = open_video(name)
    policy = FlagPolicy()
    runners = {"reuse": ReusingEngine(engine, ReusePolicy()),
               "reuse, live cap": ReusingEngine(engine, fitted_to(ReusePolicy(), 30.0))}
    rows = []
    for i, rgb in enumerate(frames):
        if limit is not None and i >= limit:
            break
        t0 = time.perf_counter()
        full = engine.inspect(rgb)
        results = {"full": (full, (time.perf_counter() - t0) * 1e3)}
        for arm, runner in runners.items():
            t0 = time.perf_counter()
            results[arm] = (runner.inspect(rgb), (time.perf_counter() - t0) * 1e3)
        truth = None
        if truth_of is not None:
            mask = truth_of(i)
            truth = [bool(mask[y0:y1, x0:x1].mean() >= TRUTH_SHARE) for x0, y0, x1, y1 in (t.box for t in full.tiles)]
        for arm, (r, ms) in results.items():
            heat_r = None
            if arm != "full" and full.heatmap.std() > 0 and r.heatmap.std() > 0:
                heat_r = float(np.corrcoef(full.heatmap.ravel(), r.heatmap.ravel())[0, 1])
            rows.append({"video": name, "frame": i, "segment": kinds[i] if i < len(kinds) else "other", "arm": arm,
                         "fresh": len(r.fresh_tiles), "tiles": len(r.tiles), "ms": round(ms, 2),
                         "crack": bits(t.crack_prob >= threshold for t in r.tiles),
                         "flag": policy.reason_for(r), "heat_r": None if heat_r is None else round(heat_r, 5),
                         "truth": None if truth is None else bits(truth)})
    return rows


def bits(values) -> str:
    """Tile verdicts as the rows keep them: "0110…", one character per tile of the grid."""
    return "".join("1" if v else "0" for v in values)


def summarise(rows: list[dict]) -> list[dict]:
    """Per video, arm and segment kind (and "all"): the measures of the module doc."""
    by = defaultdict(list)
    for r in rows:
        by[(r["video"], r["arm"])].append(r)
    out = []
    for (video, arm), arm_rows in by.items():
        full = {r["frame"]: r for r in rows if r["video"] == video and r["arm"] == "full"}
        flagged = sorted(f for f, r in full.items() if r["flag"])
        mine = np.array(sorted(r["frame"] for r in arm_rows if r["flag"]))
        for seg in sorted({r["segment"] for r in arm_rows}) + ["all"]:
            sel = [r for r in arm_rows if seg in ("all", r["segment"])]
            frames = {r["frame"] for r in sel}
            agree = [a == b for r in sel for a, b in zip(r["crack"], full[r["frame"]]["crack"])]
            want = [f for f in flagged if f in frames]
            hit = [f for f in want if len(mine) and np.abs(mine - f).min() <= RECALL_WINDOW]
            heat = [r["heat_r"] for r in sel if r["heat_r"] is not None]
            # the model's own flicker: full inference's verdicts that differ from the frame before
            # (same tile of the grid): on a still camera, the floor no reuse can beat
            flicker = [a != b for r in sel if r["frame"] - 1 in full and r["frame"] - 1 in frames
                       for a, b in zip(full[r["frame"]]["crack"], full[r["frame"] - 1]["crack"])]
            truth = "".join(r["truth"] or "" for r in sel)
            said = "".join(r["crack"] for r in sel if r["truth"])
            out.append({"video": video, "arm": arm, "segment": seg, "frames": len(sel),
                        "tiles_inferred": sum(r["fresh"] for r in sel) / max(1, sum(r["tiles"] for r in sel)),
                        "agreement": float(np.mean(agree)) if agree else None,
                        "flag_frames_full": len(want), "flag_recall": len(hit) / len(want) if want else None,
                        "heat_r": float(np.mean(heat)) if heat else None,
                        "full_flicker": float(np.mean(flicker)) if flicker else None,
                        "mcc_truth": mcc([c == "1" for c in truth], [c == "1" for c in said]) if truth else None,
                        "ms_mean": float(np.mean([r["ms"] for r in sel]))})
    return out


def table(summary: list[dict], info: dict) -> str:
    f = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [f"{info['machine']['cpu']} ({info['machine']['native_isa']}), {info['threads']} threads, "
             f"{info['model']}; recall window {RECALL_WINDOW} frames; threshold {info['threshold']}", "",
             "| video | segment | frames | arm | tiles inferred | tile agreement | flag recall (frames) | "
             "heat-map r | MCC vs truth | ms / frame | full: verdicts changed from the frame before |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['video']} | {s['segment']} | {s['frames']} | {s['arm']} | {f(s['tiles_inferred'])} | "
                     f"{f(s['agreement'])} | {f(s['flag_recall'])} ({s['flag_frames_full']}) | {f(s['heat_r'])} | "
                     f"{f(s['mcc_truth'])} | {s['ms_mean']:.1f} | "
                     f"{f(s['full_flicker']) if s['arm'] == 'full' else ''} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", nargs="+", choices=sorted(VIDEOS), default=["field720", "field480", "sample"])
    ap.add_argument("--frames", type=int, default=None, help="at most this many frames per video")
    ap.add_argument("--threads", type=int, default=None, help="inference threads (default: the app's)")
    ap.add_argument("--json", default=str(REPO / "runs" / "tile_reuse.json"))
    ap.add_argument("--docs", action="store_true", help="write docs/benchmarks/tile_reuse.{rows.json,md}")
    args = ap.parse_args(argv)

    from inspector.qt.startup import load_engine   # the app's engine: its default variant on this CPU

    engine = load_engine(None, args.threads)
    threshold = 0.5
    rows = []
    for name in args.videos:
        t0 = time.perf_counter()
        rows += measure(engine, name, threshold, args.frames)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    info = {"machine": machine(), "threads": engine.threads, "threshold": threshold,
            "model": f"{engine.manifest.name}-{engine.manifest.version} ({engine.manifest.quantization.type})",
            "date": time.strftime("%Y-%m-%d"), "policy": ReusePolicy().__dict__}
    summary = summarise(rows)
    text = table(summary, info)
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"info": info, "summary": summary, "rows": rows}) + "\n")
    if args.docs:
        (DOCS / "tile_reuse.rows.json").write_text(json.dumps({"info": info, "rows": rows}) + "\n")
        (DOCS / "tile_reuse.md").write_text(
            "# Temporal tile reuse: accuracy and compute (`benchmarks/tile_reuse.py`)\n\n"
            f"Made by `python benchmarks/tile_reuse.py --videos {' '.join(args.videos)} --docs` on "
            f"{info['date']}; raw rows: [tile_reuse.rows.json](tile_reuse.rows.json).\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
