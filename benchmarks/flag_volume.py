"""How many flags a looping walk makes: the sample video played N times through the live path.

The live path without a window or a clock: every frame of the video, in order, ``--loops`` times,
through the app's engine with tile reuse (as the live view runs it) and a :class:`Flagger` with
the app's policy, at the video's own time (frame / fps, so the minimum interval between flags
means what it means live). Per loop: flags kept, frames suppressed as a view already flagged or
as too soon. Arms: the flagger as it is (every view of the session remembered) and as it was
(``duplicate_memory=8``, no place check: the last 8 flags only). Goal (issue 22): the flags after 10 loops at
most 1.2 × those after one.

    python benchmarks/flag_volume.py --loops 10 --docs      # about 2 minutes on 2 cores

Writes runs/flag_volume.json (``--docs``: docs/benchmarks/flag_volume.{md,rows.json}).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.int8_isa import machine  # noqa: E402
from inspector.edge.reuse import ReusePolicy, ReusingEngine  # noqa: E402
from inspector.live.flagging import Flagger, FlagPolicy  # noqa: E402

ARMS = {"every view and place of the session": FlagPolicy(),
        "last 8 flags, same view only (before)": FlagPolicy(duplicate_memory=8, same_place_peak=None)}


def frames(path: Path) -> list:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return out


def run(engine, video: list, fps: float, loops: int) -> list[dict]:
    """One row per arm and loop: flags kept so far and in the loop, suppressed so far."""
    rows = []
    for arm, policy in ARMS.items():
        flagger, reuse = Flagger(policy), ReusingEngine(engine, ReusePolicy())
        t = 0.0
        for loop in range(1, loops + 1):
            before = flagger.stats.kept
            for rgb in video:
                flagger.decide(rgb, reuse.inspect(rgb), t)
                t += 1.0 / fps
            s = flagger.stats
            rows.append({"arm": arm, "loop": loop, "kept_total": s.kept, "kept_in_loop": s.kept - before,
                         "same_view_total": s.same_view, "too_soon_total": s.too_soon})
            print(f"{arm}, loop {loop}: {s.kept} flags", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], info: dict) -> str:
    lines = [f"{info['video']} ({info['frames']} frames at {info['fps']:g} fps) × {info['loops']} loops, "
             f"{info['model']}, tile reuse on, {info['machine']['cpu']} ({info['machine']['native_isa']}), "
             f"{info['date']}. Goal: flags after 10 loops ≤ 1.2 × flags after one.", "",
             "| flagger | flags after loop 1 | after the last loop | ratio | suppressed: same view / too soon |",
             "|---|---|---|---|---|"]
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        first, last = mine[0], mine[-1]
        lines.append(f"| {arm} | {first['kept_total']} | {last['kept_total']} | "
                     f"{last['kept_total'] / max(1, first['kept_total']):.2f} | "
                     f"{last['same_view_total']} / {last['too_soon_total']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loops", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=str(REPO / "runs" / "flag_volume.json"))
    ap.add_argument("--docs", action="store_true")
    args = ap.parse_args(argv)

    from inspector.paths import sample_video
    from inspector.qt.startup import load_engine

    engine = load_engine(None, args.threads)
    meta = json.loads(sample_video().with_suffix(".json").read_text())
    video = frames(sample_video())
    rows = run(engine, video, float(meta["fps"]), args.loops)
    info = {"video": sample_video().name, "frames": len(video), "fps": float(meta["fps"]), "loops": args.loops,
            "model": f"{engine.manifest.name}-{engine.manifest.version}", "machine": machine(),
            "date": time.strftime("%Y-%m-%d")}
    text = table(rows, info)
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    if args.docs:
        docs = REPO / "docs" / "benchmarks"
        (docs / "flag_volume.rows.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1) + "\n")
        (docs / "flag_volume.md").write_text(
            "# Flag volume on a looping walk (`benchmarks/flag_volume.py`)\n\n"
            f"Made by `python benchmarks/flag_volume.py --loops {args.loops} --docs`; rows: "
            "[flag_volume.rows.json](flag_volume.rows.json).\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
