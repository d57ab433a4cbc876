"""The flag store (``inspector/store/database.py``): real SQLite files and real images in tmp_path
(migrations: ``test_store_migrations.py``).

Frames are real concrete photos (Özgenel patches, enlarged to a non-square frame so that a
swapped width/height shows). The crash test kills a writing process (``store_child.py``) with
SIGKILL at random moments, many times over one store.
"""
from __future__ import annotations

import random
import signal
import sqlite3
import sys
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.store.database import UNSET, FlagRecord, FlagStore, ModelRef, RecoveryReport, StoreError
from store_support import MODEL, H, W, add, heat_of, image_files, real_frame, tiles
from support import run_and_kill, store  # noqa: F401  (store: a fixture)

REPO = Path(__file__).resolve().parents[1]


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
