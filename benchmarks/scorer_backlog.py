"""Does the teacher scorer keep up with the flags the live view keeps? The real live path, no window.

Issue: "The teacher scorer keeps up with what is kept" (a 67-minute field trial: 544 of 884 flags
still unscored at 40 minutes). Per arm, in a fresh temporary flag store:

* the live path as the app runs it, without Qt: :class:`~inspector.live.loop.LiveInspector` with the
  app's engine (``inspector.qt.startup.load_engine``: the shipped student in the faster variant, every
  usable core up to 4, tile reuse on) on the shipped sample video, looped and played at its own
  30 fps as the window's ``default_grabber`` plays it (``FrameGrabber(spec, loop=True, realtime=True)``),
  no ``pace`` (the app sets one only while a model update trains), a :class:`Flagger` and a
  :class:`FlagStore`;
* the app's teacher scorer (``startup.make_scorer``: the shipped ``crack-teachers`` package, one
  thread, nice 19 + SCHED_IDLE), started after the live view as ``MainWindow.start`` does and
  notified on every stored flag as ``MainWindow._on_flag_stored`` does.

It runs ``--minutes``, sampling every ``--sample-s`` seconds: flags stored, flags scored, backlog
(stored − scored), the scorer's ``stats.ms_per_flag`` and its thread's CPU time. Then the live view
is stopped (every decided flag written) and the scorer keeps going alone for up to ``--drain-s``
seconds until nothing is left. Per arm: flags kept per minute, the scorer's ms per flag while the
live view ran (its wall time per flag, so what it waited for the cores is in it), its capacity
60000 / ms per flag in flags per minute, utilisation = kept rate / capacity (above 1: it falls
behind), the largest backlog, the backlog when the live view stopped and the drain time (last
flag stored → every flag scored).

Arms (``--flag-policy``): ``now`` = the app's default ``FlagPolicy()``; ``before`` =
``FlagPolicy(duplicate_memory=8, same_place_peak=None)``, the old de-duplication (about 9× the
flags on a looping walk, benchmarks/flag_volume.py); ``before-full`` and ``now-full``: the same
with tile reuse off (every tile of every frame, as the live view ran in the field trial, before
issue 21, and as a slower CPU still may: the live view then keeps the cores busy, and an
idle-priority thread gets only what is left).

    python benchmarks/scorer_backlog.py --docs          # all arms, 5 min each: about 25 minutes
    python benchmarks/scorer_backlog.py --minutes 1     # a quick check

Writes runs/scorer_backlog.json (``--docs``: docs/benchmarks/scorer_backlog.{md,rows.json}).
Run it alone on the machine: other load takes the cores the idle-priority scorer would get.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.int8_isa import machine  # noqa: E402
from benchmarks.results import save  # noqa: E402
from inspector.live.flagging import Flagger, FlagPolicy  # noqa: E402

# name: (label, flag policy, tile reuse in the live view)
ARMS = {"now": ("every view and place of the session (now, the default)", FlagPolicy(), True),
        "before": ("last 8 flags, same view only (before)", FlagPolicy(duplicate_memory=8, same_place_peak=None),
                   True),
        "before-full": ("last 8 flags, same view only; every tile of every frame (the field trial's live view)",
                        FlagPolicy(duplicate_memory=8, same_place_peak=None), False),
        "now-full": ("every view and place of the session; every tile of every frame",
                     FlagPolicy(), False)}
TICK_S = 0.1          # the main thread's polling step (engine loaded? drained? next sample due?)
SCORER_THREAD = "teacher-scorer"


def thread_cpu(name: str) -> dict | None:
    """CPU seconds, nice and scheduling policy of this process's thread called ``name`` (Linux /proc)."""
    th = next((t for t in threading.enumerate() if t.name == name and t.native_id), None)
    if th is None:
        return None
    try:
        with open(f"/proc/self/task/{th.native_id}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    # after "pid (comm)": state=0, utime=11, stime=12, nice=16, policy=38 (SCHED_IDLE = 5)
    return {"cpu_s": (int(fields[11]) + int(fields[12])) / tick, "nice": int(fields[16]),
            "policy": {0: "SCHED_OTHER", 3: "SCHED_BATCH", 5: "SCHED_IDLE"}.get(int(fields[38]), fields[38])}


def cpu_now(proc) -> tuple[float, float]:
    """(this process's CPU seconds, the machine's non-idle CPU seconds) so far."""
    import psutil

    own, total = proc.cpu_times(), psutil.cpu_times()
    return own.user + own.system, sum(total) - total.idle - getattr(total, "iowait", 0.0)


def max_backlog(stored: list[float], scored: list[float]) -> int:
    """The largest stored − scored over time, from the event times (a scoring at the same instant
    as a store counts after it)."""
    events = sorted([(t, 0, 1) for t in stored] + [(t, 1, -1) for t in scored])
    level = peak = 0
    for _, _, d in events:
        level += d
        peak = max(peak, level)
    return peak


def _num(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def run_arm(name: str, engine, teachers: Path, minutes: float, sample_s: float, drain_s: float) -> dict:
    import psutil

    from inspector.capture.sources import FrameGrabber, parse_source
    from inspector.edge.reuse import ReusePolicy
    from inspector.live.loop import LiveInspector
    from inspector.paths import sample_video
    from inspector.qt.startup import make_scorer
    from inspector.store.database import FlagStore

    label, policy, reuse = ARMS[name]
    proc = psutil.Process()
    stored_t: list[float] = []      # perf_counter of each durable flag write (list.append: thread-safe)
    scored_t: list[float] = []      # perf_counter of each flag the scorer finished
    scorer_cpu_at_scored: list[float] = []
    results = {"n": 0, "infer_ms": 0.0, "first_seq": None, "last_seq": None}
    errors: list[str] = []
    rows: list[dict] = []

    with tempfile.TemporaryDirectory(prefix="scorer-backlog-") as tmp:
        store = FlagStore(Path(tmp) / "store")
        scorer = make_scorer(store, teachers)

        def on_scored(_rec) -> None:   # on the scorer's thread
            scored_t.append(time.perf_counter())
            scorer_cpu_at_scored.append(time.thread_time())

        def on_flag_stored(_rec) -> None:   # on the store writer's thread
            stored_t.append(time.perf_counter())
            scorer.notify()

        def on_result(live) -> None:   # on the inference thread: cheap counters only
            results["n"] += 1
            results["infer_ms"] += float(live.result.timings.get("total", 0.0))
            seq = getattr(live.frame, "seq", None)
            if results["first_seq"] is None:
                results["first_seq"] = seq
            results["last_seq"] = seq

        scorer.on_scored = on_scored
        grabber = FrameGrabber(parse_source(str(sample_video())), loop=True, realtime=True)  # window.default_grabber
        live = LiveInspector(engine, grabber, store, Flagger(policy), on_result=on_result,
                             on_flag_stored=on_flag_stored, on_error=lambda e: errors.append(str(e)),
                             reuse=ReusePolicy() if reuse else None)

        def done() -> int:
            return scorer.stats.scored + scorer.stats.skipped

        def sample(phase: str, t0: float, prev: dict | None) -> dict:
            now = time.perf_counter()
            st = scorer.stats
            cpu = thread_cpu(SCORER_THREAD)
            own, busy = cpu_now(proc)
            row = {"arm": name, "phase": phase, "t_s": round(now - t0, 1), "stored": len(stored_t),
                   "scored": done(), "backlog": len(stored_t) - done(),
                   "ms_per_flag": _num(round(st.ms_per_flag, 1)) if st.scored else None,
                   "busy_s": st.busy_s, "scorer_cpu_s": cpu["cpu_s"] if cpu else None,
                   "inspected": results["n"], "_own": own, "_busy": busy, "_t": now}
            if prev is not None and now - prev["_t"] >= 1.0:   # rates over shorter intervals are noise
                dt = now - prev["_t"]
                n = st.scored - prev["_scored_only"]
                row["ms_per_flag_interval"] = round(1e3 * (st.busy_s - prev["busy_s"]) / n, 1) if n else None
                row["inspected_fps"] = round((results["n"] - prev["inspected"]) / dt, 2)
                if cpu and prev["scorer_cpu_s"] is not None:
                    row["scorer_cores"] = round((cpu["cpu_s"] - prev["scorer_cpu_s"]) / dt, 3)
                row["process_cores"] = round((own - prev["_own"]) / dt, 3)
                row["other_cores"] = round(max(0.0, (busy - prev["_busy"]) - (own - prev["_own"])) / dt, 3)
            row["_scored_only"] = st.scored
            return row

        t0 = time.perf_counter()
        cpu0 = cpu_now(proc)
        live.start()
        scorer.start()                      # as MainWindow.start: the live view first
        t_loaded = None
        prev = sample("live", t0, None)
        rows.append(prev)
        t_end = t0 + 60.0 * minutes
        next_sample = t0 + sample_s
        while (now := time.perf_counter()) < t_end:
            if t_loaded is None and scorer.engine is not None:
                t_loaded = now - t0
            if now >= next_sample:
                prev = sample("live", t0, prev)
                rows.append(prev)
                next_sample += sample_s
            time.sleep(min(TICK_S, max(0.0, t_end - now)))
        prio = thread_cpu(SCORER_THREAD)
        live.stop()                         # every decided flag is written before this returns
        t_stop = time.perf_counter()
        cpu_stop = cpu_now(proc)
        at_stop = sample("live", t0, prev)
        rows.append(at_stop)
        live_stats = {"scored": scorer.stats.scored, "busy_s": scorer.stats.busy_s,
                      "scorer_cpu_s": at_stop["scorer_cpu_s"]}
        prev = at_stop
        next_sample = t_stop + sample_s
        while done() < len(stored_t) and (now := time.perf_counter()) < t_stop + drain_s:
            if now >= next_sample:
                prev = sample("drain", t0, prev)
                rows.append(prev)
                next_sample += sample_s
            time.sleep(TICK_S)
        if rows[-1]["phase"] != "drain" or rows[-1]["scored"] != done():
            rows.append(sample("drain", t0, prev))
        t_drained = time.perf_counter()
        scorer.stop()
        unscored_in_store = len(store.unscored(limit=100_000))
        store.close()

    live_s = t_stop - t0
    kept = len(stored_t)
    kept_per_min = 60.0 * kept / live_s
    ms_live = 1e3 * live_stats["busy_s"] / live_stats["scored"] if live_stats["scored"] else None
    capacity = 60000.0 / ms_live if ms_live else None
    drain_scored = scorer.stats.scored - live_stats["scored"]
    ms_drain = 1e3 * (scorer.stats.busy_s - live_stats["busy_s"]) / drain_scored if drain_scored else None
    drained = done() >= kept
    last_stored = max(stored_t) if stored_t else None
    if not kept:
        drain_time = 0.0
    else:
        drain_time = max(0.0, max(scored_t, default=last_stored) - last_stored) if drained else None
    scorer_live_cpu = live_stats["scorer_cpu_s"]
    for r in rows:
        for k in ("_own", "_busy", "_t", "_scored_only", "busy_s"):
            r.pop(k, None)
    span = (results["last_seq"] or 0) - (results["first_seq"] or 0) + 1 if results["n"] else 0
    summary = {
        "arm": name, "flagger": label,
        "policy": {"duplicate_memory": policy.duplicate_memory, "same_place_peak": policy.same_place_peak},
        "live_s": round(live_s, 1), "frames_inspected": results["n"],
        "inspected_fps": round(results["n"] / live_s, 2),
        "frames_skipped": max(0, span - results["n"]),
        "infer_ms_mean": round(results["infer_ms"] / results["n"], 1) if results["n"] else None,
        "flags_kept": kept, "kept_per_min": round(kept_per_min, 2),
        "scored_while_live": live_stats["scored"], "scored_total": scorer.stats.scored,
        "skipped": scorer.stats.skipped,
        "teacher_loaded_s": None if t_loaded is None else round(t_loaded, 1),
        "ms_per_flag_live": None if ms_live is None else round(ms_live, 1),
        "ms_per_flag_drain": None if ms_drain is None else round(ms_drain, 1),
        "ms_per_flag_all": _num(round(scorer.stats.ms_per_flag, 1)),
        "capacity_per_min": None if capacity is None else round(capacity, 1),
        "utilisation": None if capacity is None else round(kept_per_min / capacity, 4),
        "max_backlog": max_backlog(stored_t, scored_t),
        "backlog_at_stop": at_stop["backlog"], "backlog_after_drain": kept - done(),
        "unscored_in_store": unscored_in_store,
        "drain_s": None if drain_time is None else round(drain_time, 2),
        "drain_wait_s": round(t_drained - t_stop, 1),
        "scorer_cpu_s_live": scorer_live_cpu,
        "scorer_cores_live": None if scorer_live_cpu is None else round(scorer_live_cpu / live_s, 3),
        # between consecutive scorings (the first one's includes loading the package)
        "scorer_cpu_ms_per_flag": round(1e3 * statistics.mean(
            b - a for a, b in zip(scorer_cpu_at_scored, scorer_cpu_at_scored[1:])), 1)
            if len(scorer_cpu_at_scored) > 1 else None,
        "process_cores_live": round((cpu_stop[0] - cpu0[0]) / live_s, 3),
        "other_cores_live": round(max(0.0, (cpu_stop[1] - cpu0[1]) - (cpu_stop[0] - cpu0[0])) / live_s, 3),
        "scorer_priority": None if prio is None else {"nice": prio["nice"], "policy": prio["policy"]},
        "errors": errors[:20], "n_errors": len(errors),
    }
    return {"summary": summary, "samples": rows}


def _f(v, fmt: str = "{:.0f}", none: str = "–") -> str:
    return none if v is None else fmt.format(v)


def table(arms: list[dict], info: dict) -> str:
    m = info["machine"]
    lines = [f"{m['cpu']} ({m['native_isa']}, {m['cores']} cores), onnxruntime {m['onnxruntime']}; live view: "
             f"{info['model']} ({info['variant']}), {info['threads']} inference threads, tile reuse as the arm says, "
             f"{info['video']} looped at {info['fps']:g} fps, no pace; scorer: {info['teachers']}, 1 thread, "
             f"nice 19 + SCHED_IDLE; {info['minutes']:g} min live per arm, then up to {info['drain_s']:g} s "
             f"for the scorer alone; {info['date']}.", "",
             "| flagger | flags kept (per min) | scored while live | scorer ms / flag while live: wall (CPU) | "
             "capacity (flags / min) | utilisation | max backlog | backlog at stop | drain time (s) | "
             "scorer CPU while live (cores) | live: inspected fps, infer ms | CPU: this process / others (cores) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in arms:
        s = a["summary"]
        drain = _f(s["drain_s"], "{:.1f}") if s["drain_s"] is not None else \
            f"not drained: {s['backlog_after_drain']} left after {s['drain_wait_s']:.0f} s"
        util = "–" if s["utilisation"] is None else f"{s['utilisation']:.3f}"
        lines.append(
            f"| {s['flagger']} | {s['flags_kept']} ({s['kept_per_min']:.1f}) | {s['scored_while_live']} | "
            f"{_f(s['ms_per_flag_live'])} ({_f(s['scorer_cpu_ms_per_flag'])}) | {_f(s['capacity_per_min'])} | "
            f"{util} | {s['max_backlog']} | {s['backlog_at_stop']} | {drain} | "
            f"{_f(s['scorer_cores_live'], '{:.3f}')} | {s['inspected_fps']:.1f}, {_f(s['infer_ms_mean'], '{:.1f}')} | "
            f"{s['process_cores_live']:.2f} / {s['other_cores_live']:.2f} |")
    lines += ["", "Capacity = 60000 / the scorer's ms per flag while the live view ran (its wall time per flag, "
              "waiting for a core included); utilisation = flags kept per minute / capacity (above 1: the "
              "backlog grows); CPU: the scorer thread's CPU time per flag (all of it, including the store "
              "round trips). Drain time: the last flag stored → every flag scored (0 when none was waiting). "
              "Scorer ms / flag alone, after the live view stopped (only with a backlog then): "
              + "; ".join(f"{a['summary']['arm']} {_f(a['summary']['ms_per_flag_drain'])}" for a in arms)
              + ". Scorer thread as measured: "
              + "; ".join(f"{a['summary']['arm']} {(a['summary']['scorer_priority'] or {}).get('policy', '?')}, "
                          f"nice {(a['summary']['scorer_priority'] or {}).get('nice', '?')}" for a in arms) + "."]
    return "\n".join(lines) + "\n"


def samples_table(arms: list[dict]) -> str:
    lines = ["| flagger | phase | t (s) | stored | scored | backlog | ms / flag (cumulative) | "
             "ms / flag (interval) | scorer CPU (cores) | inspected fps | other processes (cores) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in arms:
        for r in a["samples"]:
            lines.append(f"| {r['arm']} | {r['phase']} | {r['t_s']:.0f} | {r['stored']} | {r['scored']} | "
                         f"{r['backlog']} | {_f(r['ms_per_flag'])} | {_f(r.get('ms_per_flag_interval'))} | "
                         f"{_f(r.get('scorer_cores'), '{:.2f}')} | {_f(r.get('inspected_fps'), '{:.1f}')} | "
                         f"{_f(r.get('other_cores'), '{:.2f}')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0, help="live minutes per arm")
    ap.add_argument("--flag-policy", choices=["all", *ARMS], default="all", help="the arm(s) to run")
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--drain-s", type=float, default=120.0, help="the longest wait for the scorer after the live view")
    ap.add_argument("--threads", type=int, default=None, help="inference threads (default: the app's)")
    ap.add_argument("--json", default=str(REPO / "runs" / "scorer_backlog.json"))
    ap.add_argument("--docs", action="store_true")
    args = ap.parse_args(argv)
    if not args.minutes > 0 or not args.sample_s > 0 or args.drain_s < 0:
        ap.error("--minutes and --sample-s must be positive, --drain-s not negative")

    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from inspector.paths import default_teachers, sample_video
    from inspector.qt.startup import default_threads, load_engine

    threads = args.threads or default_threads()
    engine = load_engine(None, threads)
    teachers = default_teachers()
    meta = json.loads(sample_video().with_suffix(".json").read_text())
    names = list(ARMS) if args.flag_policy == "all" else [args.flag_policy]
    info = {"video": sample_video().name, "fps": float(meta["fps"]), "frames": int(meta["frames"]),
            "model": f"{engine.manifest.name}-{engine.manifest.version}",
            "variant": getattr(engine, "variant_reason", ""), "threads": threads, "teachers": teachers.name,
            "minutes": args.minutes, "drain_s": args.drain_s, "sample_s": args.sample_s,
            "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    arms = []
    for name in names:
        print(f"arm {name}: {args.minutes:g} min live …", file=sys.stderr, flush=True)
        arm = run_arm(name, engine, teachers, args.minutes, args.sample_s, args.drain_s)
        s = arm["summary"]
        print(f"arm {name}: {s['flags_kept']} flags kept, {s['scored_total']} scored, max backlog "
              f"{s['max_backlog']}, drain {s['drain_s']} s", file=sys.stderr, flush=True)
        arms.append(arm)
    text = table(arms, info)
    print(text)
    print(samples_table(arms))
    out = {"info": info, "arms": [a["summary"] for a in arms], "samples": [r for a in arms for r in a["samples"]]}
    opts = "" if args.minutes == 5.0 else f" --minutes {args.minutes:g}"
    opts += "" if args.flag_policy == "all" else f" --flag-policy {args.flag_policy}"
    m = info["machine"]
    page = (f"Machine: {m['cpu']}, CPU ISA {m['native_isa']} ({m['machine']}), {m['cores']} cores.\n\n" + text
            + f"\n## Sampled every {args.sample_s:g} s\n\n" + samples_table(arms))
    save("scorer_backlog", out, page, json_path=args.json, docs=args.docs,
         title="Does the teacher scorer keep up with the flags kept?",
         command=f"python benchmarks/scorer_backlog.py{opts} --docs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
