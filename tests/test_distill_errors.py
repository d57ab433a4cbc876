"""``distill`` refuses a broken manifest before training and says what ``eval`` skipped (issue 13).

Real Özgenel patches; the broken files are a text file named .jpg, a truncated JPEG and a
path that does not exist. ``eval`` runs the shipped INT8 package (no training needed)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from distill.cli import main
from distill.data.layouts import read_dataset
from distill.data.splits import write_manifest
from inspector.paths import default_model
from support import one_thread  # noqa: F401  (autouse fixture)

DATA = Path(os.environ["CRACK_DATA_DIR"])
QUICK = ["--input-size", "32", "--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--device", "cpu"]


@pytest.fixture
def folders(tmp_path) -> Path:
    """8 crack + 8 no_crack real patches, copied (a test may break some)."""
    root = tmp_path / "oz"
    for cls in ("crack", "no_crack"):
        (root / cls).mkdir(parents=True)
        for f in sorted((DATA / "ozgenel_ccic_subset" / cls).glob("*.jpg"))[:8]:
            shutil.copy(f, root / cls / f.name)
    return root


def test_training_refuses_a_manifest_with_bad_images_before_it_starts(folders, tmp_path, capsys):
    samples = read_dataset(folders)
    train, val = samples[::2], samples[1::2]
    write_manifest(tmp_path / "train.csv", train)
    write_manifest(tmp_path / "val.csv", val)
    # after the manifests were written: one file emptied of its picture, one cut short, one deleted
    not_image, truncated, gone = Path(train[0].path), Path(train[3].path), Path(val[2].path)
    not_image.write_text("notes from the site visit, not a photograph")
    truncated.write_bytes(truncated.read_bytes()[:300])
    gone.unlink()
    out = tmp_path / "run"
    rc = main(["train-teacher", "--scratch", "--arch", "mobilenet_v3_small", *QUICK,
               "--train-manifest", str(tmp_path / "train.csv"), "--val-manifest", str(tmp_path / "val.csv"),
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and "before training" in err and "val.csv: 1 of the images" in err
    assert str(not_image) in err and str(truncated) in err, err
    assert str(gone) in err
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()


def test_eval_says_which_files_it_skipped_without_out(folders, capsys):
    (folders / "crack" / "broken.jpg").write_text("this is not a JPEG")
    rc = main(["eval", str(default_model()), str(folders)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "n=16" in out
    assert "skipped 1 files that could not be used, not counted in n:" in out, out
    assert str(folders / "crack" / "broken.jpg") in out


def test_eval_with_out_points_at_the_file(folders, tmp_path, capsys):
    (folders / "no_crack" / "empty.jpg").write_bytes(b"")
    rc = main(["eval", str(default_model()), str(folders), "--out", str(tmp_path / "m.json")])
    out = capsys.readouterr().out
    assert rc == 0 and f"(all listed in {tmp_path / 'm.json'})" in out and "empty.jpg" in out
