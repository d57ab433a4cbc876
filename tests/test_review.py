"""The review state in the flag store and the ReviewQueue over it (no display).

Covers: labels and tile labels with their history, undo / redo (also after a restart and for
batches and deletions), deletion and purge, queries (filters, sorts, counts), the teachers'
opinion, a full disk, and a relabelling process killed with SIGKILL (``review_child.py``).
"""
from __future__ import annotations

import random
import sqlite3
import sys
from pathlib import Path

import pytest

from inspector.review.queue import ReviewQueue
from inspector.store.database import FlagStore, ModelRef, StoreError
from inspector.store.query import ReviewCounts
from inspector.store.query import FlagFilter
from support import run_and_kill, store  # noqa: F401  (store: a fixture)
from store_support import add, image_files, real_frame

REPO = Path(__file__).resolve().parents[1]
TEACHER = ModelRef("crack-teachers", "1.0.0", "ef" * 32)


def fill(store, n: int = 6) -> list:
    """n flags with distinct probabilities, times, sources and locations."""
    recs = []
    for i in range(n):
        probs = (0.95 - 0.1 * i, 0.1, 0.45 + 0.01 * i, 0.3)
        recs.append(add(store, real_frame("crack", i % 3), probs=probs, reason=("crack", "uncertain", "manual")[i % 3],
                        source=f"camera {i % 2}", location=("pier 1", "pier 2", None)[i % 3],
                        created=f"2026-11-{10 + i:02d}T12:00:00+00:00"))
    return recs


# --------------------------------------------------------------------------- store: review writes


def test_labels_tiles_history_and_undo_redo(store):
    a, b = fill(store, 2)
    rec = store.set_review(a.id, label="crack", tile_labels=["crack", "no_crack", "crack", "no_crack"], reviewer="ana")
    assert (rec.label, rec.tile_labels, rec.reviewer) == ("crack", ("crack", "no_crack", "crack", "no_crack"), "ana")
    assert rec.reviewed_at is not None and rec.reviewed
    store.set_review(a.id, tile_labels=["no_crack"] * 4, reviewer="ben")
    store.set_review(b.id, location="deck", note="rust")
    assert [e.action for e in store.history()] == ["review", "review", "review"]
    assert [e.after.get("location") for e in store.history(b.id)] == ["deck"]

    assert [r.id for r in store.undo()] == [b.id] and store.get(b.id).location == "pier 2"
    assert store.undo()[0].tile_labels == ("crack", "no_crack", "crack", "no_crack")
    assert store.get(a.id).reviewer == "ana"
    assert store.redo()[0].tile_labels == ("no_crack",) * 4
    store.set_review(a.id, label="unsure")       # a new change drops the redo branch
    assert not store.can_redo() and store.redo() == []
    assert store.undo()[0].label == "crack"
    while store.can_undo():
        store.undo()
    assert store.get(a.id) == a and store.get(b.id) == b    # back to exactly what was stored
    assert store.undo() == []


def test_undo_survives_a_restart(tmp_path):
    root = tmp_path / "flags"
    with FlagStore(root) as s:
        a, b = fill(s, 2)
        s.set_review(a.id, label="no_crack", tile_labels=["no_crack"] * 4)
        s.set_review(b.id, label="crack", tile_labels=["crack"] * 4)
        s.undo()
    with FlagStore(root) as s:
        assert s.can_redo() and s.redo()[0].id == b.id
        assert s.undo()[0].label is None and s.undo()[0].label is None and not s.can_undo()


def test_review_refuses_bad_input(store):
    a = fill(store, 1)[0]
    with pytest.raises(ValueError, match="one label per tile"):
        store.set_review(a.id, tile_labels=["crack"])
    with pytest.raises(ValueError, match=r"tile_labels\[1\] must be one of"):
        store.set_review(a.id, tile_labels=["crack", "maybe", "crack", "crack"])
    with pytest.raises(ValueError, match="label must be one of"):
        store.set_review(a.id, label="cracked")
    with pytest.raises(StoreError, match="no flag with id 99"):
        store.set_review(99, label="crack")
    with pytest.raises(ValueError, match="4 tiles, got 2"):
        store.set_teacher_probs(a.id, [0.1, 0.2], TEACHER)
    assert store.get(a.id) == a and store.history() == []


def test_batch_is_one_undo_step(store):
    recs = fill(store, 4)
    store.set_reviews([(r.id, {"label": "no_crack", "tile_labels": ["no_crack"] * 4}) for r in recs[:3]], reviewer="ana")
    assert store.counts().no_crack == 3
    assert sorted(r.id for r in store.undo()) == sorted(r.id for r in recs[:3])
    assert store.counts().unreviewed == 4
    assert len(store.redo()) == 3 and store.counts().no_crack == 3


def test_delete_is_undoable_until_purged(store):
    a, b, c = fill(store, 3)
    store.delete(b.id, reviewer="ana")
    assert store.count() == 2 and b.id not in store.query_ids() and store.counts().total == 2
    assert store.undo()[0].deleted_at is None and store.count() == 3
    store.redo()
    assert store.purge_deleted() == [b.uid]
    with pytest.raises(StoreError, match=f"no flag with id {b.id}"):
        store.get(b.id)
    assert image_files(store.root) == {a.frame_file, a.heatmap_file, c.frame_file, c.heatmap_file}
    entries = [e for e in store.history(limit=10) if e.flag_uid == b.uid]
    assert [e.action for e in entries] == ["purge", "delete"] and not store.can_undo()  # kept as history


def test_a_deletion_left_by_a_crash_is_purged_on_open(tmp_path):
    root = tmp_path / "flags"
    with FlagStore(root) as s:
        a, b = fill(s, 2)
        s.delete(a.id)
    with FlagStore(root) as s:   # the view never closed: the inspector still meant the deletion
        assert s.recovered.deleted_purged == (a.uid,) and [r.id for r in s.list()] == [b.id]
        assert image_files(root) == {b.frame_file, b.heatmap_file}


def test_a_full_disk_refuses_the_change_and_changes_nothing(store):
    a = fill(store, 1)[0]
    db = store._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")   # SQLite's own "disk full" (SQLITE_FULL)
    with pytest.raises(StoreError, match="full.*nothing was changed"):
        store.set_review(a.id, label="crack", note="x" * 200_000)
    db.execute("PRAGMA max_page_count = 1073741823")
    assert store.get(a.id) == a and store.history() == []
    assert store.set_review(a.id, label="crack").label == "crack"


# --------------------------------------------------------------------------- store: queries


def test_filters_sorts_and_counts(store):
    recs = fill(store, 6)
    ids = [r.id for r in recs]
    assert store.query_ids() == ids[::-1]                                   # newest first
    assert store.query_ids(sort="time", descending=False) == ids
    assert store.query_ids(sort="probability") == ids                     # 0.95, 0.85, ...
    unc = [r.uncertainty for r in recs]
    assert store.query_ids(sort="uncertainty") == [i for _, i in sorted(zip(unc, ids), key=lambda t: (-t[0], -t[1]))]
    assert store.query_ids(FlagFilter(reason="manual")) == [ids[5], ids[2]]
    assert store.query_ids(FlagFilter(source="camera 1")) == [ids[5], ids[3], ids[1]]
    assert store.query_ids(FlagFilter(location="pier 2")) == [ids[4], ids[1]]
    assert store.query_ids(FlagFilter(since="2026-11-12", until="2026-11-13")) == [ids[3], ids[2]]
    assert store.query_ids(FlagFilter(prob_min=0.6, prob_max=0.9)) == [ids[3], ids[2], ids[1]]
    assert store.query_ids(FlagFilter(model_version="1.0.0")) == ids[::-1]
    assert store.query_ids(FlagFilter(text="PIER 1")) == [ids[3], ids[0]]
    store.set_review(ids[0], label="crack", tile_labels=["crack"] * 4)
    store.set_review(ids[1], label="unsure")
    assert store.query_ids(FlagFilter(state="reviewed")) == [ids[1], ids[0]]
    assert store.query_ids(FlagFilter(state="unreviewed", label=None)) == ids[:1:-1]
    assert store.query_ids(FlagFilter(label="unsure")) == [ids[1]]
    assert store.counts() == ReviewCounts(total=6, unreviewed=4, crack=1, no_crack=0, unsure=1, disagreements=0)
    assert store.counts(FlagFilter(location="nowhere")) == ReviewCounts()
    assert store.distinct("location") == ["pier 1", "pier 2"] and store.distinct("source") == ["camera 0", "camera 1"]
    assert [r.id for r in store.query(FlagFilter(reason="crack"), limit=1, offset=1)] == [ids[0]]
    assert [r.id for r in store.get_many([ids[2], 999, ids[0]])] == [ids[2], ids[0]]
    for bad in ({"state": "done"}, {"label": "maybe"}, {"prob_min": 2}, {"since": "yesterday"}):
        with pytest.raises(ValueError):
            FlagFilter(**bad)
    with pytest.raises(ValueError, match="sort must be one of"):
        store.query_ids(sort="colour")


def test_teacher_opinion_ranks_by_disagreement_then_uncertainty(store):
    a, b, c = fill(store, 3)      # student tiles: (0.95, .1, .45, .3), (0.85, .1, .46, .3), (0.75, .1, .47, .3)
    assert [r.id for r in store.unscored()] == [c.id, b.id, a.id]
    rec = store.set_teacher_probs(a.id, [0.05, 0.1, 0.45, 0.3], TEACHER)    # teachers: tile 0 is clean
    assert rec.disagreement == pytest.approx(0.9) and rec.tile_disagreement()[0] == pytest.approx(0.9)
    assert rec.teacher_model == f"crack-teachers 1.0.0 {'ef' * 32}"
    store.set_teacher_probs(b.id, [0.85, 0.1, 0.46, 0.3], TEACHER)          # teachers agree
    assert [r.id for r in store.unscored()] == [c.id]
    # scored flags by disagreement first; the unscored one after them
    assert store.query_ids(sort="need") == [a.id, b.id, c.id]
    assert store.counts().disagreements == 1
    assert store.query_ids(FlagFilter(disagreement_min=0.5)) == [a.id]


def test_labels_the_teachers_contradict_are_counted_and_found(store):
    """What the review will teach, before Update model: a clean label where the teachers see a
    crack (p >= 0.9) on some tile, a crack tile they call clean (p <= 0.1)."""
    a, b, c, d = fill(store, 4)
    q = ReviewQueue(store, reviewer="ana", sort="time", descending=False, auto_advance=False)
    q.set_label("no_crack", ids=[a.id, b.id])
    for rec in (c, d):                                    # tile 0 marked crack, the rest unknown
        store.set_review(rec.id, label="crack", tile_labels=("crack", None, None, None), reviewer="ana")
    store.set_teacher_probs(a.id, [0.95, 0.1, 0.2, 0.1], TEACHER)   # a clean frame with a confident crack
    store.set_teacher_probs(b.id, [0.6, 0.1, 0.2, 0.1], TEACHER)    # unsure teachers: no contradiction
    store.set_teacher_probs(c.id, [0.05, 0.1, 0.2, 0.1], TEACHER)   # the crack tile they call clean
    store.set_teacher_probs(d.id, [0.5, 0.1, 0.2, 0.1], TEACHER)
    assert store.counts().contradicted == 2
    assert sorted(store.query_ids(FlagFilter(state="contradicted"))) == sorted([a.id, c.id])
    assert sorted(r.id for r in store.query(FlagFilter()) if r.contradicted) == sorted([a.id, c.id])  # same rule
    store.set_review(c.id, label="crack", tile_labels=(None, None, "crack", None), reviewer="ana")  # corrected
    assert store.query_ids(FlagFilter(state="contradicted")) == [a.id]


# --------------------------------------------------------------------------- the queue


def test_queue_labels_advances_undoes_and_follows_the_rules(store):
    recs = fill(store, 5)
    seen = {"records": 0, "list": 0, "current": 0}
    q = ReviewQueue(store, reviewer="ana", sort="time", descending=False)
    for kind in seen:
        q.subscribe(kind, lambda *a, k=kind: seen.__setitem__(k, seen[k] + 1))
    assert q.ids == [r.id for r in recs] and q.current.id == recs[0].id
    q.set_label("crack")                               # C: crack, no tile known (never the student's)
    assert (store.get(recs[0].id).tile_labels, store.get(recs[0].id).needs_tiles) == (None, True)
    assert q.current.id == recs[1].id                  # auto-advance
    q.set_label("no_crack")
    assert store.get(recs[1].id).tile_labels == ("no_crack",) * 4
    assert store.get(recs[1].id).tile_sources == ("frame_clean",) * 4
    q.accept()                                         # Space: (0.75, .1, .47, .3) -> crack on tile 0
    assert (store.get(recs[2].id).label, store.get(recs[2].id).tile_labels[0]) == ("crack", "crack")
    assert store.get(recs[2].id).tile_sources == ("accepted",) * 4
    q.previous()
    rec = q.toggle_tile(0)                             # last clean tile flipped: no crack left
    assert (rec.label, rec.tile_labels) == ("no_crack", ("no_crack",) * 4)
    rec = q.toggle_tile(3)
    assert (rec.label, rec.tile_labels[3]) == ("crack", "crack")
    assert seen["records"] == 5 and seen["current"] >= 5
    q.undo()
    q.undo()
    assert store.get(recs[2].id).tile_labels[0] == "crack" and q.current.id == recs[2].id
    q.redo()
    assert store.get(recs[2].id).label == "no_crack"
    assert store.get(recs[2].id).tile_sources == ("marked", "accepted", "accepted", "accepted")
    q.go(0)
    assert q.next_unreviewed().id == recs[3].id
    q.auto_advance = False
    q.set_label("unsure")
    assert q.current.id == recs[3].id and q.current.label == "unsure"
    q.go(4)
    assert q.next_unreviewed().id == recs[0].id          # wraps round to the crack frame needing tiles
    q.set_fields(location="abutment", note="efflorescence")
    assert (q.current.location, q.current.note) == ("abutment", "efflorescence")
    with pytest.raises(ValueError):
        q.set_label("perhaps")


def test_queue_batch_delete_filter_and_close(store):
    recs = fill(store, 6)
    q = ReviewQueue(store, flt=FlagFilter(state="unreviewed"), sort="time", descending=False)
    q.set_label("no_crack", ids=[recs[1].id, recs[2].id])
    assert store.counts().no_crack == 2 and len(q) == 6     # the list stays put until refreshed
    q.refresh()
    assert q.ids == [recs[0].id, recs[3].id, recs[4].id, recs[5].id]
    q.undo()                                                # the whole batch
    assert store.counts().no_crack == 0
    q.go_to_id(recs[3].id)
    assert q.delete() == [recs[3].id] and recs[3].id not in q.ids and q.current.id == recs[4].id
    q.undo()
    assert recs[3].id in q.ids and q.ids == sorted(q.ids)   # back in its place
    q.delete([recs[4].id, recs[5].id])
    assert sorted(q.close()) == sorted([recs[4].uid, recs[5].uid]) and store.count() == 4
    q.set_filter(FlagFilter(), sort="probability", descending=True)
    assert q.ids[0] == recs[0].id


def test_needs_tiles_filter_counts_and_next_unreviewed(store):
    """A C frame without a person's crack tile: listed by the "needs tiles" filter, counted, and
    visited by the next-unreviewed key until a crack tile is marked (or Space)."""
    recs = fill(store, 4)
    q = ReviewQueue(store, reviewer="ana", sort="time", descending=False, auto_advance=False)
    q.set_label("crack", ids=[recs[0].id, recs[1].id])
    q.set_label("no_crack", ids=[recs[2].id, recs[3].id])
    needs = FlagFilter(state="needs_tiles")
    assert store.query_ids(needs, sort="time", descending=False) == [recs[0].id, recs[1].id]
    assert store.counts().needs_tiles == 2 and store.counts(needs) == ReviewCounts(2, 0, 2, 0, 0, 0, 2, 0)
    q.go_to_id(recs[3].id)
    assert q.next_unreviewed().id == recs[0].id     # every frame is reviewed; this one still needs tiles
    q.toggle_tile(1)                                # a crack tile marked: done
    assert store.get(recs[0].id).tile_labels == (None, "crack", None, None)
    assert q.next_unreviewed().id == recs[1].id
    q.accept()                                      # Space: the verdicts shown (tile 0 at 0.85) are right
    assert store.get(recs[1].id).tile_sources == ("accepted",) * 4
    assert store.query_ids(needs) == [] and store.counts().needs_tiles == 0
    assert q.next_unreviewed().id == recs[1].id     # nothing left: it stays
    q.toggle_tile(0)                                # the only crack tile toggled off: every tile clean
    assert store.get(recs[1].id).label == "no_crack"


def test_queue_on_an_empty_store(store):
    q = ReviewQueue(store)
    assert q.current is None and q.next() is None and q.set_label("crack") == [] and q.delete() == []
    assert q.toggle_tile(0) is None and q.undo() == [] and q.counts() == ReviewCounts()


# --------------------------------------------------------------------------- crash safety


def test_sigkill_during_relabels_loses_at_most_the_change_in_flight(tmp_path):
    """A relabelling process killed at random moments (20 times, one store): every change it
    reported done is in the store and in the history; the change in flight is all or nothing."""
    root = tmp_path / "flags"
    with FlagStore(root) as s:
        ids = [r.id for r in fill(s, 8)]
    rng = random.Random(7)
    done, runs_with_changes = {}, 0
    for run in range(20):
        proc = run_and_kill([sys.executable, str(REPO / "tests" / "review_child.py"), str(root), str(run)],
                            rng.uniform(0.05, 0.6))
        lines = proc.stdout.splitlines()   # whole lines only (run_and_kill drops a cut one)
        assert lines and lines[0] == "ready", proc.stderr
        intended = None
        for line in lines[1:]:
            word, flag_id, label, note = line.split(" ", 3)
            if word == "intend":
                intended = (int(flag_id), label, note)
            elif word == "done":
                done[int(flag_id)] = (label, note)
                intended = None
        runs_with_changes += any(line.startswith("done") for line in lines)
        with FlagStore(root) as s:
            assert sqlite3.connect(root / "flags.sqlite3").execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            for flag_id in ids:
                rec = s.get(flag_id)
                state = (rec.label, rec.note)
                allowed = {done.get(flag_id, (None, None))}
                if intended is not None and intended[0] == flag_id:
                    allowed.add(intended[1:])
                assert state in allowed, (flag_id, state, allowed)
                if state != (None, None):   # the history says the same as the row
                    last = next(e for e in s.history(flag_id) if e.state == 0)
                    assert (last.after.get("label", rec.label), last.after.get("note", rec.note)) == state
                if intended is not None and intended[0] == flag_id and state == intended[1:]:
                    done[flag_id] = state   # the change in flight made it: it is the new state
    assert len(done) >= 4 and runs_with_changes >= 10
