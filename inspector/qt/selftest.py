"""``inspector --selftest``: the whole app, end to end, for a few seconds, with a report.

Opens the real window (offscreen unless a display is asked for), plays the source through the
model, flags the frame on screen by hand once (automatic flags may add more) into a temporary
store, stops (which drains the flag writes) and checks what it got: frames painted, results,
every flag decided is in the store with a readable frame. It then reviews the manual flag (frame
and tile labels, as an inspector would in the review view; the automatic flags too, so that an
export has both classes) and reads the reviews back. Prints the report, with the start-up
times; exit status 0 only if all of that worked.

With ``--store DIR`` the flags and the review stay in DIR (a fresh folder), so that the bundle's
self-test (scripts/build_bundle.sh) can export them for ``distill update``.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

from PySide6.QtCore import QEventLoop, QTimer

MIN_FRAMES = 3
TICK_MS = 50
REVIEWER = "selftest"


def _process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), so the report can say how long the
    imports took before the window opened; None elsewhere."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _review(store, record):
    """Label a flag as a reviewer would: each tile by the student's verdict, the frame crack if
    any tile is; returns the record read back from the store."""
    tiles = ["crack" if t["crack_prob"] >= 0.5 else "no_crack" for t in record.tiles]
    label = "crack" if "crack" in tiles else "no_crack"
    store.set_review(record.id, label=label, tile_labels=tiles, reviewer=REVIEWER)
    return store.get(record.id)


def _wait(app, window, seconds: float, deadline_s: float) -> tuple[bool, float]:
    """Run the event loop until ``seconds`` have passed with frames shown and a manual flag
    stored, or ``deadline_s``; the manual flag is asked for once the first frame is on screen."""
    loop = QEventLoop()
    t0 = time.perf_counter()
    state = {"asked": False, "first_frame_s": None}

    def tick():
        elapsed = time.perf_counter() - t0
        if state["first_frame_s"] is None and window.frames_shown >= 1:
            state["first_frame_s"] = elapsed
        if not state["asked"] and window.frames_shown >= 1:
            state["asked"] = window.flag_now()
        manual_stored = any(r.reason == "manual" for r in window.flags)
        done = elapsed >= seconds and window.frames_shown >= MIN_FRAMES and manual_stored
        if done or elapsed >= deadline_s:
            loop.quit()

    timer = QTimer(interval=TICK_MS, timeout=tick)
    timer.start()
    loop.exec()
    timer.stop()
    return state["asked"], time.perf_counter() - t0, state["first_frame_s"]


def run_selftest(app, args) -> int:
    from inspector.store.database import FlagStore
    from inspector.qt.startup import StartupError, load_engine, resolve_source
    from inspector.qt.window import make_window

    out = sys.stdout
    print("inspector self-test", file=out)
    try:
        engine = load_engine(args.model, args.threads)
        source, notice = resolve_source(args.source)
    except StartupError as exc:
        print(f"FAILED: {exc}", file=out)
        return 2
    m = engine.manifest
    print(f"  model     {m.name} {m.version} (model sha256 {m.model_sha256[:12]}…)", file=out)
    print(f"  provider  {', '.join(engine.providers)} on a CPU with {getattr(engine, 'isa', '?')}"
          + (f"  [fallback: {engine.provider_fallback}]" if engine.provider_fallback else ""), file=out)
    if getattr(engine, "variant_reason", None):
        print(f"  variant   {engine.variant_reason}", file=out)
    if getattr(engine, "verification", None) is not None:
        print(f"  check     {engine.verification.summary()}", file=out)
    print(f"  source    {source.label} ({source.kind})" + (f"  — {notice}" if notice else ""), file=out)

    problems: list[str] = []
    with contextlib.ExitStack() as stack:
        root = args.store or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="inspector-selftest-"))) / "flags"
        store = FlagStore(root)
        reviewed: list = []
        try:
            before = store.count()
            opened_at = _process_age_s()
            window = make_window(engine, store, source, notice)
            window.show()
            window.start()
            asked, elapsed, first_frame_s = _wait(app, window, args.selftest_seconds,
                                                  deadline_s=max(30.0, 5 * args.selftest_seconds))
            fps, latency = window.hud.meter.fps(), window.hud.meter.latency_ms()
            window.shutdown()                 # drains the flag writes
            app.processEvents()               # deliver the last flagStored signals
            stats = window.inspector.stats
            records = store.list()[: store.count() - before]
            reviewed = [_review(store, r) for r in records]
            unreadable = [r.id for r in records if store.load_frame(r).shape != (r.height, r.width, 3)]
            shown_frames, errors = window.frames_shown, list(window.errors)
            window.close()
        finally:
            store.close()

    reasons: dict[str, int] = {}
    for r in records:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    print(f"  ran       {elapsed:.1f} s", file=out)
    print(f"  startup   window opened {'—' if opened_at is None else f'{opened_at:.1f} s'} after the process "
          f"started; first frame on screen {'—' if first_frame_s is None else f'{first_frame_s:.2f} s'} later",
          file=out)
    print(f"  frames    {shown_frames} shown, {stats.results} results, {stats.skipped} skipped "
          f"(newest frame wins); displayed {fps:.1f} fps ({shown_frames / max(elapsed, 1e-6):.1f} average)",
          file=out)
    print(f"  latency   capture→screen {'—' if latency is None else f'{latency:.0f} ms'} (median); "
          f"inference {stats.infer_ms_mean:.0f} ms/frame", file=out)
    print(f"  flags     {len(records)} stored in {args.store or 'a temporary store'} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(reasons.items())) or 'none'}); "
          f"{stats.flags_queued} decided, {stats.flags_stored} written", file=out)
    if reviewed:
        print(f"  review    {len(reviewed)} flags labelled by {REVIEWER}: "
              + ", ".join(f"{r.reason} → {r.label} ({(r.tile_labels or ()).count('crack')}/{len(r.tiles)} tiles crack)"
                          for r in reviewed), file=out)
    if errors:
        print(f"  errors    {len(errors)}: {errors[0]}", file=out)

    if shown_frames < MIN_FRAMES:
        problems.append(f"only {shown_frames} frames reached the screen (want ≥ {MIN_FRAMES})")
    if stats.results < MIN_FRAMES:
        problems.append(f"only {stats.results} inference results (want ≥ {MIN_FRAMES})")
    if not asked:
        problems.append("the manual flag could not be requested (no result on screen)")
    if not any(r.reason == "manual" for r in records):
        problems.append("the manual flag is not in the store")
    if stats.flags_stored != stats.flags_queued or len(records) != stats.flags_stored:
        problems.append(f"flags decided {stats.flags_queued}, written {stats.flags_stored}, "
                        f"in the store {len(records)}: some were lost")
    unread = [r.id for r in reviewed if r.label is None or r.reviewer != REVIEWER]
    if unread or (records and not reviewed):
        problems.append(f"the reviews of flags {unread or [r.id for r in records]} did not read back")
    if unreadable:
        problems.append(f"flags {unreadable} have unreadable frames")
    if errors:
        problems.append(f"{len(errors)} error(s) during the run, first: {errors[0]}")
    if problems:
        for p in problems:
            print(f"FAILED: {p}", file=out)
        return 1
    print("OK", file=out)
    return 0
