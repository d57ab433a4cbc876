"""Review workspace speed on a store of 10,000 real flags.

1. **The store.** 10,000 flags of real frames: the shipped sample video, looped, run through the
   shipped INT8 student (its real tiles, probabilities and heat-maps), written by ``FlagStore.add``
   itself (PNG files, fsync, SQLite). Times are spread over 20 days, 5 locations, 2 cameras, and
   a third of the flags are reviewed; the teacher ensemble scores as many as ``--teacher-flags``
   with the real scorer. The store is built once into ``--store`` (default ``runs/review_bench``)
   and reused.
2. **Queries** the review view makes, each as the view makes it: the ids of the whole filtered,
   sorted list, the counts line, and the records of the first grid page; p50 / p95 over repeats.
3. **The view** (the real Qt workspace, offscreen or under Xvfb): time from opening it to the
   first grid page painted with its thumbnails; grid scroll FPS (frames painted per second while
   scrolling through the whole list); resident memory.
4. **The live view with the teacher scorer on and off**: ``benchmarks/app_bench.py --teachers both``.

Goals (issue 10): first grid ≤ 1 s, queries ≤ 20 ms p95, scroll ≥ 30 FPS, live FPS unchanged.

    python benchmarks/review_bench.py --docs                 # builds the store on the first run
    python benchmarks/review_bench.py --flags 2000 --skip-live
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app_bench import percentile  # noqa: E402  (benchmarks/ is the script's folder)

GOALS = {"first_grid_s": 1.0, "query_p95_ms": 20.0, "scroll_fps": 30.0}
LOCATIONS = ("pier 1", "pier 2", "deck east", "deck west", "abutment north")
PAGE = 60       # records the grid asks for first


# --------------------------------------------------------------------------- 1. the store


def build_store(root: Path, n: int, teacher_flags: int) -> dict:
    """Fill ``root`` up to ``n`` flags (resumes a partial build); returns build timings."""
    import cv2

    from inspector.edge.engine import InferenceEngine
    from inspector.live.loop import tile_dicts
    from inspector.paths import default_model, sample_video
    from inspector.store.database import FlagStore, ModelRef

    engine = InferenceEngine(default_model(), threads=2)
    m = engine.manifest
    model = ModelRef(m.name, m.version, m.model_sha256)
    rng = random.Random(0)
    start = dt.datetime(2026, 11, 1, 7, 0, tzinfo=dt.timezone.utc)
    timings = {"added": 0, "add_s": 0.0, "infer_s": 0.0, "scored": 0, "score_s": 0.0}
    with FlagStore(root) as store:
        have = store.count()
        video = cv2.VideoCapture(str(sample_video()))
        t_last = time.perf_counter()
        for i in range(have, n):
            ok, bgr = video.read()
            if not ok:
                video.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, bgr = video.read()
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            t0 = time.perf_counter()
            result = engine.inspect(rgb)
            t1 = time.perf_counter()
            tiles = tile_dicts(result)
            p_max = max(t["crack_prob"] for t in tiles)
            reason = "crack" if p_max >= 0.9 else "uncertain" if p_max >= 0.4 else "manual"
            rec = store.add(rgb, result.heatmap, tiles, reason=reason, source=f"camera {i % 2}", model=model,
                            crack_prob_max=p_max, location=LOCATIONS[(i // 50) % len(LOCATIONS)],
                            note="efflorescence near joint" if i % 37 == 0 else None,
                            created=start + dt.timedelta(seconds=i * 170))
            t2 = time.perf_counter()
            if rng.random() < 1 / 3:
                verdict = rng.choice(["crack", "no_crack", "unsure"])
                tiles_l = ["no_crack"] * len(tiles) if verdict == "no_crack" else list(rec.model_tile_labels())
                store.set_review(rec.id, label=verdict, tile_labels=None if verdict == "unsure" else tiles_l,
                                 reviewer="bench")
            timings["added"] += 1
            timings["infer_s"] += t1 - t0
            timings["add_s"] += t2 - t1
            if time.perf_counter() - t_last > 30:
                t_last = time.perf_counter()
                print(f"  store: {i + 1} of {n} flags", flush=True)
        timings.update(score_teachers(store, teacher_flags))
        timings["flags"] = store.count()
        timings["disk_mb"] = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
    return timings


def score_teachers(store, wanted: int) -> dict:
    """Score flags with the shipped teacher ensemble, the scorer's own code, until ``wanted``
    flags carry the teachers' opinion."""
    try:
        from inspector.paths import default_teachers
        from inspector.review.teacher_scorer import TeacherScorer
    except ImportError as exc:
        print(f"  teachers: no scorer ({exc}); flags stay unscored")
        return {"scored": 0, "score_s": 0.0}
    scored = store.count() - len(store.unscored(limit=store.count() or 1))
    todo = max(0, wanted - scored)
    if not todo:
        return {"scored": scored, "score_s": 0.0}
    scorer = TeacherScorer(store, default_teachers(), threads=2)
    t0 = time.perf_counter()
    _score_with_thread(scorer, store, wanted)
    return {"scored": store.count() - len(store.unscored(limit=store.count())), "score_s": time.perf_counter() - t0}


def _score_with_thread(scorer, store, wanted: int) -> None:
    """The scorer's own thread, as in the app, until ``wanted`` flags are scored."""
    scorer.start()
    try:
        while store.count() - len(store.unscored(limit=store.count())) < wanted and store.unscored(limit=1):
            time.sleep(1.0)
    finally:
        scorer.stop()


# --------------------------------------------------------------------------- 2. queries


def query_cases():
    from inspector.store.query import FlagFilter

    return [
        ("all, most in need first", FlagFilter(), "need"),
        ("all, newest first", FlagFilter(), "time"),
        ("unreviewed, by uncertainty", FlagFilter(state="unreviewed"), "uncertainty"),
        ("reviewed crack, by probability", FlagFilter(label="crack"), "probability"),
        ("one location, one week", FlagFilter(location="deck east", since="2026-11-05", until="2026-11-11"), "time"),
        ("camera 1, p 0.4-0.6, by disagreement", FlagFilter(source="camera 1", prob_min=0.4, prob_max=0.6), "disagreement"),
        ("reason crack, model 1.1.0-int8", FlagFilter(reason="crack", model_version="1.1.0-int8"), "need"),
        ("text search 'efflorescence'", FlagFilter(text="efflorescence"), "time"),
    ]


def bench_queries(store, repeats: int) -> list[dict]:
    rows = []
    for name, flt, sort in query_cases():
        ids_ms, counts_ms, page_ms, total_ms, n = [], [], [], [], 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            ids = store.query_ids(flt, sort=sort)
            t1 = time.perf_counter()
            store.counts(flt)
            t2 = time.perf_counter()
            store.get_many(ids[:PAGE])
            t3 = time.perf_counter()
            ids_ms.append((t1 - t0) * 1e3)
            counts_ms.append((t2 - t1) * 1e3)
            page_ms.append((t3 - t2) * 1e3)
            total_ms.append((t3 - t0) * 1e3)
            n = len(ids)
        rows.append({"query": name, "sort": sort, "matches": n,
                     **{f"{k}_p50": percentile(v, 50) for k, v in
                        (("ids", ids_ms), ("counts", counts_ms), ("page", page_ms), ("total", total_ms))},
                     **{f"{k}_p95": percentile(v, 95) for k, v in
                        (("ids", ids_ms), ("counts", counts_ms), ("page", page_ms), ("total", total_ms))}})
    return rows


# --------------------------------------------------------------------------- 3. the view


def bench_view(root: Path, scroll_s: float) -> dict:
    """Open the real review workspace on the store; first page, scroll FPS, memory."""
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import psutil
    from PySide6.QtCore import QElapsedTimer, QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from inspector.qt import theme
    from inspector.store.database import FlagStore

    try:
        from inspector.qt.review.view import ReviewWorkspace
    except ImportError as exc:
        return {"error": f"no review workspace yet: {exc}"}
    app = QApplication.instance() or QApplication(["review_bench"])
    theme.apply(app)
    proc = psutil.Process()
    rss_before = proc.memory_info().rss / 2**20
    out: dict = {}
    with FlagStore(root) as store:
        timer = QElapsedTimer()
        timer.start()
        view = ReviewWorkspace(store)
        view.resize(1600, 1000)
        view.show()
        loop = QEventLoop()
        view.firstPageShown.connect(loop.quit)
        QTimer.singleShot(30_000, loop.quit)
        loop.exec()
        out["first_grid_s"] = timer.elapsed() / 1e3
        out["flags_listed"] = len(view.queue.ids)
        out.update(_scroll(app, view.grid, scroll_s))
        out["rss_mb"] = proc.memory_info().rss / 2**20
        out["rss_before_view_mb"] = rss_before
        view.close()
        view.deleteLater()
        app.processEvents()
    return out


def _scroll(app, grid, seconds: float) -> dict:
    """Scroll the grid at a steady pace (one step per event-loop turn) and count the grid's
    paints: frames per second the inspector would see."""
    from PySide6.QtCore import QEvent, QObject

    class PaintCounter(QObject):
        def __init__(self):
            super().__init__()
            self.paints = 0

        def eventFilter(self, obj, event):  # noqa: N802 - Qt API
            if event.type() == QEvent.Paint:
                self.paints += 1
            return False

    counter = PaintCounter()
    grid.viewport().installEventFilter(counter)
    bar = grid.verticalScrollBar()
    step = max(1, bar.pageStep() // 4)
    t0 = time.perf_counter()
    frames_ms: list[float] = []
    last = t0
    while time.perf_counter() - t0 < seconds:
        value = bar.value() + step
        bar.setValue(value if value <= bar.maximum() else 0)
        grid.viewport().repaint()     # paint now, as a wheel scroll does on the next frame
        app.processEvents()
        now = time.perf_counter()
        frames_ms.append((now - last) * 1e3)
        last = now
    span = time.perf_counter() - t0
    grid.viewport().removeEventFilter(counter)
    return {"scroll_s": span, "scroll_paints": counter.paints, "scroll_fps": counter.paints / span,
            "scroll_frame_ms_p50": percentile(frames_ms, 50), "scroll_frame_ms_p95": percentile(frames_ms, 95),
            "scroll_range": bar.maximum()}


# --------------------------------------------------------------------------- 4. the live view


def bench_live(seconds: float) -> dict:
    """The live window's FPS with the teacher scorer off and on (app_bench in a child process,
    so this process's Qt application and caches do not count)."""
    out_json = REPO / "runs" / "app_bench_teachers.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "app_bench.py"), "--teachers", "both",
           "--seconds", str(seconds), "--json", str(out_json)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-800:]}
    print(proc.stdout)
    return json.loads(out_json.read_text())


# --------------------------------------------------------------------------- report


def table(r: dict) -> str:
    ok = lambda good: "✓" if good else "✗"  # noqa: E731
    b = r["store"]
    lines = [f"{r['flags']} flags in the store ({b.get('disk_mb', float('nan')):.0f} MB on disk; "
             f"{b.get('scored', 0)} scored by the teachers), {platform.machine()} CPU ({os.cpu_count()} cores), "
             f"Qt platform {r.get('platform', '?')}; load average {r.get('loadavg', '?')} when the queries started "
             f"(other work on the 2 cores shows as p95).", ""]
    if b.get("added"):
        lines += [f"Building it: {b['added']} flags added, student {1e3 * b['infer_s'] / b['added']:.1f} ms and "
                  f"FlagStore.add {1e3 * b['add_s'] / b['added']:.1f} ms a flag.", ""]
    lines += ["| query (the view's three calls) | matches | ids p50 / p95 | counts p50 / p95 | first page p50 / p95 "
              "| total p50 / p95 (ms) | goal |", "|---|---|---|---|---|---|---|"]
    for q in r["queries"]:
        lines.append(f"| {q['query']} ({q['sort']}) | {q['matches']} | {q['ids_p50']:.1f} / {q['ids_p95']:.1f} | "
                     f"{q['counts_p50']:.1f} / {q['counts_p95']:.1f} | {q['page_p50']:.1f} / {q['page_p95']:.1f} | "
                     f"{q['total_p50']:.1f} / {q['total_p95']:.1f} | {ok(q['total_p95'] <= GOALS['query_p95_ms'])} |")
    v = r.get("view", {})
    lines += ["", "| the review workspace | value | goal | |", "|---|---|---|---|"]
    if "error" in v:
        lines.append(f"| not measured | {v['error']} | | |")
    elif v:
        lines += [f"| open → first grid page with thumbnails | {v['first_grid_s']:.2f} s | ≤ {GOALS['first_grid_s']:.0f} s "
                  f"| {ok(v['first_grid_s'] <= GOALS['first_grid_s'])} |",
                  f"| grid scroll (paints per second) | {v['scroll_fps']:.1f} FPS (frame p50 / p95 "
                  f"{v['scroll_frame_ms_p50']:.1f} / {v['scroll_frame_ms_p95']:.1f} ms) | ≥ {GOALS['scroll_fps']:.0f} "
                  f"| {ok(v['scroll_fps'] >= GOALS['scroll_fps'])} |",
                  f"| RSS with the workspace open (before it) | {v['rss_mb']:.0f} MB ({v['rss_before_view_mb']:.0f} MB) | | |"]
    live = r.get("live")
    if live:
        from app_bench import compare_table

        source = r.get("live_from") or "this run"
        lines += ["", f"Live view with the teacher scorer off and on (`app_bench.py --teachers both`, {source}):", ""]
        lines.append(compare_table(live["arms"], live["scoring_alone"]) if "arms" in live
                     else f"not measured: {live.get('error', live)}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flags", type=int, default=10_000)
    ap.add_argument("--teacher-flags", type=int, default=2_000, help="flags the teachers score (default 2,000: about 3 min)")
    ap.add_argument("--store", type=Path, default=REPO / "runs" / "review_bench")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--scroll-seconds", type=float, default=10.0)
    ap.add_argument("--live-seconds", type=float, default=90.0)
    ap.add_argument("--skip-view", action="store_true")
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--live-from", type=Path, help="take the live arms from this app_bench --teachers both JSON "
                                                   "instead of running it again (the report says so)")
    ap.add_argument("--json", default=str(REPO / "runs" / "review_bench.json"))
    ap.add_argument("--docs", action="store_true", help="write docs/benchmarks/review_bench.md")
    args = ap.parse_args()

    from inspector.store.database import FlagStore

    result: dict = {"platform": os.environ.get("QT_QPA_PLATFORM", "xcb" if os.environ.get("DISPLAY") else "offscreen")}
    result["store"] = build_store(args.store, args.flags, args.teacher_flags)
    result["loadavg"] = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    with FlagStore(args.store) as store:
        result["flags"] = store.count()
        result["queries"] = bench_queries(store, args.repeats)
    if not args.skip_view:
        result["view"] = bench_view(args.store, args.scroll_seconds)
    if args.live_from:
        result["live"] = json.loads(args.live_from.read_text())
        result["live_from"] = f"results of an earlier run read from {args.live_from.name}"
    elif not args.skip_live:
        result["live"] = bench_live(args.live_seconds)
    text = table(result)
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    if args.docs:
        out = REPO / "docs" / "benchmarks" / "review_bench.md"
        out.write_text("# Review workspace benchmark (`benchmarks/review_bench.py`)\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
