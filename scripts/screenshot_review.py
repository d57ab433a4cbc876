"""Screenshots of the review workspace for the docs: ``docs/screenshots/review-grid.png`` and
``docs/screenshots/review-frame.png``.

Fills a temporary flag store with real flags (frames of the sample video with the shipped
student's verdicts and heat-maps; the teacher ensemble's opinion on most of them, computed with
the shipped teacher package; some reviewed), opens the real app window on it (the live view
runs on the sample video meanwhile), switches to the Review workspace and saves the window with
``QWidget.grab()``: once with the grid in focus, once with the heat-map on and a tile relabelled.
Needs a display; headless:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_review.py [--size 1366x768]
"""
from __future__ import annotations

import datetime as _dt
import sys

from shots import SCREENSHOTS, application, main_window, parser, sample_source, sandbox, save, shipped_engine, wait

LOCATIONS = ("Bridge 42, pier 3", "Bridge 42, deck underside", "Quay wall, bay 4", None)
NOTES = {3: "efflorescence along the crack", 8: "re-check after rain", 13: "spalling nearby"}


def fill_store(store, flags: int, scored: int) -> None:
    """``flags`` flags of sample-video frames (student's verdicts), the first ``scored`` scored by
    the teachers, a few reviewed."""
    import cv2

    from inspector.edge.engine import InferenceEngine
    from inspector.live.loop import engine_model
    from inspector.paths import default_model, default_teachers, sample_video
    from inspector.store.database import ModelRef
    from inspector.review.teacher_scorer import tile_crack_probs

    student = InferenceEngine(default_model(), threads=2)
    model = ModelRef(student.manifest.name, student.manifest.version, student.manifest.model_sha256)
    cap = cv2.VideoCapture(str(sample_video()))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 570
    step = max(1, total // flags)
    start = _dt.datetime.now(_dt.timezone.utc).replace(hour=8, minute=5, second=0, microsecond=0)
    recs = []
    for k in range(flags):
        cap.set(cv2.CAP_PROP_POS_FRAMES, k * step)
        ok, bgr = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        r = student.inspect(rgb)
        reason = "crack" if r.crack_prob_max >= 0.9 else "uncertain" if r.crack_prob_max >= 0.4 else "manual"
        recs.append(store.add(rgb, r.heatmap, r.tiles, reason=reason, model=model, crack_prob_max=r.crack_prob_max,
                              source="camera 0" if k % 4 else "sample_inspection.avi",
                              location=LOCATIONS[(k // 6) % len(LOCATIONS)], note=NOTES.get(k),
                              created=(start + _dt.timedelta(minutes=7 * k)).isoformat()))
    cap.release()
    teachers = InferenceEngine(default_teachers(), threads=2, providers=["CPUExecutionProvider"])
    for rec in recs[:scored]:
        probs = tile_crack_probs(teachers, store.load_frame(rec), [t["box"] for t in rec.tiles])
        store.set_teacher_probs(rec.id, probs, engine_model(teachers))
    for rec in recs[1:flags:5]:          # a morning's review: some frames done already
        tiles = rec.model_tile_labels(0.5)
        label = "crack" if "crack" in tiles else "no_crack"
        store.set_review(rec.id, label=label, tile_labels=list(tiles), reviewer="m.keller")
    store.set_review(recs[2].id, label="unsure", reviewer="m.keller")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, SCREENSHOTS, size="1600x1000", out_help="folder of the two PNGs")
    p.add_argument("--flags", type=int, default=48)
    p.add_argument("--scored", type=int, default=36, help="flags the teachers score first")
    p.add_argument("--suffix", default="", help="added to the file names (e.g. -1366 for a small-screen check)")
    args = p.parse_args(argv)

    from inspector.live.flagging import Flagger, FlagPolicy

    application()
    with sandbox("inspector-review-shot-") as box:
        fill_store(box.store, args.flags, args.scored)
        engine = shipped_engine(2)
        # no automatic flags: the grid shows the store as filled (new flags would land on top)
        no_auto_flags = Flagger(FlagPolicy(auto=False))
        with main_window(box, engine, sample_source(), size=args.size, flagger=no_auto_flags) as window:
            review = window.review
            window.workspaces.setCurrentWidget(review)
            wait(20, lambda: review.grid.first_page_shown, interval_ms=10)
            q = review.queue
            q.go(1)                              # the second most in need: scored, a disagreement
            review.grid.setFocus()
            wait(5, lambda: review.frame.picture == "frame" and review.grid._complete, interval_ms=10)
            wait(0.5)
            grid_png = args.out / f"review-grid{args.suffix}.png"
            ok = save(window, grid_png)

            # the large view: a crack frame, heat-map on, one tile relabelled by the inspector
            target = next((i for i, rec in ((i, review.model.record(i)) for i in range(len(q.ids)))
                           if rec is not None and rec.label is None and rec.teacher_probs is not None
                           and 2 <= sum(p >= 0.5 for p in rec.student_probs) <= 6), 0)
            q.go(target)
            wait(5, lambda: review.frame.picture == "frame", interval_ms=10)
            rec = q.current
            clean = [i for i, p in enumerate(rec.student_probs) if p < 0.5]
            review.frame.cursor = clean[len(clean) // 2] if clean else 0
            review.frame.setFocus()
            q.auto_advance = False
            review.toggle_tile()                 # T: the inspector marks one more tile as crack
            review.heat.setChecked(True)
            review.opacity.setValue(40)
            wait(0.8)
            frame_png = args.out / f"review-frame{args.suffix}.png"
            ok = save(window, frame_png) and ok
            print(f"{'saved' if ok else 'could not save'} {grid_png} and {frame_png}: {len(q.ids)} flags listed, "
                  f"{review.filters.counts.text()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
