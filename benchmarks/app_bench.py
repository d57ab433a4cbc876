"""App-level speed and memory: the real window on the shipped sample video with the default model.

Measures what the inspector sees, not what the model does alone:

- displayed FPS: new frames that reached the screen (the view's ``framePainted``) per second;
- end-to-end latency capture → paint (``frame.t_capture`` when the grabber read the frame, to
  ``t_painted`` after the view painted it), p50 / p95, plus capture → verdict for comparison;
- resident memory (RSS) of the whole process over time, the last sample after ``--seconds``.

Goals (issue 4): ≥ 30 FPS displayed, p95 latency ≤ 50 ms, ≤ 600 MB after 5 minutes.
The sample video plays at its own 30 fps, so 30 FPS displayed is also the ceiling.

``--teachers on|off|both``: with the background teacher scorer (``inspector/review/teacher_scorer.py``,
the shipped teacher package, 1 thread, nice 19 + SCHED_IDLE) or without (the default); ``both`` alternates
the two arms ``--rounds`` times, each in a fresh window and store. An "on" arm's store is first
filled with ``--prefill`` unscored flags (sample-video frames with the student's tiles), so the
scorer has work for the whole arm, not only the few auto flags of the video.

    python benchmarks/app_bench.py --seconds 300 --docs          # offscreen; 5 min
    xvfb-run -a python benchmarks/app_bench.py --seconds 300     # a real X window
    python benchmarks/app_bench.py --teachers both --seconds 90 --rounds 2 --docs

Run it alone on the machine: other load shows up as latency.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WARMUP_S = 3.0           # first frames include session warm-up and window mapping
RSS_EVERY_S = 10.0
GOALS = {"fps": 30.0, "p95_ms": 50.0, "rss_mb": 600.0}
TEACHERS_SECTION = "## With the teacher scorer"
REUSE_SECTION = "## Tile reuse on and off"     # written by benchmarks/app_reuse.py


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def busy_cpu_s(proc) -> tuple[float, float]:
    """(this process's CPU seconds, the whole machine's non-idle CPU seconds) so far."""
    import psutil

    own = proc.cpu_times()
    total = psutil.cpu_times()
    return own.user + own.system, sum(total) - total.idle - getattr(total, "iowait", 0.0)


def discard(window) -> None:
    """Delete the window now, on this (the GUI) thread. Left to Python's cycle collector, which
    runs on whichever thread allocates at the time, a later arm's worker thread would destroy
    its timers and Qt aborts ("Timers cannot be stopped from another thread")."""
    import gc

    from PySide6.QtCore import QCoreApplication, QEvent

    window.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()


def prefill(store, engine, n: int) -> float:
    """Store ``n`` unscored flags: frames of the sample video spread over its length, with the
    student's tiles, as the app stores them. Returns the seconds it took."""
    import cv2

    from inspector.live.loop import engine_model, tile_dicts
    from inspector.paths import sample_video

    t0 = time.perf_counter()
    cap = cv2.VideoCapture(str(sample_video()))
    frames = []
    ok, bgr = cap.read()
    while ok:
        frames.append(bgr)
        for _ in range(7):  # every 7th frame: distinct views, few enough to keep in memory
            ok = cap.grab()
        ok, bgr = cap.read() if ok else (False, None)
    cap.release()
    for i in range(n):
        rgb = cv2.cvtColor(frames[i % len(frames)], cv2.COLOR_BGR2RGB)
        result = engine.inspect(rgb)
        store.add(rgb, result.heatmap, tile_dicts(result), reason="uncertain", source="app_bench prefill",
                  model=engine_model(engine), crack_prob_max=result.crack_prob_max)
    return time.perf_counter() - t0


def run(seconds: float, threads: int | None, *, teachers: bool = False, prefill_flags: int = 0, engine=None,
        video: Path | None = None, reuse: bool = True) -> dict:
    """One arm: the window on ``video`` (default: the sample video), tile reuse on or off."""
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import psutil
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from inspector.edge.reuse import ReusePolicy
    from inspector.live.flagging import Flagger
    from inspector.paths import sample_video
    from inspector.qt import theme
    from inspector.qt.startup import load_engine
    from inspector.qt.window import MainWindow
    from inspector.capture.sources import parse_source
    from inspector.store.database import FlagStore

    app = QApplication.instance() or QApplication(["app_bench"])
    theme.apply(app)
    proc = psutil.Process()
    engine = engine or load_engine(None, threads)
    scorer_info: dict = {}
    # (t_painted, capture→paint s, capture→verdict s, seq, tiles inferred, tiles)
    painted: list[tuple[float, float, float, int, int, int]] = []
    rss: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="app-bench-") as tmp, FlagStore(Path(tmp) / "flags") as store:
        scorer = None
        if teachers:
            from inspector.paths import default_teachers
            from inspector.review.teacher_scorer import TeacherScorer

            scorer_info["prefill_s"] = prefill(store, engine, prefill_flags)
            scorer_info["prefilled"] = prefill_flags
            scorer = TeacherScorer(store, default_teachers(), threads=1)
        window = MainWindow(engine, store, Flagger(), parse_source(str(video or sample_video())), scorer=scorer,
                            reuse=ReusePolicy() if reuse else None)
        window.resize(1600, 1000)
        t0 = time.perf_counter()

        def on_painted(live, t_painted: float) -> None:
            painted.append((t_painted - t0, t_painted - live.frame.t_capture, live.t_inferred - live.frame.t_capture,
                            live.frame.seq, len(live.result.fresh_tiles), len(live.result.tiles)))

        def sample_rss() -> None:
            rss.append((time.perf_counter() - t0, proc.memory_info().rss / 2**20))

        flag_times: list[float] = []
        window.view.framePainted.connect(on_painted)
        window.flagShown.connect(lambda rec: flag_times.append(round(time.perf_counter() - t0, 3)))
        timer = QTimer(interval=int(RSS_EVERY_S * 1000), timeout=sample_rss)
        timer.start()
        sample_rss()
        busy0, t_busy0 = busy_cpu_s(proc), time.perf_counter()
        window.show()
        window.start()
        QTimer.singleShot(int(seconds * 1000), app.quit)
        app.exec()
        sample_rss()
        own_s, all_s = (b - a for a, b in zip(busy0, busy_cpu_s(proc)))
        wall_s = time.perf_counter() - t_busy0
        stats = window.inspector.stats
        window.shutdown()
        flags = store.count() - scorer_info.get("prefilled", 0)
        if scorer is not None:
            scorer_info.update(package=scorer.package_path.name, threads=scorer.threads, scored=scorer.stats.scored,
                               skipped=scorer.stats.skipped, ms_per_flag=scorer.stats.ms_per_flag,
                               unscored_left=len(store.unscored(limit=100000)))
        window.close()
        discard(window)

    steady = [p for p in painted if p[0] >= WARMUP_S]
    span = (steady[-1][0] - steady[0][0]) if len(steady) > 1 else float("nan")
    e2e = [p[1] * 1e3 for p in steady]
    verdict = [p[2] * 1e3 for p in steady]
    return {
        "seconds": seconds, "warmup_s": WARMUP_S, "platform": os.environ.get("QT_QPA_PLATFORM", "xcb"),
        "model": f"{engine.manifest.name}-{engine.manifest.version}",
        "threads": engine.threads, "providers": list(engine.providers),
        "frames_painted": len(steady), "fps_displayed": (len(steady) - 1) / span if span == span and span > 0 else 0.0,
        # the source's frames in the same stretch (seq counts every frame the grabber read)
        "source_frames": (steady[-1][3] - steady[0][3] + 1) if steady else 0,
        "results": stats.results, "frames_skipped": stats.skipped,
        "latency_capture_to_paint_ms": {"p50": percentile(e2e, 50), "p95": percentile(e2e, 95),
                                        "mean": statistics.fmean(e2e) if e2e else float("nan")},
        "latency_capture_to_verdict_ms": {"p50": percentile(verdict, 50), "p95": percentile(verdict, 95)},
        "rss_mb": {"start": rss[0][1], "max": max(r for _, r in rss), "end": rss[-1][1],
                   "series": [(round(t, 1), round(r, 1)) for t, r in rss]},
        "flags_stored": flags,
        "teachers": "on" if teachers else "off",
        # CPU the whole machine and this process used during the arm, in cores: others' load
        # (a test run, another benchmark) shows up as latency here, so it is recorded
        "cpu_cores": {"this_process": own_s / wall_s, "other_processes": max(0.0, all_s - own_s) / wall_s},
        "scorer": scorer_info,
        "flag_times_s": flag_times,
        "video": str(video or "sample"), "reuse": reuse,
        "frames": [(round(t, 4), round(a * 1e3, 2), round(b * 1e3, 2), seq, fresh, n)
                   for t, a, b, seq, fresh, n in painted],
    }


def table(r: dict) -> str:
    e2e, ver, mem = r["latency_capture_to_paint_ms"], r["latency_capture_to_verdict_ms"], r["rss_mb"]
    ok = lambda good: "✓" if good else "✗"  # noqa: E731
    rows = [
        ("displayed FPS", f"{r['fps_displayed']:.2f}", f"≥ {GOALS['fps']:.0f}", ok(r["fps_displayed"] >= GOALS["fps"])),
        ("source frames that reached the screen", f"{r['frames_painted']} of {r['source_frames']} "
         f"({100.0 * r['frames_painted'] / max(1, r['source_frames']):.1f} %)", "", ""),
        ("latency capture → paint p50 / p95 (ms)", f"{e2e['p50']:.1f} / {e2e['p95']:.2f}",
         f"p95 ≤ {GOALS['p95_ms']:.0f}", ok(e2e["p95"] <= GOALS["p95_ms"])),
        ("latency capture → verdict p50 / p95 (ms)", f"{ver['p50']:.1f} / {ver['p95']:.1f}", "", ""),
        (f"RSS after {r['seconds']:.0f} s (start / max) (MB)", f"{mem['end']:.0f} ({mem['start']:.0f} / {mem['max']:.0f})",
         f"≤ {GOALS['rss_mb']:.0f}", ok(mem["end"] <= GOALS["rss_mb"])),
        ("frames painted / inferred / skipped by the worker", f"{r['frames_painted']} / {r['results']} / {r['frames_skipped']}", "", ""),
        ("flags stored", str(r["flags_stored"]), "", ""),
    ]
    lines = [f"{r['model']}, {r['threads']} inference thread(s), {r['providers'][0]}, Qt platform "
             f"{r['platform']}, {platform.machine()} CPU ({os.cpu_count()} cores), sample video 640×480 at 30 fps, "
             f"{r['seconds']:.0f} s (first {r['warmup_s']:.0f} s not counted).", "",
             "| measure | value | goal | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


def scoring_alone(engine, n: int = 20) -> dict:
    """Teacher scoring of one sample-video flag (the frame already in memory), 1 thread, with no
    live view running: the per-flag cost before any contention; and the memory its session takes."""
    import cv2
    import psutil

    from inspector.edge.engine import InferenceEngine
    from inspector.paths import default_teachers, sample_video
    from inspector.review.teacher_scorer import tile_crack_probs

    rss0 = psutil.Process().memory_info().rss
    teachers = InferenceEngine(default_teachers(), threads=1, cv2_threads=None)
    cap = cv2.VideoCapture(str(sample_video()))
    frames = [cv2.cvtColor(cap.read()[1], cv2.COLOR_BGR2RGB) for _ in range(n)]
    cap.release()
    boxes = [[list(t.box) for t in engine.inspect(f).tiles] for f in frames]
    tile_crack_probs(teachers, frames[0], boxes[0])  # warm-up
    t0 = time.perf_counter()
    for f, b in zip(frames, boxes):
        tile_crack_probs(teachers, f, b)
    return {"ms_per_flag": (time.perf_counter() - t0) * 1e3 / n,
            "session_rss_mb": (psutil.Process().memory_info().rss - rss0) / 2**20}


def compare_table(arms: list[dict], alone: dict) -> str:
    """Scorer off and on side by side, one column per arm in the order they ran."""
    rows = [
        ("teacher scorer", lambda r: r["teachers"]),
        ("displayed FPS", lambda r: f"{r['fps_displayed']:.2f}"),
        ("source frames that reached the screen", lambda r: f"{100.0 * r['frames_painted'] / max(1, r['source_frames']):.1f} %"),
        ("capture → paint p50 / p95 (ms)", lambda r: "{p50:.1f} / {p95:.1f}".format(**r["latency_capture_to_paint_ms"])),
        ("capture → verdict p50 / p95 (ms)", lambda r: "{p50:.1f} / {p95:.1f}".format(**r["latency_capture_to_verdict_ms"])),
        ("frames skipped by the worker", lambda r: str(r["frames_skipped"])),
        ("CPU used: this process / other processes (cores)",
         lambda r: "{this_process:.2f} / {other_processes:.2f}".format(**r["cpu_cores"])),
        ("auto flags stored", lambda r: str(r["flags_stored"])),
        ("flags scored (ms per flag, under load)", lambda r: f"{r['scorer']['scored']} ({r['scorer']['ms_per_flag']:.0f})"
         if r["scorer"] else "–"),
        ("unscored flags left at the end", lambda r: str(r["scorer"]["unscored_left"]) if r["scorer"] else "–"),
    ]
    first = arms[0]
    lines = [f"{first['model']}, {first['threads']} inference thread(s), {first['providers'][0]}, Qt platform "
             f"{first['platform']}, {platform.machine()} CPU ({os.cpu_count()} cores), sample video 640×480 at 30 fps; "
             f"{len(arms)} arms of {first['seconds']:.0f} s alternated (first {first['warmup_s']:.0f} s of each not "
             f"counted). Scorer: {next((a['scorer']['package'] for a in arms if a['scorer']), '–')}, 1 thread, "
             f"nice 19 + SCHED_IDLE; each \"on\" arm starts with {next((a['scorer']['prefilled'] for a in arms if a['scorer']), 0)} "
             f"unscored flags prefilled, plus the video's auto flags. Scoring one 12-tile flag alone "
             f"(no live view): {alone['ms_per_flag']:.0f} ms; the teacher session adds "
             f"{alone['session_rss_mb']:.0f} MB to the process.", "",
             "| measure | " + " | ".join(f"arm {i + 1}" for i in range(len(arms))) + " |",
             "|---|" + "---|" * len(arms)]
    lines += [f"| {name} | " + " | ".join(cell(a) for a in arms) + " |" for name, cell in rows]
    return "\n".join(lines) + "\n"


def write_docs(section: str | None, main_text: str | None, *, heading: str = TEACHERS_SECTION) -> None:
    """docs/benchmarks/app_bench.md: the main table (a plain run) and/or the section under
    ``heading`` (the teacher scorer's, tile reuse's); whatever is not given is kept as it is."""
    out = REPO / "docs" / "benchmarks" / "app_bench.md"
    old = out.read_text() if out.is_file() else "# App-level benchmark (`benchmarks/app_bench.py`)\n\n"
    parts = re.split(r"(?m)^(?=## )", old)
    head = "# App-level benchmark (`benchmarks/app_bench.py`)\n\n" + main_text + "\n" if main_text is not None \
        else parts[0]
    sections = {p.splitlines()[0]: p for p in parts[1:]}
    if section is not None:
        sections[heading] = section
    body = "\n".join(s.rstrip("\n") + "\n" for s in sections.values())
    out.write_text(head.rstrip("\n") + "\n" + ("\n" + body if body else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="per arm")
    ap.add_argument("--threads", type=int, default=None, help="inference threads (default: the app's)")
    ap.add_argument("--teachers", choices=["off", "on", "both"], default="off",
                    help="the background teacher scorer: off (default), on, or both alternated")
    ap.add_argument("--rounds", type=int, default=1, help="with --teachers both: off/on pairs to run")
    ap.add_argument("--prefill", type=int, default=600, help="unscored flags stored before an 'on' arm starts")
    ap.add_argument("--json", default=str(REPO / "runs" / "app_bench.json"))
    ap.add_argument("--docs", action="store_true", help="write docs/benchmarks/app_bench.md")
    args = ap.parse_args()
    if args.teachers != "both":
        result = run(args.seconds, args.threads, teachers=args.teachers == "on", prefill_flags=args.prefill)
        text = table(result)
        print(text)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        if args.docs:
            write_docs(None, text)
        return 0
    from inspector.qt.startup import load_engine

    engine = load_engine(None, args.threads)
    arms = []
    for i in range(args.rounds):
        for on in (False, True):
            print(f"round {i + 1}: scorer {'on' if on else 'off'} ...", file=sys.stderr, flush=True)
            arms.append(run(args.seconds, args.threads, teachers=on, prefill_flags=args.prefill, engine=engine))
    alone = scoring_alone(engine)  # last: its session must not sit in the first arm's memory
    text = compare_table(arms, alone)
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"scoring_alone": alone, "arms": arms}, indent=2))
    if args.docs:
        write_docs(TEACHERS_SECTION + "\n\n" + text, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
