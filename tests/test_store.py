"""The flag store (``inspector/store/database.py``): real SQLite files and real images in tmp_path.

Frames are real concrete photos (Özgenel patches, enlarged to a non-square frame so that a
swapped width/height shows). The crash test kills a writing process (``store_child.py``) with
SIGKILL at random moments, many times over one store.
"""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.store.export import ExportReport
from inspector.store.database import (SCHEMA_VERSION, UNSET, FlagRecord, FlagStore, ModelRef,
                             RecoveryReport, StoreError)
from support import run_and_kill, store  # noqa: F401  (store: a fixture)

REPO = Path(__file__).resolve().parents[1]
OZ = Path(os.environ["CRACK_DATA_DIR"]) / "ozgenel_ccic_subset"
MODEL = ModelRef("crack-student", "1.0.0", "ab" * 32)
W, H = 300, 200
TILE_BOXES = [[0, 0, 150, 150], [150, 0, 300, 150], [0, 50, 150, 200], [150, 50, 300, 200]]

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


def real_frame(cls: str = "crack", index: int = 0) -> np.ndarray:
    path = sorted((OZ / cls).glob("*.jpg"))[index]
    bgr = cv2.resize(cv2.imread(str(path), cv2.IMREAD_COLOR), (W, H), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def heat_of(frame: np.ndarray) -> np.ndarray:
    """A smooth float32 heat-map in [0, 1], high on dark pixels (where cracks are)."""
    grey = cv2.GaussianBlur(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (9, 9), 0).astype(np.float32)
    return 1.0 - grey / 255.0


def tiles(*probs: float) -> list[dict]:
    return [{"box": box, "crack_prob": p} for box, p in zip(TILE_BOXES, probs)]


def add(store: FlagStore, frame: np.ndarray | None = None, probs=(0.95, 0.1, 0.5, 0.3), **kw) -> FlagRecord:
    frame = real_frame() if frame is None else frame
    kw = {"reason": "crack", "source": "camera 0", "model": MODEL, "crack_prob_max": max(probs), **kw}
    return store.add(frame, heat_of(frame), tiles(*probs), **kw)


def image_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in (root / "images").rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- round trip


def test_round_trip(store, tmp_path):
    frames = [real_frame("crack", 0), real_frame("no_crack", 1), real_frame("crack", 2)]
    recs = [add(store, frames[0], reason="crack", location="pier 3", note="west face"),
            add(store, frames[1], probs=(0.5, 0.45, 0.2, 0.1), reason="uncertain", source="sample.avi"),
            add(store, frames[2], reason="manual")]
    assert store.recovered == RecoveryReport()
    assert store.count() == 3
    r = recs[0]
    assert (r.reason, r.source, r.model, r.width, r.height) == ("crack", "camera 0", MODEL, W, H)
    assert (r.location, r.note, r.label) == ("pier 3", "west face", None)
    assert r.tiles == tuple(tiles(0.95, 0.1, 0.5, 0.3)) and r.crack_prob_max == 0.95
    assert r.created.endswith("+00:00") and len(r.uid) == 32
    assert r.frame_file == f"images/{r.created[:7]}/{r.uid}.frame.png"
    assert r.heatmap_file == f"images/{r.created[:7]}/{r.uid}.heat.png"
    assert [store.get(x.id) for x in recs] == recs  # what add returns is what is stored
    assert store.list() == recs[::-1]  # newest first
    assert store.list(limit=1, offset=1) == [recs[1]] and store.list(offset=3) == []
    assert store.list(reason="uncertain") == [recs[1]] and store.list(reason="manual", limit=0) == []
    for rec, frame in zip(recs, frames):
        loaded = store.load_frame(rec)
        assert loaded.dtype == np.uint8 and loaded.shape == (H, W, 3)
        np.testing.assert_array_equal(loaded, frame)  # PNG is lossless, and the channels are not swapped
        heat = store.load_heatmap(rec)
        assert heat.dtype == np.float32 and heat.shape == (H, W)
        np.testing.assert_allclose(heat, heat_of(frame), atol=0.5 / 255 + 1e-6)

    updated = store.update(recs[1].id, label="no_crack", note="shadow of a cable")
    assert (updated.location, updated.note, updated.label) == (None, "shadow of a cable", "no_crack")
    assert store.update(recs[1].id) == updated  # nothing given, nothing changed
    cleared = store.update(recs[1].id, note=None, label=UNSET, location="  ")  # blank text is "none"
    assert (cleared.location, cleared.note, cleared.label) == (None, None, "no_crack")
    assert store.update(recs[1].id, label=None).label is None
    store.update(recs[0].id, label="crack")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.count()
    with FlagStore(tmp_path / "flags") as again:  # everything survives a reopen
        assert again.recovered.clean
        assert [x.label for x in again.list()] == [None, None, "crack"]
        np.testing.assert_array_equal(again.load_frame(recs[2]), frames[2])


def test_created_and_engine_tiles(store):
    from inspector.edge.engine import TileResult  # the engine's own tile objects are accepted as they come

    frame = real_frame()
    result_tiles = [TileResult((0, 0, 150, 150), np.array([0.2, 0.8], np.float32), np.float32(0.8), np.zeros((5, 5)))]
    rec = store.add(frame, heat_of(frame), result_tiles, reason="manual", source="camera 1", model=MODEL,
                    crack_prob_max=np.float32(0.8), created="2025-03-01T01:06:07+02:00")
    assert rec.created == "2025-02-28T23:06:07.000+00:00"
    assert rec.frame_file.startswith("images/2025-02/")  # sharded by the UTC month
    assert store.get(rec.id).tiles == ({"box": [0, 0, 150, 150], "crack_prob": pytest.approx(0.8)},)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("change, message", [
    ({"frame_rgb": "frame.png"}, "numpy array"),
    ({"frame_rgb": np.zeros((H, W), np.uint8)}, "H×W×3 uint8"),
    ({"frame_rgb": np.zeros((H, W, 4), np.uint8)}, "H×W×3 uint8"),
    ({"frame_rgb": np.zeros((H, W, 3), np.float32)}, "H×W×3 uint8"),
    ({"heatmap": np.zeros((W, H), np.float32)}, r"heatmap shape \(300, 200\) does not match the frame's \(200, 300\)"),
    ({"heatmap": np.zeros((H, W), np.uint8)}, "float"),
    ({"heatmap": np.full((H, W), 1.5, np.float32)}, r"in \[0, 1\]"),
    ({"heatmap": np.full((H, W), np.nan, np.float32)}, "NaN"),
    ({"tiles": "all"}, "sequence"),
    ({"tiles": [{"box": [0, 0, 10], "crack_prob": 0.5}]}, r"tiles\[0\]: box must be 4 integers"),
    ({"tiles": [{"box": [0, 0, 10.0, 10], "crack_prob": 0.5}]}, "4 integers"),
    ({"tiles": [{"box": [0, 0, W + 1, 10], "crack_prob": 0.5}]}, "not inside the 300×200 frame"),
    ({"tiles": [{"box": [10, 0, 10, 10], "crack_prob": 0.5}]}, "not inside"),
    ({"tiles": [{"box": [0, 0, 10, 10], "crack_prob": 1.2}]}, r"tiles\[0\].crack_prob must be a probability"),
    ({"tiles": [{"box": [0, 0, 10, 10]}]}, "probability"),
    ({"reason": "bored"}, r"reason must be one of \['manual', 'crack', 'uncertain'\]"),
    ({"source": ""}, "source must be a non-empty string"),
    ({"model": ("m", "1", "x")}, "ModelRef"),
    ({"model": ModelRef("m", "", "x")}, "ModelRef"),
    ({"crack_prob_max": -0.1}, r"crack_prob_max must be a probability in \[0, 1\]"),
    ({"crack_prob_max": float("nan")}, "probability"),
    ({"crack_prob_max": True}, "probability"),
    ({"note": 42}, "note must be text"),
    ({"created": "yesterday"}, "ISO-8601"),
    ({"created": "2026-01-01T00:00:00"}, "timezone-aware"),
])
def test_add_refuses_bad_input(store, change, message):
    frame = real_frame()
    args = {"frame_rgb": frame, "heatmap": heat_of(frame), "tiles": tiles(0.9), "reason": "crack",
            "source": "camera 0", "model": MODEL, "crack_prob_max": 0.9, **change}
    with pytest.raises(ValueError, match=message):
        store.add(args.pop("frame_rgb"), args.pop("heatmap"), args.pop("tiles"), **args)
    assert store.count() == 0 and image_files(store.root) == set()  # nothing half-stored


def test_other_calls_refuse_bad_input(store):
    rec = add(store)
    with pytest.raises(ValueError, match=r"label must be one of \['crack', 'no_crack', 'unsure'\]"):
        store.update(rec.id, label="uncertain")
    with pytest.raises(ValueError, match="location must be text"):
        store.update(rec.id, location=["x"])
    with pytest.raises(ValueError, match="flag id is an integer"):
        store.get("1")
    with pytest.raises(StoreError, match="no flag with id 99"):
        store.get(99)
    with pytest.raises(StoreError, match="no flag with id 99"):
        store.update(99, note="x")
    with pytest.raises(ValueError, match="reason must be one of"):
        store.list(reason="cracks")
    with pytest.raises(ValueError, match="limit must be an integer >= 0"):
        store.list(limit=-1)
    with pytest.raises(ValueError, match="expected a FlagRecord"):
        store.load_frame(rec.id)
    assert store.get(np.int64(rec.id)) == rec == store.list(limit=np.int64(1))[0]  # numpy integers are fine
    store.close()
    with pytest.raises(StoreError, match="closed"):
        add(store)
    assert image_files(store.root) == {rec.frame_file, rec.heatmap_file}


def test_writer_threads_and_a_reader(store):
    """The app's shape: a writer thread adds while the GUI thread lists and reads."""
    frame, errors = real_frame(), []

    def writer():
        try:
            for _ in range(8):
                add(store, frame)
        except Exception as err:  # reported below, not lost in the thread
            errors.append(err)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        recs = store.list(limit=3)
        if recs:
            np.testing.assert_array_equal(store.load_frame(recs[0]), frame)
        assert store.count() >= len(recs)
    for t in threads:
        t.join()
    assert errors == [] and store.count() == 16 and len({r.uid for r in store.list()}) == 16


def test_heatmap_file_shows_in_colour_and_keeps_its_values(store):
    """The stored heat PNG is what a viewer shows: the live view's TURBO colours, not grey; its
    pixel values (palette indices) are still the heat · 255."""
    from PIL import Image

    frame = real_frame("crack", 0)
    rec = add(store, frame)
    with Image.open(store.root / rec.heatmap_file) as img:
        assert img.mode == "P"
        indices = np.array(img)
        shown = np.array(img.convert("RGB")).astype(int)
    np.testing.assert_array_equal(indices, np.rint(heat_of(frame) * 255).astype(np.uint8))
    expected = cv2.applyColorMap(indices, cv2.COLORMAP_TURBO)[..., ::-1].astype(int)
    np.testing.assert_array_equal(shown, expected)
    assert np.abs(shown[..., 0] - shown[..., 2]).mean() > 30  # coloured, not grey


def test_one_store_per_folder(store):
    with pytest.raises(StoreError, match="already open"):
        FlagStore(store.root)
    add(store)  # the refused second store did not disturb the first


def test_default_folder_is_per_user(monkeypatch, tmp_path):
    import platformdirs

    monkeypatch.setattr(platformdirs, "user_data_dir", lambda app: str(tmp_path / "user" / app))
    with FlagStore() as s:
        assert s.root == tmp_path / "user" / "crack-inspector" / "flags"
        assert (s.root / "flags.sqlite3").is_file()


# --------------------------------------------------------------------------- schema


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


# --------------------------------------------------------------------------- recovery


def test_open_removes_orphans_and_reports_missing_images(tmp_path):
    root = tmp_path / "flags"
    with FlagStore(root) as store:
        kept, damaged = add(store), add(store)
    shard = root / kept.frame_file.rsplit("/", 1)[0]
    temp = shard / f".{'1' * 32}.frame.png.tmp"
    temp.write_bytes(b"half a png")
    orphan_frame, orphan_heat = shard / f"{'2' * 32}.frame.png", root / "images" / "2026-01" / f"{'3' * 32}.heat.png"
    orphan_heat.parent.mkdir(exist_ok=True)
    orphan_frame.write_bytes((root / kept.frame_file).read_bytes())
    orphan_heat.write_bytes(b"x")
    stranger = shard / "notes.txt"  # not a store file: left alone
    stranger.write_text("hello")
    (root / damaged.heatmap_file).unlink()  # only outside tampering can do this

    with FlagStore(root) as store:
        report = store.recovered
        assert report.temp_files_removed == (temp.relative_to(root).as_posix(),)
        assert set(report.orphan_images_removed) == {orphan_frame.relative_to(root).as_posix(),
                                                     orphan_heat.relative_to(root).as_posix()}
        assert report.missing_images == (damaged.uid,) and not report.clean
        assert "1 temp files removed; 2 orphan images removed; 1 flags with missing images" in report.summary()
        assert not temp.exists() and not orphan_frame.exists() and not orphan_heat.exists() and stranger.exists()
        assert store.count() == 2  # the damaged row is kept (its review would be lost otherwise) ...
        np.testing.assert_array_equal(store.load_frame(damaged), real_frame())
        with pytest.raises(StoreError, match=f"flag {damaged.uid}: cannot read {damaged.heatmap_file}"):
            store.load_heatmap(damaged)  # ... and says what is missing
        np.testing.assert_array_equal(store.load_frame(kept), real_frame())
    with FlagStore(root) as store:  # reported on every open until someone deals with it
        assert store.recovered == RecoveryReport(missing_images=(damaged.uid,))


def test_paths_from_the_database_are_not_followed(tmp_path):
    root = tmp_path / "flags"
    with FlagStore(root) as store:
        rec = add(store)
    secret = tmp_path / "secret.png"
    secret.write_bytes((root / rec.frame_file).read_bytes())
    db = sqlite3.connect(root / "flags.sqlite3")
    db.execute("UPDATE flags SET frame_file = ? WHERE id = ?", ("images/../../secret.png", rec.id))
    db.commit()
    db.close()
    with FlagStore(root) as store:
        assert store.recovered.missing_images == (rec.uid,)
        with pytest.raises(StoreError, match="not a flag-store image name"):
            store.load_frame(store.get(rec.id))
    assert secret.exists()


def test_sigkill_never_loses_a_stored_flag(tmp_path):
    """A writer killed at random moments (30 times, one store): every flag it reported stored is
    there with its exact frame, no orphan file or row is left after reopening, SQLite is intact."""
    root = tmp_path / "flags"
    rng = random.Random(4)
    # Some kills while the store opens (the first one while it creates the database), most in the
    # middle of the add loop, some after many adds.
    delays = ([0.0, 0.0, 0.003, 0.01] + [rng.uniform(0.02, 0.4) for _ in range(20)]
              + [rng.uniform(0.4, 1.0) for _ in range(6)])
    rng.shuffle(delays)
    delays.insert(0, delays.pop(delays.index(0.0)))
    stored, cleaned, killed_opening = {}, [0, 0], 0
    for run, delay in enumerate(delays):
        proc = run_and_kill([sys.executable, str(REPO / "tests" / "store_child.py"), str(root), str(run)], delay)
        assert proc.stdout.startswith("ready\n") and proc.returncode == -signal.SIGKILL, \
            f"run {run}: {proc.stdout}{proc.stderr}"
        lines = proc.stdout.splitlines()
        killed_opening += not any(line.startswith("opened") for line in lines)
        for line in lines:
            if line.startswith("opened "):  # what this run's open cleaned up after the previous kill
                temps, orphans, missing = map(int, line.split()[1:])
                assert missing == 0, f"run {run}: a committed flag lost an image"
                cleaned = [cleaned[0] + temps, cleaned[1] + orphans]
            elif line.startswith("stored "):
                _, uid, crc = line.split()
                stored[uid] = int(crc)
    with FlagStore(root) as store:
        last_damage = store.recovered
        records = {r.uid: r for r in store.list()}
        assert last_damage.missing_images == ()
        assert stored.keys() <= records.keys()
        for uid, rec in records.items():  # also the ones committed just before a kill, never reported
            frame, heat = store.load_frame(rec), store.load_heatmap(rec)
            assert heat.shape == frame.shape[:2]
            if uid in stored:
                assert zlib.crc32(frame.tobytes()) == stored[uid]
        assert image_files(root) == {f for r in records.values() for f in (r.frame_file, r.heatmap_file)}
    with FlagStore(root) as store:
        assert store.recovered == RecoveryReport() and store.count() == len(records)
    db = sqlite3.connect(root / "flags.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()
    print(f"\ncrash test: {len(delays)} runs ({killed_opening} killed while opening), "
          f"{len(stored)} flags reported stored, {len(records)} rows, all found; opens cleaned up "
          f"{cleaned[0]} temp files and {cleaned[1]} orphan images; the last one: {last_damage.summary()}")
    # The test proves something only if kills landed while opening and in the middle of adds.
    assert len(stored) >= 50 and killed_opening >= 1 and sum(cleaned) >= 1
