"""The review workspace (pytest-qt, offscreen), driven with the keyboard like an inspector does.

Real flag stores in tmp_path, filled with real frames of the sample video and the shipped
model's verdicts and heat-maps. Keys go to whichever widget has the focus
(``QApplication.focusWidget()``), as they would from a keyboard.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QFileDialog

from inspector.live.flagging import Flagger, FlagPolicy
from inspector.paths import sample_video
from inspector.qt import jobs
from inspector.qt.review.grid import MISSING, RecordRole, ThumbRole
from inspector.qt.review.view import ReviewWorkspace, merge_new_ids
from inspector.qt.window import MainWindow
from inspector.capture.sources import parse_source
from inspector.store.database import FlagStore, ModelRef, StoreError
from support import engine, sample_video_results, store  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
TEACHER = ModelRef("crack-teachers", "1.0.0", "ef" * 32)
LOCATIONS = ("pier 1", "pier 2", None)


@pytest.fixture(scope="module")
def frames(engine):
    """24 frames of the sample video (every 20th) with the shipped model's result."""
    return sample_video_results(engine, 24, 20)


def fill(store, frames, n: int, engine) -> list:
    m = engine.manifest
    model = ModelRef(m.name, m.version, m.model_sha256)
    recs = []
    for k in range(n):
        rgb, result = frames[k % len(frames)]
        recs.append(store.add(rgb, result.heatmap, result.tiles, reason=("crack", "uncertain", "manual")[k % 3],
                              source=f"camera {k % 2}", model=model, crack_prob_max=result.crack_prob_max,
                              location=LOCATIONS[k % 3], created=f"2026-11-{10 + k % 5:02d}T12:{k:02d}:00+00:00"))
    return recs


@pytest.fixture
def open_review(qtbot):
    """``open_review(store)``: a shown workspace with its first grid page painted and the focus in
    the grid; shut down after the test."""
    opened = []

    def make(store):
        w = ReviewWorkspace(store, reviewer="tester")
        qtbot.addWidget(w)
        w.resize(1366, 740)
        with qtbot.waitSignal(w.firstPageShown, timeout=20000):
            w.show()
        w.activateWindow()
        qtbot.waitUntil(lambda: w.grid.hasFocus(), timeout=5000)
        opened.append(w)
        return w

    yield make
    for w in opened:
        w.shutdown()


def press(qtbot, key, modifier=Qt.NoModifier) -> None:
    """A key press to the widget that has the keyboard focus."""
    widget = QApplication.focusWidget()
    assert widget is not None, "nothing has the keyboard focus"
    qtbot.keyClick(widget, key, modifier)


def labels(store, ids) -> list:
    return [store.get(i).label for i in ids]


def expected_accept(rec) -> str:
    return "crack" if "crack" in rec.model_tile_labels(0.5) else "no_crack"


# --------------------------------------------------------------------------- reviewing


def test_review_twenty_undo_five_and_reopen(qtbot, tmp_path, frames, engine, open_review):
    root = tmp_path / "flags"
    store = FlagStore(root)
    fill(store, frames, 24, engine)
    w = open_review(store)
    ids = list(w.queue.ids)
    keys = [Qt.Key_C, Qt.Key_N, Qt.Key_U, Qt.Key_Space, Qt.Key_1, Qt.Key_2]
    expected = []
    for k in range(20):
        rec = store.get(ids[k])
        assert w.queue.current_id == ids[k] and w.meta.record.id == ids[k]
        key = keys[k % len(keys)]
        press(qtbot, key)
        expected.append({Qt.Key_C: "crack", Qt.Key_1: "crack", Qt.Key_N: "no_crack", Qt.Key_2: "no_crack",
                         Qt.Key_U: "unsure", Qt.Key_Space: expected_accept(rec)}[key])
    assert labels(store, ids[:20]) == expected
    assert w.queue.current_id == ids[20]                       # auto-advance
    assert store.get(ids[0]).reviewer == "tester"
    for _ in range(5):
        press(qtbot, Qt.Key_Z, Qt.ControlModifier)
    assert labels(store, ids[:20]) == expected[:15] + [None] * 5
    assert w.queue.current_id == ids[15]                       # undo goes to what it undid
    assert w.model.index(0).data(RecordRole).label == expected[0]   # the grid shows the review
    w.shutdown()
    w.close()
    store.close()

    with FlagStore(root) as again:
        assert labels(again, ids[:20]) == expected[:15] + [None] * 5
        w2 = open_review(again)
        assert w2.queue.ids == ids
        press(qtbot, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)    # redo survives the restart
        assert again.get(ids[15]).label == expected[15]
        w2.shutdown()


def test_batch_selection_with_the_mouse_and_the_keyboard(qtbot, store, frames, engine, open_review):
    """Click, Shift+arrows, Shift+click and Ctrl+click build one selection, in any order (issue 22:
    Shift+arrows were reported not to extend it after a click)."""
    fill(store, frames, 12, engine)
    w = open_review(store)
    ids = list(w.queue.ids)
    grid = w.grid

    def click(row: int, modifier=Qt.NoModifier) -> None:
        index = grid.model().index(row, 0)
        grid.scrollTo(index)
        qtbot.mouseClick(grid.viewport(), Qt.LeftButton, modifier, grid.visualRect(index).center())

    click(1)
    assert grid.selected_ids() == ids[1:2] and w.queue.current_id == ids[1]
    for _ in range(2):
        press(qtbot, Qt.Key_Right, Qt.ShiftModifier)
    assert grid.selected_ids() == ids[1:4]
    click(6, Qt.ShiftModifier)
    assert grid.selected_ids() == ids[1:7]
    click(9, Qt.ControlModifier)
    assert grid.selected_ids() == ids[1:7] + ids[9:10]
    assert "7 selected" in w.position.text()
    press(qtbot, Qt.Key_U)                                     # one key for all seven
    assert labels(store, ids) == [None] + ["unsure"] * 6 + [None, None, "unsure", None, None]
    click(4)                                                   # a plain click: one again
    assert grid.selected_ids() == ids[4:5]
    press(qtbot, Qt.Key_Left, Qt.ShiftModifier)
    assert grid.selected_ids() == ids[3:5]


def test_batch_relabel_is_one_undo_step(qtbot, store, frames, engine, open_review):
    fill(store, frames, 12, engine)
    w = open_review(store)
    ids = list(w.queue.ids)
    press(qtbot, Qt.Key_Right)
    press(qtbot, Qt.Key_Right)
    for _ in range(4):
        press(qtbot, Qt.Key_Right, Qt.ShiftModifier)           # extend the selection in the grid
    assert w.grid.selected_ids() == ids[2:7]
    assert "5 selected" in w.position.text()
    press(qtbot, Qt.Key_N)
    assert labels(store, ids) == [None, None] + ["no_crack"] * 5 + [None] * 5
    assert all(store.get(i).tile_labels == ("no_crack",) * 12 for i in ids[2:7])
    assert w.grid.selected_ids() == ids[2:7]                   # the selection stays for a correction
    press(qtbot, Qt.Key_C)
    assert labels(store, ids[2:7]) == ["crack"] * 5
    assert all(store.get(i).tile_labels is None and store.get(i).needs_tiles for i in ids[2:7])  # N's "clean" gone
    press(qtbot, Qt.Key_Z, Qt.ControlModifier)
    assert labels(store, ids[2:7]) == ["no_crack"] * 5
    press(qtbot, Qt.Key_Z, Qt.ControlModifier)
    assert labels(store, ids) == [None] * 12


def test_filters_change_the_grid_and_the_counts(qtbot, store, frames, engine, open_review):
    recs = fill(store, frames, 15, engine)
    store.set_review(recs[0].id, label="crack", tile_labels=["crack"] * 12)
    store.set_review(recs[1].id, label="no_crack", tile_labels=["no_crack"] * 12)
    for rec in recs[3:5]:   # the teachers see it the other way round: two disagreements
        store.set_teacher_probs(rec.id, [1.0 - p for p in rec.student_probs], TEACHER)
    w = open_review(store)
    assert w.model.rowCount() == 15
    assert w.filters.counts.text() == "15 flags, 13 unreviewed, 2 disagreements"
    assert set(w.queue.ids[:2]) == {recs[3].id, recs[4].id}    # most in need first

    def apply(**choices):
        w.filters.select(**choices)
        with qtbot.waitSignal(w.filters.filterChanged, timeout=3000):
            pass
        qtbot.waitUntil(lambda: w.filters.counts.text().startswith(f"{w.model.rowCount()} flag"), timeout=3000)

    apply(state="unreviewed")
    assert w.model.rowCount() == 13 and recs[0].id not in w.model.ids
    assert w.filters.counts.text() == "13 flags, 13 unreviewed, 2 disagreements"
    apply(location="pier 2")
    assert set(w.model.ids) == {r.id for r in recs if r.location == "pier 2"} - {recs[1].id}
    assert w.meta.record.location == "pier 2"
    w.filters.reset()
    qtbot.waitUntil(lambda: w.model.rowCount() == 15, timeout=3000)
    apply(label="crack")
    assert w.model.ids == [recs[0].id] and w.filters.counts.text() == "1 flag, 0 unreviewed, 0 disagreements"
    w.filters.reset()
    w.filters.p_min.setValue(0.9)
    qtbot.waitUntil(lambda: w.model.rowCount() == sum(r.crack_prob_max >= 0.9 for r in recs), timeout=3000)
    w.filters.reset()
    apply(sort="time")
    assert w.model.ids == [r.id for r in sorted(recs, key=lambda r: (r.created, r.id), reverse=True)]
    assert w.queue.current_id == w.model.ids[w.grid.currentIndex().row()]


def test_tile_toggle_by_click_and_t_changes_the_export(qtbot, store, frames, engine, open_review, tmp_path,
                                                         monkeypatch):
    fill(store, frames, 4, engine)
    w = open_review(store)
    rec = w.queue.current
    before = rec.model_tile_labels(0.5)
    qtbot.waitUntil(lambda: w.frame.picture == "frame", timeout=10000)
    press(qtbot, Qt.Key_Tab)                                   # the frame takes the arrows now
    assert w.frame.hasFocus()
    press(qtbot, Qt.Key_Down)                                  # the tile cursor, not the next flag
    assert w.queue.current_id == rec.id and w.frame.cursor == 4   # 4 tiles a row on a 640×480 frame
    press(qtbot, Qt.Key_T)
    assert store.get(rec.id).tile_labels[4] != before[4]
    centre = w.frame.tile_rect(0).center().toPoint()
    qtbot.mouseClick(w.frame, Qt.LeftButton, pos=centre)       # a click toggles tile 0, the cursor goes there
    assert store.get(rec.id).tile_labels[0] != before[0] and w.frame.cursor == 0
    press(qtbot, Qt.Key_Right)
    assert w.queue.current_id == rec.id and w.frame.cursor == 1
    press(qtbot, Qt.Key_T)
    marked = store.get(rec.id)
    flipped = {"crack": "no_crack", "no_crack": "crack"}
    # only the tiles toggled have labels (marked); the others stay unknown, never the student's
    assert marked.tile_labels == tuple(flipped[t] if i in (0, 1, 4) else None for i, t in enumerate(before))
    assert marked.tile_sources == tuple("marked" if i in (0, 1, 4) else None for i in range(12))
    assert marked.label == ("crack" if "crack" in marked.tile_labels else None)
    press(qtbot, Qt.Key_Tab)                                   # the grid takes the keys again
    w.queue.auto_advance = False
    press(qtbot, Qt.Key_Space)                                 # the verdicts shown: the rest as the student said
    after = store.get(rec.id)
    assert after.tile_labels == tuple(flipped[t] if i in (0, 1, 4) else t for i, t in enumerate(before))
    assert after.tile_sources == tuple("marked" if i in (0, 1, 4) else "accepted" for i in range(12))
    assert after.label == ("crack" if "crack" in after.tile_labels else "no_crack")

    out = tmp_path / "export"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(out))
    with qtbot.waitSignal(w.exportFinished, timeout=30000) as done:
        w.filters.export.click()
    assert done.args[0].flags == 1 and done.args[0].patches == 12
    rows = [r for r in json.loads((out / "metadata.json").read_text())["patches"] if r["flag_uid"] == rec.uid]
    rows = sorted(rows, key=lambda r: r["file"].rsplit("_", 1)[1])
    assert [r["label"] for r in rows] == list(after.tile_labels)
    assert [r["label_source"] for r in rows] == ["tile_marked" if i in (0, 1, 4) else "verdicts_accepted"
                                                 for i in range(12)]
    assert "Exported 1 flags as 12 patches" in w.banner.text.text()


def test_c_asks_for_the_crack_tiles(qtbot, store, frames, engine, open_review):
    """C on a frame: crack, no tile known; the frame shows "needs tiles", the filter lists it,
    the counts say so, Ctrl+Right comes back to it; a tile marked crack ends it."""
    fill(store, frames, 3, engine)
    w = open_review(store)
    ids = list(w.queue.ids)
    press(qtbot, Qt.Key_C)
    rec = store.get(ids[0])
    assert (rec.label, rec.tile_labels, rec.needs_tiles) == ("crack", None, True)
    press(qtbot, Qt.Key_N)
    press(qtbot, Qt.Key_N)
    assert w.queue.current_id == ids[2]
    press(qtbot, Qt.Key_Right, Qt.ControlModifier)             # next unreviewed: the frame that needs tiles
    assert w.queue.current_id == ids[0] and "needs tiles" in w.meta.values["state"].text()
    w._update_counts()
    assert "1 needs tiles" in w.filters.counts.text()
    w.filters.select(state="needs_tiles")
    with qtbot.waitSignal(w.filters.filterChanged, timeout=3000):
        pass
    qtbot.waitUntil(lambda: w.model.ids == [ids[0]], timeout=3000)
    crack_tile = 0
    if rec.model_tile_labels(0.5)[crack_tile] == "crack":      # shown crack (the student's): toggled twice
        w.toggle_tile(crack_tile)
    w.toggle_tile(crack_tile)
    rec = store.get(ids[0])
    assert rec.tile_labels[crack_tile] == "crack" and not rec.needs_tiles
    assert sum(t is not None for t in rec.tile_labels) == 1
    assert "needs tiles" not in w.meta.values["state"].text()


def test_report_of_the_filtered_location(qtbot, store, frames, engine, open_review, tmp_path, monkeypatch):
    recs = fill(store, frames, 6, engine)
    store.set_review(recs[0].id, label="crack", tile_labels=["crack"] * 12)
    w = open_review(store)
    w.filters.select(location="pier 1")
    with qtbot.waitSignal(w.filters.filterChanged, timeout=3000):
        pass
    out = tmp_path / "report"              # no extension: the chosen format's is added
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(out), "HTML (*.html)"))
    with qtbot.waitSignal(w.reportFinished, timeout=60000) as done:
        w.filters.report.click()
    summary = done.args[0]
    assert summary.path == tmp_path / "report.html" and summary.path.is_file()
    assert summary.flags == sum(r.location == "pier 1" for r in recs) and summary.crack_frames == 1
    assert "report.html" in w.banner.text.text() and w.filters.report.isEnabled()


def test_delete_and_undo(qtbot, tmp_path, frames, engine, open_review):
    root = tmp_path / "flags"
    store = FlagStore(root)
    fill(store, frames, 6, engine)
    w = open_review(store)
    ids = list(w.queue.ids)
    press(qtbot, Qt.Key_Right)
    press(qtbot, Qt.Key_Delete)
    assert w.model.ids == ids[:1] + ids[2:] and store.get(ids[1]).deleted_at is not None
    assert w.queue.current_id == ids[2]
    press(qtbot, Qt.Key_Z, Qt.ControlModifier)
    assert w.model.ids == ids and store.get(ids[1]).deleted_at is None
    assert w.queue.current_id == ids[1]
    press(qtbot, Qt.Key_Delete)
    w.shutdown()                                               # closing the view removes it for good
    with pytest.raises(StoreError, match="no flag"):
        store.get(ids[1])
    store.close()


def test_f1_lists_the_keys(qtbot, store, frames, engine, open_review):
    fill(store, frames, 2, engine)
    w = open_review(store)
    press(qtbot, Qt.Key_F1)
    assert w.keys_dialog is not None and w.keys_dialog.isVisible()
    text = " ".join(label.text() for label in w.keys_dialog.findChildren(type(w.position)))
    assert "Next unreviewed flag" in text and "Undo" in text and "tile cursor" in text
    assert "needs tiles" in text and "Accept the verdicts shown" in text
    w.keys_dialog.close()


def test_text_fields_take_letters_and_save_on_enter(qtbot, store, frames, engine, open_review):
    fill(store, frames, 3, engine)
    w = open_review(store)
    rec = w.queue.current
    qtbot.mouseClick(w.meta.location, Qt.LeftButton)
    w.meta.location.selectAll()
    press(qtbot, Qt.Key_Delete)
    qtbot.keyClicks(QApplication.focusWidget(), "Crack north NU")
    press(qtbot, Qt.Key_Return)
    saved = store.get(rec.id)
    assert saved.location == "Crack north NU" and saved.label is None   # letters were text, not verdicts
    assert w.grid.hasFocus() and w.queue.current_id == rec.id
    press(qtbot, Qt.Key_Z, Qt.ControlModifier)                          # the edit is undoable too
    assert store.get(rec.id).location == rec.location


def test_missing_image_shows_a_placeholder_and_stays_reviewable(qtbot, tmp_path, frames, engine, open_review):
    root = tmp_path / "flags"
    with FlagStore(root) as s:
        recs = fill(s, frames, 5, engine)
    gone = recs[2]
    (root / gone.frame_file).unlink()
    store = FlagStore(root)
    assert gone.uid in store.recovered.missing_images
    w = open_review(store)
    row = w.model.ids.index(gone.id)
    assert w.model.index(row).data(ThumbRole) == MISSING
    for _ in range(row):
        press(qtbot, Qt.Key_Right)
    assert w.queue.current_id == gone.id
    qtbot.waitUntil(lambda: w.frame.picture == "missing", timeout=10000)
    assert "missing" in w.frame.placeholder.lower()
    press(qtbot, Qt.Key_C)
    assert store.get(gone.id).label == "crack"
    w.shutdown()
    store.close()


def test_a_failed_write_is_shown_and_changes_nothing(qtbot, store, frames, engine, open_review, monkeypatch):
    fill(store, frames, 3, engine)
    w = open_review(store)
    first = w.queue.current_id

    def full(*a, **k):
        raise StoreError("cannot save the review change: the disk holding X is full; nothing was changed")

    monkeypatch.setattr(store, "set_review", full)
    press(qtbot, Qt.Key_C)
    assert "disk" in w.banner.text.text() and w.banner.isVisible() and w.banner.level == "error"
    assert w.queue.current_id == first and store.get(first).label is None
    monkeypatch.undo()
    press(qtbot, Qt.Key_C)
    assert store.get(first).label == "crack"


def test_teacher_scores_from_the_scorer_thread_repaint_the_grid(qtbot, store, frames, engine, open_review):
    recs = fill(store, frames, 3, engine)
    w = open_review(store)
    rec = recs[1]

    def score():   # what the TeacherScorer's on_scored does, on its own thread
        w.flagScored.emit(store.set_teacher_probs(rec.id, [1.0 - p for p in rec.student_probs], TEACHER))

    worker = threading.Thread(target=score)
    worker.start()
    worker.join()
    cell = lambda: w.model.index(w.model.row_of(rec.id)).data(RecordRole)  # noqa: E731
    qtbot.waitUntil(lambda: cell().disagreement is not None, timeout=3000)
    qtbot.waitUntil(lambda: w.filters.counts.text() == "3 flags, 3 unreviewed, 1 disagreement", timeout=3000)


# --------------------------------------------------------------------------- in the main window


def test_the_review_workspace_in_the_window_gets_new_flags(qtbot, store, frames, engine):
    fill(store, frames, 3, engine)
    flagger = Flagger(FlagPolicy(crack_threshold=1e-6, window_s=0.3, duplicate_memory=0))
    w = MainWindow(engine, store, flagger, parse_source(sample_video()))
    qtbot.addWidget(w)
    w.resize(1366, 768)
    w.show()
    w.start()
    try:
        w.activateWindow()
        qtbot.waitUntil(lambda: QApplication.focusWidget() is not None, timeout=5000)
        press(qtbot, Qt.Key_2, Qt.ControlModifier)
        assert w.workspaces.currentWidget() is w.review
        qtbot.waitUntil(lambda: w.review.grid.hasFocus(), timeout=5000)
        before = len(w.review.model.ids)
        first = w.review.queue.current_id
        overlay_before = w.display.overlay.isChecked()
        press(qtbot, Qt.Key_H)                               # the review's heat-map, not the live overlay
        assert w.review.heat.isChecked() and w.display.overlay.isChecked() == overlay_before
        flags_before = len(w.flags)
        press(qtbot, Qt.Key_Space)                           # a verdict here, not a manual flag
        assert store.get(first).label is not None
        current = w.review.queue.current_id
        qtbot.waitUntil(lambda: len(w.review.model.ids) >= before + 2, timeout=30000)
        assert w.review.queue.current_id == current          # new flags do not move the inspector
        assert all(r.reason != "manual" for r in w.flags[flags_before:])
        assert set(w.review.model.ids) >= {r.id for r in w.flags[:2]}
        press(qtbot, Qt.Key_1, Qt.ControlModifier)
        assert w.workspaces.currentWidget() is w.live_page
        qtbot.waitUntil(lambda: w.view.hasFocus(), timeout=5000)
        with qtbot.waitSignal(w.flagShown, timeout=20000, check_params_cb=lambda r: r.reason == "manual"):
            press(qtbot, Qt.Key_Space)                       # Space flags again on the live page
    finally:
        w.shutdown()


def test_a_second_app_on_the_same_store_is_refused(tmp_path):
    root = tmp_path / "flags"
    with FlagStore(root):
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, "-m", "inspector", "--store", str(root), "--source",
                               str(sample_video()), "--no-teachers"], capture_output=True, text=True, env=env,
                              timeout=120, cwd=REPO)
    assert proc.returncode == 2
    assert "already open" in proc.stderr and str(root) in proc.stderr


# --------------------------------------------------------------------------- parts


def test_merge_new_ids_keeps_the_list_and_inserts_where_the_sort_says():
    listed = [5, 3, 9, 1]                # 9 was reviewed and no longer matches the filter
    fresh = [7, 5, 3, 8, 1]              # the new query: 7 and 8 are new flags
    assert merge_new_ids(listed, fresh, [7, 8]) == [7, 5, 3, 9, 8, 1]
    assert merge_new_ids([], [2, 1], [2, 1]) == [2, 1]
    assert merge_new_ids([1, 2], [1, 2, 3], [3]) == [1, 2, 3]


def test_job_runner_delivers_on_the_gui_thread(qtbot):
    gui = threading.get_ident()
    runner = jobs.JobRunner(threads=2)
    seen = {}

    def work(n, *, progress):
        for k in range(n):
            progress(k, n)
        return threading.get_ident()

    with qtbot.waitCallback() as done:
        runner.run(work, 3, on_success=done, on_progress=lambda k, n: seen.setdefault("progress", []).append(k))
    assert done.args[0] != gui and seen["progress"] == [0, 1, 2]
    with qtbot.waitCallback() as failed:
        jobs.run(lambda: 1 / 0, on_failure=failed)
    assert isinstance(failed.args[0], ZeroDivisionError)
    job = runner.run(lambda: 1, on_success=lambda v: seen.setdefault("late", v))
    job.cancel()
    runner.wait()
    qtbot.wait(50)
    assert "late" not in seen
    runner.close()
    assert runner.run(lambda: 1).cancelled
