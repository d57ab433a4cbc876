"""How many flags a looping walk makes: the sample video played N times through the live path.

The live path without a window or a clock: every frame of the video, in order, ``--loops`` times,
through the app's engine with tile reuse (as the live view runs it), each result offered to one
:class:`Flagger` per arm at the video's own time (frame / fps, so the rate budget's window means
what it means live). Arms: the app's flagger (every view and place of the session remembered,
the most informative frame per window kept); the de-duplication it replaced (the last 8 flags,
the same view only; with today's window); no view check at all (the rate budget alone): the
reference for what de-duplication may lose. Per loop: flags kept; candidates suppressed as a view
already flagged or outranked in their window. Goal (issue 22): the flags after 10 loops at most
1.2 × those after one, with every distinct crack of the video still flagged at least once.

The sample video's cracks come from how it was built (``scripts/make_sample_video.py``
:func:`ground_truth`: each Özgenel crack patch is a crack, the port quay patches' YOLO boxes that
touch are one; a frame *shows* a crack with half of it, or half a patch of a long one, in view).
Per arm: the distinct cracks its flags show, and of those the arm without a view check shows.

    python benchmarks/flag_volume.py --loops 10 --field --docs   # about 3 minutes on 2 cores

``--field`` adds one pass over the 1280×720 field video (scripts/make_field_video.py), whose
ground truth names the cracks: a *distinct crack* is a connected part of the wall's crack mask
(dilated by ``MERGE_PX`` so one crack's pieces stay one); a flag *shows* a crack when
``SHOWN_PX`` of its pixels lie in the flagged frame. Per arm: flags, flags per crack shown
(goal ≤ 2) and the cracks shown among those the arm without a view check shows.

Writes runs/flag_volume.json (``--docs``: docs/benchmarks/flag_volume.{md,rows.json}).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.int8_isa import machine  # noqa: E402
from benchmarks.results import save  # noqa: E402
from benchmarks.tile_reuse import video_frames  # noqa: E402
from inspector.edge.reuse import ReusePolicy, ReusingEngine  # noqa: E402
from inspector.live.flagging import Flagger, FlagPolicy  # noqa: E402

MERGE_PX, SHOWN_PX = 25, 300
NO_CHECK = "no view check (the rate budget alone)"
ARMS = {"every view and place of the session; the best of each window, within the budget (now)": FlagPolicy(),
        "last 8 flags, same view only (the de-duplication before)": FlagPolicy(duplicate_memory=8,
                                                                               same_place_peak=None),
        NO_CHECK: FlagPolicy(duplicate_memory=0)}


HISTORY = """
The arms share one inference per frame and differ in the flagger alone. Earlier flaggers on the
same sample video × 10 (their own runs, same machine): the first candidate after 2 s, the last 8
flags, the same view only (before issue 22): 8 flags after one loop, 75 after ten; every view and
place of the session, still the first candidate after 2 s: 8 and 11 (1.38; the later loops flagged
cracks the first had skipped while the 2 s ran). The budget's sensitivity (same run, loop 1 → 10):
a burst of 2: 10 → 11; of 1: 9 → 12; 1 s windows: 8 → 12; one token per 4 s: 9 → 11.
"""


def lockstep(engine, frames, times) -> dict[str, list]:
    """Each frame inferred once (with tile reuse) and offered to every arm's flagger at its time;
    per arm the flags kept, as (frame number, time it was chosen). ``frames`` yields
    (number, rgb); ``times`` maps a number to seconds."""
    flaggers = {arm: Flagger(policy) for arm, policy in ARMS.items()}
    kept: dict[str, list] = {arm: [] for arm in ARMS}
    spent: dict[str, list] = {arm: [] for arm in ARMS}     # ms per offer()
    reuse = ReusingEngine(engine, ReusePolicy())
    now = 0.0
    for n, rgb in frames:
        result, now = reuse.inspect(rgb), times(n)
        for arm, flagger in flaggers.items():
            t0 = time.perf_counter()
            flags = flagger.offer(rgb, result, now, n)
            spent[arm].append(1e3 * (time.perf_counter() - t0))
            kept[arm] += [(flag.item, now) for flag in flags]
    for arm, flagger in flaggers.items():
        kept[arm] += [(flag.item, now) for flag in flagger.flush()]
    kept["stats"] = {arm: {**vars(f.stats), "offer_ms_mean": float(np.mean(spent[arm])),
                           "offer_ms_p99": float(np.percentile(spent[arm], 99)),
                           "offer_ms_max": float(np.max(spent[arm]))} for arm, f in flaggers.items()}
    return kept


def cracks_of(frames: list[int], shown) -> dict[int, int]:
    per_crack: dict[int, int] = {}
    for i in frames:
        for k in shown(i):
            per_crack[k] = per_crack.get(k, 0) + 1
    return per_crack


def run(engine, video: list, fps: float, loops: int) -> tuple[list[dict], dict]:
    """One row per arm and loop (flags kept so far and in the loop) and per arm the distinct
    cracks of the video its flags show."""
    from scripts.make_sample_video import ground_truth, in_view

    regions, cams = ground_truth()
    n = len(video)

    def frames():
        for loop in range(loops):
            for i, rgb in enumerate(video):
                yield loop * n + i, rgb
                if i == n - 1:
                    print(f"loop {loop + 1} done", file=sys.stderr, flush=True)

    kept = lockstep(engine, frames(), lambda k: k / fps)
    rows, cracks = [], {}
    for arm in ARMS:
        for loop in range(1, loops + 1):
            total = sum(1 for k, _ in kept[arm] if k < loop * n)
            rows.append({"arm": arm, "loop": loop, "kept_total": total,
                         "kept_in_loop": total - sum(1 for k, _ in kept[arm] if k < (loop - 1) * n)})
        first = cracks_of([k % n for k, _ in kept[arm] if k < n], lambda i: in_view(regions, cams[i]))
        every = cracks_of([k % n for k, _ in kept[arm]], lambda i: in_view(regions, cams[i]))
        cracks[arm] = {"frames": [k for k, _ in kept[arm]], "stats": kept["stats"][arm],
                       "cracks_loop_1": {str(k): v for k, v in sorted(first.items())},
                       "cracks_all": {str(k): v for k, v in sorted(every.items())}}
    visible = set().union(*(in_view(regions, c) for c in cams))
    reference = {int(k) for k in cracks[NO_CHECK]["cracks_all"]}
    for arm, r in cracks.items():
        mine = {int(k) for k in r["cracks_all"]}
        r["recall_vs_no_check"] = len(mine & reference) / len(reference) if reference else None
        r["cracks_missed"] = sorted(reference - mine)
    return rows, {"arms": cracks, "cracks_in_video": len(visible), "cracks_flaggable": len(reference)}


def field_pass(engine) -> dict:
    """One pass over the 1280×720 field video, all arms in lockstep: the frames each arm flags
    and the distinct cracks they show."""
    from scripts.make_field_video import ensure_field_video, load_field_meta

    json_path = ensure_field_video((1280, 720))
    meta = load_field_meta(json_path)
    wall = cv2.imread(str(json_path.parent / "wall_mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    merged = cv2.dilate(wall.astype(np.uint8), np.ones((2 * MERGE_PX + 1,) * 2, np.uint8))
    _, labels = cv2.connectedComponents(merged)
    labels = np.where(wall, labels, 0)
    w, h, scale = int(meta["width"]), int(meta["height"]), float(meta["scale"])

    def shown(i: int) -> set[int]:
        st = meta["states"][i]
        x, y = int(round(st["x"])), int(round(st["y"]))
        ids, counts = np.unique(labels[y:y + int(h * scale), x:x + int(w * scale)], return_counts=True)
        return {int(k) for k, c in zip(ids, counts) if k and c >= SHOWN_PX}

    path = json_path.parent / meta["file"]
    kept = lockstep(engine, enumerate(video_frames(path)), lambda i: i / meta["fps"])
    out = {}
    for arm in ARMS:
        frames = [i for i, _ in kept[arm]]
        out[arm] = {"flags": len(frames), "frames": frames, "cracks": cracks_of(frames, shown),
                    "stats": kept["stats"][arm]}
        print(f"field video, {arm}: {len(frames)} flags", file=sys.stderr, flush=True)
    reference = set(out[NO_CHECK]["cracks"])
    visible = set().union(*(shown(i) for i in range(int(meta["frames"]))))
    for arm, r in out.items():
        counts = list(r["cracks"].values())
        r.update(cracks_shown=len(counts), flags_per_crack_mean=float(np.mean(counts)) if counts else 0.0,
                 flags_per_crack_max=max(counts, default=0),
                 recall_vs_no_check=len(reference & set(r["cracks"])) / len(reference) if reference else None)
        r["cracks"] = {str(k): v for k, v in r["cracks"].items()}
    return {"arms": out, "cracks_in_video": len(visible), "cracks_flaggable": len(reference)}


def field_table(field: dict) -> str:
    lines = [f"1280×720 field video, one pass: {field['cracks_in_video']} distinct cracks in view at some "
             f"point, {field['cracks_flaggable']} shown by a flag of the arm without a view check (the "
             "student misses the others: its MCC on these surfaces is near chance, issue 20).", "",
             "| flagger | flags | cracks shown | flags per crack shown: mean / max (goal ≤ 2) | "
             "cracks shown of those without a view check |", "|---|---|---|---|---|"]
    for arm, r in field["arms"].items():
        rec = "–" if r["recall_vs_no_check"] is None else f"{r['recall_vs_no_check']:.2f}"
        lines.append(f"| {arm} | {r['flags']} | {r['cracks_shown']} | {r['flags_per_crack_mean']:.1f} / "
                     f"{r['flags_per_crack_max']} | {rec} |")
    return "\n".join(lines) + "\n"


def table(rows: list[dict], cracks: dict, info: dict) -> str:
    lines = [f"{info['video']} ({info['frames']} frames at {info['fps']:g} fps) × {info['loops']} loops, "
             f"{info['model']}, tile reuse on, {info['machine']['cpu']} ({info['machine']['native_isa']}), "
             f"{info['date']}. Goal: flags after 10 loops ≤ 1.2 × flags after one, every distinct crack "
             f"still flagged. {cracks['cracks_in_video']} distinct cracks in view at some point, "
             f"{cracks['cracks_flaggable']} shown by a flag of the arm without a view check (the student "
             "does not flag the others).", "",
             "| flagger | flags after loop 1 | after the last loop | ratio | suppressed: same view / outranked | "
             "cracks shown: loop 1 / all loops | of those without a view check | flagger ms per frame: "
             "mean / p99 / max |", "|---|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        first, last, c = mine[0], mine[-1], cracks["arms"][arm]
        st = c["stats"]
        rec = "–" if c["recall_vs_no_check"] is None else f"{c['recall_vs_no_check']:.2f}"
        missed = f" (missed: {', '.join(map(str, c['cracks_missed']))})" if c["cracks_missed"] else ""
        lines.append(f"| {arm} | {first['kept_total']} | {last['kept_total']} | "
                     f"{last['kept_total'] / max(1, first['kept_total']):.2f} | "
                     f"{st['same_view']} / {st['outranked']} | {len(c['cracks_loop_1'])} / {len(c['cracks_all'])} | "
                     f"{rec}{missed} | {st['offer_ms_mean']:.2f} / {st['offer_ms_p99']:.2f} / "
                     f"{st['offer_ms_max']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loops", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=str(REPO / "runs" / "flag_volume.json"))
    ap.add_argument("--docs", action="store_true")
    ap.add_argument("--field", action="store_true", help="also one pass over the 1280×720 field video")
    args = ap.parse_args(argv)

    from inspector.paths import sample_video
    from inspector.qt.startup import load_engine

    engine = load_engine(None, args.threads)
    meta = json.loads(sample_video().with_suffix(".json").read_text())
    video = list(video_frames(sample_video()))   # kept: it is played --loops times
    rows, cracks = run(engine, video, float(meta["fps"]), args.loops)
    info = {"video": sample_video().name, "frames": len(video), "fps": float(meta["fps"]), "loops": args.loops,
            "model": f"{engine.manifest.name}-{engine.manifest.version}", "machine": machine(),
            "date": time.strftime("%Y-%m-%d")}
    text = table(rows, cracks, info)
    field = field_pass(engine) if args.field else None
    if field is not None:
        text += "\n" + field_table(field)
    print(text)
    save("flag_volume", {"info": info, "rows": rows, "cracks": cracks, "field": field}, text + HISTORY,
         json_path=args.json, docs=args.docs, title="Flag volume on a looping walk",
         command=f"python benchmarks/flag_volume.py --loops {args.loops}{' --field' if args.field else ''} --docs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
