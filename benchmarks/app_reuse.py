"""The live window with temporal tile reuse on and off, alternated in one run, per video segment.

Runs ``benchmarks/app_bench.py``'s arm (the real window, the app's engine on this CPU, the video
played at its own 30 fps from a file as a camera would deliver it) on the field video at 1280×720
and 640×480 (``scripts/make_field_video.py``; rebuilt from ``../shared/data`` when missing), tile
reuse on, then off, ``--rounds`` times. Per segment kind of the video (static, slow pan, pause,
shake, fast pan, exposure change): the share of the source's frames that reached the screen,
capture → paint latency p50 / p95 and the share of tiles inferred. Accuracy against full inference
is ``benchmarks/tile_reuse.py``'s (the same engine on every frame, no clock involved).

    python benchmarks/app_reuse.py --seconds 40 --docs     # writes the section of docs/benchmarks/app_bench.md

Goals (issue 21): displayed ≥ 99 % of the source's frames and p95 ≤ 2 frame intervals (66.7 ms)
on the static and slow-pan segments at 1280×720.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.app_bench import REUSE_SECTION, WARMUP_S, percentile, run, write_docs  # noqa: E402
from benchmarks.int8_isa import machine  # noqa: E402

SIZES = {"1280x720": (1280, 720), "640x480": (640, 480)}


def per_segment(arm: dict, kinds: list[str]) -> dict[str, dict]:
    """Steady frames of one arm grouped by the segment of the video frame they show."""
    steady = [f for f in arm["frames"] if f[0] >= WARMUP_S]
    n = len(kinds)
    if not steady:
        return {}
    shown = defaultdict(list)
    for _, e2e, _, seq, fresh, tiles in steady:
        shown[kinds[(seq - 1) % n]].append((e2e, fresh, tiles))
    source = defaultdict(int)
    for seq in range(steady[0][3], steady[-1][3] + 1):
        source[kinds[(seq - 1) % n]] += 1
    out = {}
    for seg in sorted(source):
        rows = shown.get(seg, [])
        lat = [r[0] for r in rows]
        out[seg] = {"source_frames": source[seg], "shown": len(rows), "displayed": len(rows) / source[seg],
                    "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95),
                    "tiles_inferred": sum(r[1] for r in rows) / max(1, sum(r[2] for r in rows))}
    return out


def table(results: list[dict], info: dict) -> str:
    lines = [f"{info['machine']['cpu']} ({info['machine']['native_isa']}, {info['machine']['cores']} cores), "
             f"{info['model']}, {info['threads']} inference threads, Qt {info['platform']}; arms of "
             f"{info['seconds']:.0f} s alternated (first {WARMUP_S:.0f} s not counted), {info['date']}. "
             "Displayed = the source's frames that reached the screen; goal ≥ 99 % and p95 ≤ 66.7 ms "
             "(2 frame intervals) on static and slow-pan segments.", "",
             "| video | segment | reuse | displayed | p50 / p95 capture → paint (ms) | tiles inferred | frames |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for seg, s in r["segments"].items():
            lines.append(f"| {r['size']} | {seg} | {'on' if r['reuse'] else 'off'} | {100 * s['displayed']:.1f} % | "
                         f"{s['p50_ms']:.0f} / {s['p95_ms']:.0f} | {100 * s['tiles_inferred']:.1f} % | "
                         f"{s['shown']} of {s['source_frames']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=40.0, help="per arm (the field video is 22.7 s; it loops)")
    ap.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["1280x720", "640x480"])
    ap.add_argument("--rounds", type=int, default=1, help="on/off pairs per size")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=str(REPO / "runs" / "app_reuse.json"))
    ap.add_argument("--docs", action="store_true", help="write the tile-reuse section of docs/benchmarks/app_bench.md")
    args = ap.parse_args(argv)

    from inspector.qt.startup import load_engine
    from scripts.make_field_video import ensure_field_video, load_field_meta

    engine = load_engine(None, args.threads)
    results = []
    for size in args.sizes:
        json_path = ensure_field_video(SIZES[size])
        meta = load_field_meta(json_path)
        for i in range(args.rounds):
            for reuse in (True, False):
                print(f"{size} round {i + 1}: reuse {'on' if reuse else 'off'} ...", file=sys.stderr, flush=True)
                arm = run(args.seconds, args.threads, engine=engine, video=json_path.parent / meta["file"], reuse=reuse)
                results.append({"size": size, "reuse": reuse, "round": i + 1,
                                "segments": per_segment(arm, meta["segment_kind"]), "arm": arm})
    info = {"machine": machine(), "threads": engine.threads, "seconds": args.seconds,
            "model": f"{engine.manifest.name}-{engine.manifest.version} ({engine.manifest.quantization.type})",
            "platform": results[0]["arm"]["platform"], "date": time.strftime("%Y-%m-%d"),
            "variant_reason": getattr(engine, "variant_reason", None)}
    text = table(results, info)
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"info": info, "results": results}) + "\n")
    if args.docs:
        rows = REPO / "docs" / "benchmarks" / "app_reuse.rows.json"
        rows.write_text(json.dumps({"info": info, "results": [{k: v for k, v in r.items() if k != "arm"} | {
            "frames": r["arm"]["frames"]} for r in results]}) + "\n")
        write_docs(f"{REUSE_SECTION}\n\nMade by `python benchmarks/app_reuse.py --seconds {args.seconds:.0f} "
                   f"--sizes {' '.join(args.sizes)} --docs`; raw frames: [app_reuse.rows.json](app_reuse.rows.json). "
                   f"Model variant: {info['variant_reason'] or 'as given'}.\n\n" + text, None, heading=REUSE_SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
