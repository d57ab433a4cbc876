"""What remembering every flag costs: loading the store's flags at start, and comparing a frame
with all of them.

* **Load** (:class:`StoreMemory`): a temporary store with ``--flags`` flags (frames of the sample
  video, 640×480, and the same frames enlarged to 1280×720), loaded by a StoreMemory as the app
  starts it (its own thread, nice 19); per size: ms per flag (read + PNG decode + signatures).
* **Compare** (:meth:`Flagger.offer`): a flagger that remembers N views (N = 0 … ``--flags``),
  offered a new candidate frame that could win its window; ms per offer (the thumbnail, its
  place signature, the thumbnail product and the phase correlation with every remembered view).
  This is the cost of each candidate the flagger has to look at (the first of a window and each
  better one); a candidate that cannot win is not compared (benchmarks/flag_volume.py gives the
  per-frame cost on a whole walk).
* **Walk**: the sample video once, every frame a candidate, with N views of other walls
  remembered: the flagger's ms per frame when every frame is a candidate.

    python benchmarks/flag_memory.py --docs          # about a minute on 2 cores

Writes runs/flag_memory.json (``--docs``: docs/benchmarks/flag_memory.{md,rows.json}).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.int8_isa import machine  # noqa: E402
from benchmarks.results import save  # noqa: E402
from benchmarks.tile_reuse import video_frames  # noqa: E402
from inspector.edge.engine import FrameResult, TileResult  # noqa: E402
from inspector.live.flagging import Flagger, FlagPolicy  # noqa: E402
from inspector.live.memory import StoreMemory  # noqa: E402

SIZES = ((640, 480), (1280, 720))
COUNTS = (0, 10, 100, 200, 500, 1000, 2000)
REPEATS = 30


def candidate_result(w: int, h: int, p: float) -> FrameResult:
    """A frame result with one confident crack tile of probability ``p``."""
    tile = TileResult((0, 0, w, h), np.array([1 - p, p], np.float32), p, np.zeros((3, 3), np.float32))
    return FrameResult([tile], np.zeros((h, w), np.float32), p)


def load_rows(frames: list[np.ndarray], n: int) -> list[dict]:
    from inspector.store.database import FlagStore, ModelRef

    rows = []
    for w, h in SIZES:
        with tempfile.TemporaryDirectory(prefix="flag-memory-") as tmp, FlagStore(Path(tmp) / "flags") as store:
            for i in range(n):
                frame = cv2.resize(frames[i % len(frames)], (w, h), interpolation=cv2.INTER_LINEAR)
                store.add(frame, np.zeros((h, w), np.float32), [{"box": [0, 0, w, h], "crack_prob": 0.95}],
                          reason="crack", source="bench", model=ModelRef("m", "1", "ab" * 32), crack_prob_max=0.95)
            memory = StoreMemory(Flagger(), store, limit=n)
            t0 = time.perf_counter()
            memory.start()
            memory.wait()
            took = time.perf_counter() - t0
        rows.append({"part": "load", "size": f"{w}×{h}", "flags": n, "loaded": memory.loaded,
                     "skipped": memory.skipped, "s": took, "ms_per_flag": 1e3 * took / max(1, memory.loaded)})
        print(f"load {w}×{h}: {n} flags in {took:.1f} s", file=sys.stderr, flush=True)
    return rows


def compare_rows(frames: list[np.ndarray], n_max: int) -> list[dict]:
    rows = []
    for w, h in SIZES:
        sized = [cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in frames]
        for n in (c for c in COUNTS if c <= n_max):
            # a window that never ends and a rising value: every offer can win, so every offer is
            # compared with every view; no place veto and upside-down probes (views nobody
            # remembered): no early way out
            flagger = Flagger(FlagPolicy(same_place_peak=None, window_s=1e9))
            for i in range(n):
                flagger.remember(sized[i % len(sized)])
            probes = [np.ascontiguousarray(sized[i][::-1]) for i in range(0, len(sized), len(sized) // REPEATS)]
            ms = []
            for k in range(REPEATS):
                t0 = time.perf_counter()
                flagger.offer(probes[k], candidate_result(w, h, 0.91 + 0.002 * k), float(k))
                ms.append(1e3 * (time.perf_counter() - t0))
            assert flagger.stats.same_view == 0, "a probe was taken for a remembered view: not a full comparison"
            rows.append({"part": "compare", "size": f"{w}×{h}", "flags": n, "ms_median": statistics.median(ms),
                         "ms_max": max(ms)})
            print(f"compare {w}×{h}, {n} remembered: {statistics.median(ms):.2f} ms", file=sys.stderr, flush=True)
    return rows


def walk_rows(frames: list[np.ndarray], n_max: int) -> list[dict]:
    """The sample video once through a flagger that remembers N views of other walls (its own
    frames upside down), every frame a candidate (a crack tile, 0.95): the flagger's ms per
    frame when every frame is a candidate (a frame that is the same view as a flag is settled by
    the cheap thumbnail product; the others are compared with every view)."""
    rows = []
    others = [np.ascontiguousarray(f[::-1]) for f in frames]
    h, w = frames[0].shape[:2]
    res = candidate_result(w, h, 0.95)
    for n in (c for c in COUNTS if c <= n_max):
        flagger = Flagger()
        for i in range(n):
            flagger.remember(others[i % len(others)])
        ms = []
        for i, rgb in enumerate(frames):
            t0 = time.perf_counter()
            flagger.offer(rgb, res, i / 30)
            ms.append(1e3 * (time.perf_counter() - t0))
        flagger.flush()
        rows.append({"part": "walk", "size": f"{w}×{h}", "flags": n, "frames": len(frames),
                     "ms_mean": float(np.mean(ms)), "ms_p99": float(np.percentile(ms, 99)),
                     "kept": flagger.stats.kept})
        print(f"walk, {n} remembered: {np.mean(ms):.2f} ms per frame", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], info: dict) -> str:
    m = info["machine"]
    lines = [f"{m['cpu']} ({m['native_isa']}, {m['cores']} cores), {info['date']}; frames of {info['video']}.", "",
             "Loading the store's flags at start (StoreMemory, nice 19):", "",
             "| frame size | flags | loaded | skipped | seconds | ms per flag |", "|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["part"] == "load"):
        lines.append(f"| {r['size']} | {r['flags']} | {r['loaded']} | {r['skipped']} | {r['s']:.1f} | "
                     f"{r['ms_per_flag']:.1f} |")
    lines += ["", "One candidate frame compared with every remembered view (Flagger.offer), median of "
              f"{REPEATS}:", "", "| frame size | views remembered | ms per candidate: median / max |", "|---|---|---|"]
    for r in (r for r in rows if r["part"] == "compare"):
        lines.append(f"| {r['size']} | {r['flags']} | {r['ms_median']:.2f} / {r['ms_max']:.2f} |")
    lines += ["", "The sample video once, every frame a candidate, the flagger remembering N views of other "
              "walls (the worst case: each frame must be looked at):", "",
              "| frame size | views remembered | ms per frame: mean / p99 | flags kept |", "|---|---|---|---|"]
    for r in (r for r in rows if r["part"] == "walk"):
        lines.append(f"| {r['size']} | {r['flags']} | {r['ms_mean']:.2f} / {r['ms_p99']:.2f} | {r['kept']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flags", type=int, default=2000, help="flags in the store (and the most views compared)")
    ap.add_argument("--json", default=str(REPO / "runs" / "flag_memory.json"))
    ap.add_argument("--docs", action="store_true")
    args = ap.parse_args(argv)
    if args.flags < 1:
        ap.error("--flags must be at least 1")

    from inspector.paths import sample_video

    frames = list(video_frames(sample_video()))
    rows = load_rows(frames, args.flags) + compare_rows(frames, args.flags) + walk_rows(frames, args.flags)
    info = {"video": sample_video().name, "flags": args.flags, "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    text = table(rows, info)
    print(text)
    opts = "" if args.flags == 2000 else f" --flags {args.flags}"
    save("flag_memory", {"info": info, "rows": rows}, text, json_path=args.json, docs=args.docs,
         title="What remembering every flag costs", command=f"python benchmarks/flag_memory.py{opts} --docs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
