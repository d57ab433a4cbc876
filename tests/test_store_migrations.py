"""The flag store's schema migrations (``inspector/store/schema.py``): databases written by earlier
releases, with their schema frozen here (the tests must not follow the code), open at the current
version with every flag and review kept; a newer schema is refused untouched."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.store.database import SCHEMA_VERSION, FlagStore, ModelRef, RecoveryReport, StoreError
from store_support import H, W, add, heat_of, real_frame, tiles

# The schema of the first release, frozen here: the migration test must not follow the code.
V1_SQL = """
CREATE TABLE flags (
    id INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT NOT NULL UNIQUE, created TEXT NOT NULL,
    reason TEXT NOT NULL, source TEXT NOT NULL,
    model_name TEXT NOT NULL, model_version TEXT NOT NULL, model_sha256 TEXT NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL, crack_prob_max REAL NOT NULL,
    tiles TEXT NOT NULL, frame_file TEXT NOT NULL, heatmap_file TEXT NOT NULL);
CREATE INDEX flags_by_reason ON flags (reason, id);
PRAGMA user_version = 1;
"""


def write_v1_store(root: Path) -> list[str]:
    """A store as the first release wrote it: two flags with their images."""
    db = sqlite3.connect(root / "flags.sqlite3")
    db.executescript(V1_SQL)
    uids = ["a" * 32, "b" * 32]
    for i, uid in enumerate(uids):
        frame = real_frame("crack", i)
        folder = root / "images" / "2026-10"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{uid}.frame.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / f"{uid}.heat.png"), np.rint(heat_of(frame) * 255).astype(np.uint8))
        db.execute("INSERT INTO flags (uid, created, reason, source, model_name, model_version, model_sha256, "
                   "width, height, crack_prob_max, tiles, frame_file, heatmap_file) "
                   "VALUES (?, ?, 'crack', 'camera 0', 'crack-student', '0.9.0', ?, ?, ?, 0.9, ?, ?, ?)",
                   (uid, f"2026-10-0{i + 1}T08:00:00.000+00:00", "cd" * 32, W, H, json.dumps(tiles(0.9, 0.2)),
                    f"images/2026-10/{uid}.frame.png", f"images/2026-10/{uid}.heat.png"))
    db.commit()
    db.close()
    return uids


def test_migrates_a_v1_database(tmp_path):
    root = tmp_path / "flags"
    root.mkdir()
    uids = write_v1_store(root)
    with FlagStore(root) as store:
        assert store.recovered == RecoveryReport(migrated=(1, SCHEMA_VERSION))
        recs = store.list()
        assert [r.uid for r in recs] == uids[::-1]
        assert all((r.location, r.note, r.label) == (None, None, None) for r in recs)
        assert recs[1].model == ModelRef("crack-student", "0.9.0", "cd" * 32) and recs[1].tiles == tuple(tiles(0.9, 0.2))
        np.testing.assert_array_equal(store.load_frame(recs[1]), real_frame("crack", 0))
        np.testing.assert_allclose(store.load_heatmap(recs[1]), heat_of(real_frame("crack", 0)),
                                   atol=0.5 / 255 + 1e-6)  # the grey heat PNG of earlier stores reads alike
        assert store.update(recs[0].id, location="deck", label="crack").location == "deck"
        add(store)  # new flags go in beside the migrated ones
    db = sqlite3.connect(root / "flags.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with FlagStore(root) as store:  # migrated once only
        assert store.recovered == RecoveryReport() and store.count() == 3


def write_v2_store(root: Path) -> list[str]:
    """A store as the v2 release left it: the v1 flags plus the v2 review columns, reviewed."""
    uids = write_v1_store(root)
    db = sqlite3.connect(root / "flags.sqlite3")
    db.executescript("ALTER TABLE flags ADD COLUMN location TEXT; ALTER TABLE flags ADD COLUMN note TEXT; "
                     "ALTER TABLE flags ADD COLUMN label TEXT; PRAGMA user_version = 2;")
    db.execute("UPDATE flags SET label = 'no_crack', location = 'pier 3', note = 'joint' WHERE uid = ?", (uids[0],))
    db.execute("UPDATE flags SET label = 'crack' WHERE uid = ?", (uids[1],))
    db.commit()
    db.close()
    return uids


def test_migrates_a_v2_database_keeping_every_review(tmp_path):
    """v2 -> v3: every flag and its review stay; a clean frame's tiles become clean tiles (what
    the v2 export said); the ranking key is computed; the history starts empty and works."""
    root = tmp_path / "flags"
    root.mkdir()
    clean_uid, crack_uid = write_v2_store(root)
    with FlagStore(root) as store:
        assert store.recovered == RecoveryReport(migrated=(2, 4))
        clean, crack = sorted(store.list(), key=lambda r: r.uid != clean_uid)
        assert (clean.uid, clean.label, clean.location, clean.note) == (clean_uid, "no_crack", "pier 3", "joint")
        assert clean.tile_labels == ("no_crack", "no_crack")
        assert clean.tile_sources == ("frame_clean", "frame_clean")   # what the v2 label said
        assert (crack.uid, crack.label, crack.tile_labels) == (crack_uid, "crack", None)  # tiles unknown in v2
        assert crack.uncertainty == pytest.approx(0.7219, abs=1e-4)  # H(0.2) in bits, the least sure tile
        assert (crack.teacher_probs, crack.disagreement, crack.deleted_at) == (None, None, None)
        assert store.history() == [] and not store.can_undo()
        store.set_review(crack.id, label="crack", tile_labels=["crack", "no_crack"], reviewer="ana")
        assert store.undo()[0].tile_labels is None
    db = sqlite3.connect(root / "flags.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 4
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


# The v3 review state as that release added it, frozen here like V1_SQL (sort indexes left out:
# the v4 migration does not read them).
V3_SQL = """
ALTER TABLE flags ADD COLUMN tile_labels TEXT; ALTER TABLE flags ADD COLUMN reviewer TEXT;
ALTER TABLE flags ADD COLUMN reviewed_at TEXT; ALTER TABLE flags ADD COLUMN teacher_probs TEXT;
ALTER TABLE flags ADD COLUMN teacher_model TEXT; ALTER TABLE flags ADD COLUMN uncertainty REAL NOT NULL DEFAULT 0;
ALTER TABLE flags ADD COLUMN disagreement REAL; ALTER TABLE flags ADD COLUMN deleted_at TEXT;
CREATE TABLE review_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, reviewer TEXT,
    flag_uid TEXT NOT NULL, action TEXT NOT NULL,
    before TEXT NOT NULL, after TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0, batch INTEGER);
PRAGMA user_version = 3;
"""


def write_v3_store(root: Path) -> dict[str, str]:
    """A store as the v3 release left it after a review, with its review log:

    - ``missed`` (p 0.1 / 0.45): the student called it clean, the inspector pressed C: v3 copied
      the student's verdicts (both no_crack) as the tile labels; a later toggle of tile 0 to
      crack was undone (still redoable);
    - ``marked`` (p 0.9 / 0.2): a v2 crack frame whose tile 1 the inspector clicked: v3 stored
      tile 1 crack and tile 0 as the student's verdict (crack);
    - ``clean``: a v2 no_crack frame (tiles all clean, no log entry), pier 3.
    """
    clean_uid, marked_uid = write_v2_store(root)
    missed_uid = "c" * 32
    db = sqlite3.connect(root / "flags.sqlite3")
    db.executescript(V3_SQL)
    db.execute("INSERT INTO flags (uid, created, reason, source, model_name, model_version, model_sha256, width, "
               "height, crack_prob_max, tiles, frame_file, heatmap_file) SELECT ?, created, reason, source, "
               "model_name, model_version, model_sha256, width, height, 0.45, ?, frame_file, heatmap_file "
               "FROM flags WHERE uid = ?", (missed_uid, json.dumps(tiles(0.1, 0.45)), clean_uid))
    db.execute("UPDATE flags SET tile_labels = ? WHERE uid = ?", (json.dumps(["no_crack"] * 2), clean_uid))
    t = "2026-11-20T10:00:00.000+00:00"
    log = [(missed_uid, "label", {"label": None, "tile_labels": None},
            {"label": "crack", "tile_labels": ["no_crack", "no_crack"]}, 0),
           (marked_uid, "tile", {"label": "crack", "tile_labels": None},
            {"label": "crack", "tile_labels": ["crack", "crack"]}, 0),
           (missed_uid, "tile", {"label": "crack", "tile_labels": ["no_crack", "no_crack"]},
            {"label": "crack", "tile_labels": ["crack", "no_crack"]}, 1)]
    for uid, action, before, after, state in log:
        db.execute("INSERT INTO review_log (at, reviewer, flag_uid, action, before, after, state) "
                   "VALUES (?, 'ana', ?, ?, ?, ?, ?)", (t, uid, action, json.dumps(before), json.dumps(after), state))
    db.execute("UPDATE flags SET label = 'crack', tile_labels = ?, reviewer = 'ana', reviewed_at = ? WHERE uid = ?",
               (json.dumps(["no_crack", "no_crack"]), t, missed_uid))
    db.execute("UPDATE flags SET tile_labels = ?, reviewer = 'ana', reviewed_at = ? WHERE uid = ?",
               (json.dumps(["crack", "crack"]), t, marked_uid))
    db.commit()
    db.close()
    return {"missed": missed_uid, "marked": marked_uid, "clean": clean_uid}


def test_migrates_a_v3_database_student_tiles_become_unknown(tmp_path):
    """v3 -> v4: every flag and every label a person set stays; the tile labels v3's C copied
    from the student become unknown (the export writes no no_crack patch of that frame)."""
    root = tmp_path / "flags"
    root.mkdir()
    uids = write_v3_store(root)
    with FlagStore(root) as store:
        assert store.recovered.migrated == (3, 4) and store.count() == 3
        rec = {name: next(r for r in store.list() if r.uid == uid) for name, uid in uids.items()}
        missed, marked, clean = rec["missed"], rec["marked"], rec["clean"]
        assert (missed.label, missed.reviewer, missed.tile_labels, missed.tile_sources) == ("crack", "ana", None, None)
        assert missed.needs_tiles
        assert (marked.label, marked.tile_labels, marked.tile_sources) == ("crack", (None, "crack"), (None, "marked"))
        assert not marked.needs_tiles
        assert (clean.label, clean.location, clean.note) == ("no_crack", "pier 3", "joint")
        assert (clean.tile_labels, clean.tile_sources) == (("no_crack",) * 2, ("frame_clean",) * 2)
        report = store.export_dataset(tmp_path / "out")
        assert (report.crack, report.no_crack, report.needs_tiles) == (1, 2, (missed.uid,))
        assert not list((tmp_path / "out" / "no_crack").glob(f"{missed.uid}_*"))
        # the history was rewritten with the sources: redo / undo restore consistent tiles
        assert store.redo()[0].tile_labels == ("crack", None)            # the undone toggle: tile 0 only
        assert store.get(missed.id).tile_sources == ("marked", None)
        assert store.undo()[0].tile_labels is None
        assert store.undo()[0].tile_labels is None                      # marked's toggle taken back
        assert store.get(marked.id).tile_sources is None
        assert store.undo()[0].label is None                            # missed's C taken back
    db = sqlite3.connect(root / "flags.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 4
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def test_refuses_a_newer_schema_untouched(tmp_path):
    root = tmp_path / "flags"
    (root / "images" / "2030-01").mkdir(parents=True)
    db = sqlite3.connect(root / "flags.sqlite3")
    db.executescript("CREATE TABLE flags2 (id INTEGER PRIMARY KEY); PRAGMA user_version = 5;")
    db.close()
    unknown_to_v3 = root / "images" / "2030-01" / f"{'c' * 32}.frame.png"  # no v4 row claims it
    unknown_to_v3.write_bytes(b"future")
    before = (root / "flags.sqlite3").read_bytes()
    with pytest.raises(StoreError, match="schema v5, written by a newer crack-inspector.*up to v4"):
        FlagStore(root)
    assert (root / "flags.sqlite3").read_bytes() == before and unknown_to_v3.exists()
    with FlagStore(tmp_path / "other"):  # the refusal released the folder lock and nothing leaked
        pass
    (root / "flags.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a usable flag database"):
        FlagStore(root)
