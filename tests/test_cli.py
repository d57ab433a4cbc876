"""The ``distill`` command line, in-process through ``distill.cli.main`` (and once as the
installed console script), on a tiny real Özgenel set and three CrackForest frames."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import matthews_corrcoef, roc_auc_score

from distill.models.checkpoint import load_classifier
from distill.cli import main
from distill.data.layouts import read_dataset
from distill.data.patches import PatchRule
from distill.data.splits import read_manifest, write_manifest
from distill.data.torch_dataset import PatchDataset
from distill.metrics import evaluate_predictions
from distill.training.loop import predict
from support import one_thread  # noqa: F401  (autouse fixture)

DATA = Path(os.environ["CRACK_DATA_DIR"])
REPO = Path(__file__).resolve().parents[1]
ARCH = "mobilenet_v3_small"
QUICK = ["--input-size", "32", "--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--device", "cpu"]




@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    """24 crack + 24 no_crack real patches (pairs of neighbours spread over the numbering)."""
    root = tmp_path_factory.mktemp("oz")
    for cls in ("crack", "no_crack"):
        files = sorted((DATA / "ozgenel_ccic_subset" / cls).glob("*.jpg"))
        stride = len(files) // 12
        (root / cls).mkdir()
        for i in range(0, 12 * stride, stride):
            for f in files[i:i + 2]:
                os.symlink(f, root / cls / f.name)
    return root


@pytest.fixture(scope="module")
def masks(tmp_path_factory) -> Path:
    """images/ + masks/ layout with three CrackForest frames."""
    root = tmp_path_factory.mktemp("cfd")
    for sub, ext in (("images", "jpg"), ("masks", "png")):
        (root / sub).mkdir()
        for stem in ("001", "002", "003"):
            os.symlink(DATA / "crackforest_cfd" / sub / f"{stem}.{ext}", root / sub / f"{stem}.{ext}")
    return root


@pytest.fixture(scope="module")
def teacher(folders, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "teacher"
    rc = main(["train-teacher", "--scratch", "--arch", ARCH, *QUICK, "--data", str(folders), "--out", str(out)])
    assert rc == 0
    return out


def run_main(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_console_script_help():
    script = REPO / ".venv" / "bin" / "distill"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "distill.cli"]
    proc = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    for command in ("split", "train-teacher", "distil", "eval", "demo"):
        assert command in proc.stdout


def test_split_writes_three_manifests_with_disjoint_sources(folders, tmp_path, capsys):
    rc, out, _ = run_main(["split", folders, "--out", tmp_path, "--seed", "1"], capsys)
    assert rc == 0
    parts = {name: read_manifest(tmp_path / f"{name}.csv") for name in ("train", "val", "test")}
    assert all(parts.values())
    sources = {name: {s.source for s in part} for name, part in parts.items()}
    assert not sources["train"] & sources["val"] and not sources["train"] & sources["test"]
    assert not sources["val"] & sources["test"]
    everything = read_dataset(folders)
    assert sorted(s.path for p in parts.values() for s in p) == sorted(s.path for s in everything)
    assert any(sum(s.source == src for s in everything) > 1 for src in sources["train"])  # real groups
    assert (tmp_path / "bad_files.json").is_file()
    for name, part in parts.items():
        assert f"{name}: {len(part)} samples ({sum(s.label for s in part)} crack)" in out


def test_train_teacher_writes_checkpoint_config_and_summary(teacher, folders, capsys):
    assert (teacher / "best.pt").is_file() and (teacher / "last.pt").is_file()
    cfg = yaml.safe_load((teacher / "config.yaml").read_text())
    assert cfg["model"] == {"arch": ARCH, "pretrained": False}
    assert cfg["loss"]["name"] == "ce" and cfg["train"]["lr"] == 3e-4  # the teacher defaults
    assert cfg["data"]["input_size"] == 32 and cfg["data"]["root"] == str(folders)
    assert cfg["train"]["epochs"] == 1 and cfg["train"]["max_steps_per_epoch"] == 2
    model = load_classifier(teacher / "best.pt")
    assert model.meta.arch == ARCH and model.meta.input_size == 32 and model.meta.init == "scratch"
    summary = json.loads((teacher / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["loss"] == "ce" and summary["arch"] == ARCH
    assert summary["train_samples"] == len(read_manifest(teacher / "train.csv"))


def test_config_file_between_command_defaults_and_flags(folders, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "model": {"arch": ARCH, "pretrained": False},
        "data": {"input_size": 32},
        "train": {"epochs": 2, "batch_size": 8, "max_steps_per_epoch": 1, "device": "cpu", "seed": 9},
    }))
    rc, _, err = run_main(["train-teacher", "--config", tmp_path / "c.yaml", "--epochs", "1",
                           "--data", folders, "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 1          # flag beats the file
    assert cfg["train"]["seed"] == 9            # the file beats the defaults
    assert cfg["model"]["arch"] == ARCH
    assert cfg["train"]["lr"] == 3e-4           # a train-teacher default the file did not set
    assert cfg["loss"]["name"] == "ce"


def test_distil_with_kd_and_a_shared_cache(teacher, folders, tmp_path, capsys):
    common = ["distil", "--teacher", teacher / "best.pt", "--loss", "kd", "--student", ARCH, *QUICK,
              "--data", folders, "--cache", tmp_path / "cache.sqlite"]
    rc, out, err = run_main([*common, "--out", tmp_path / "s1"], capsys)
    assert rc == 0, err
    summary = json.loads(out)
    assert summary == json.loads((tmp_path / "s1" / "summary.json").read_text())
    assert summary["loss"] == "kd" and summary["teacher_cache"] == {"hits": 0, "misses": 16}
    cfg = yaml.safe_load((tmp_path / "s1" / "config.yaml").read_text())
    assert cfg["teachers"] == [str(teacher / "best.pt")] and cfg["loss"]["name"] == "kd"
    assert load_classifier(tmp_path / "s1" / "best.pt").meta.input_size == 32

    rc, out, err = run_main([*common, "--out", tmp_path / "s2"], capsys)
    assert rc == 0, err
    assert json.loads(out)["teacher_cache"] == {"hits": 16, "misses": 0}
    a, b = (load_classifier(tmp_path / s / "best.pt").state_dict() for s in ("s1", "s2"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, cache warm or cold: same student


def test_eval_metrics_agree_with_predict_and_metrics(teacher, folders, tmp_path, capsys):
    rc, out, err = run_main(["eval", teacher / "best.pt", folders, "--out", tmp_path / "m" / "metrics.json"],
                            capsys)
    assert rc == 0, err
    result = json.loads((tmp_path / "m" / "metrics.json").read_text())
    m = result["metrics"]
    assert set(m) >= {"mcc", "accuracy", "precision", "recall", "f1", "confusion", "roc_auc", "n"}
    assert result["arch"] == ARCH and result["input_size"] == 32

    model = load_classifier(teacher / "best.pt")
    samples = read_dataset(folders)
    probs, labels = predict(model, PatchDataset(samples, 32))
    assert labels.tolist() == [s.label for s in samples]
    expected = evaluate_predictions(labels, probs).to_dict()
    for key in ("mcc", "accuracy", "precision", "recall", "f1", "confusion", "roc_auc", "n"):
        assert m[key] == expected[key], key
    # independent oracle
    pred = probs.argmax(1)
    assert m["n"] == 48 and sum(map(sum, m["confusion"])) == 48
    assert m["accuracy"] == pytest.approx(float(np.mean(pred == labels)))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(labels, pred), abs=1e-9)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]))
    assert f"n=48 MCC {m['mcc']:.4f}" in out


def test_eval_on_masks_layout_and_per_surface(teacher, masks, tmp_path, capsys):
    rc, _, err = run_main(["eval", teacher / "best.pt", masks, "--out", tmp_path / "masks.json"], capsys)
    assert rc == 0, err
    m = json.loads((tmp_path / "masks.json").read_text())["metrics"]
    patches = read_dataset(masks, patch_rule=PatchRule(size=96, stride=96))
    assert m["n"] == len(patches) > 10
    assert [sum(r) for r in m["confusion"]] == [sum(s.label == 0 for s in patches), sum(s.label == 1 for s in patches)]
    assert m["per_surface"] == {}  # frames of a masks folder carry no surface

    manifest = tmp_path / "pavement.csv"
    write_manifest(manifest, [replace(s, surface="pavement") for s in patches])
    rc, _, err = run_main(["eval", teacher / "best.pt", manifest, "--out", tmp_path / "pav.json"], capsys)
    assert rc == 0, err
    m2 = json.loads((tmp_path / "pav.json").read_text())["metrics"]
    assert m2["per_surface"] == {"pavement": {"mcc": m["mcc"], "n": m["n"], "accuracy": m["accuracy"]}}


def test_bad_inputs_exit_2_with_a_message(teacher, folders, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "bad.yaml").write_text("train:\n  epoch: 3\n")
    cases = [
        (["eval", tmp_path / "missing.pt", folders], "no checkpoint at"),
        (["eval", tmp_path / "junk.pt", folders], "not a readable PyTorch checkpoint"),
        (["eval", teacher / "best.pt", empty], "empty"),
        (["eval", teacher / "best.pt", tmp_path / "nowhere"], "no dataset folder"),
        (["distil", "--teacher", teacher / "best.pt", "--loss", "kd+magic", "--data", folders,
          "--out", tmp_path / "x1"], "kd+magic"),
        (["distil", "--loss", "kd", "--data", folders, "--out", tmp_path / "x2"], "--teacher"),
        (["distil", "--teacher", tmp_path / "missing.pt", "--data", folders, "--out", tmp_path / "x3"],
         "no teacher checkpoint"),
        (["train-teacher", "--config", tmp_path / "bad.yaml", "--data", folders, "--out", tmp_path / "x4"],
         "epoch"),
        (["train-teacher", "--scratch", "--arch", "resnet9000", "--data", folders, "--out", tmp_path / "x5"],
         "unknown architecture"),
        (["split", folders, "--out", tmp_path / "x6", "--fractions", "0.5", "0.5", "0.5"], "fractions"),
    ]
    for argv, message in cases:
        rc, _, err = run_main(argv, capsys)
        assert rc == 2, (argv, err)
        assert message in err and "Traceback" not in err, (argv, err)
        assert err.startswith(f"distill {argv[0]}: error:"), err
    # nothing was trained or written for the refused distil runs
    assert not (tmp_path / "x1").exists() and not (tmp_path / "x2").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_cuda_is_a_clear_error(folders, tmp_path, capsys):
    rc, _, err = run_main(["train-teacher", "--scratch", "--arch", ARCH, "--input-size", "32", "--device", "cuda",
                           "--data", folders, "--out", tmp_path / "r"], capsys)
    assert rc == 2 and "CUDA is not available" in err and "Traceback" not in err


def test_console_script_bad_input_exit_code(tmp_path, folders):
    script = REPO / ".venv" / "bin" / "distill"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "distill.cli"]
    proc = subprocess.run([*cmd, "eval", str(tmp_path / "missing.pt"), str(folders)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert "no checkpoint at" in proc.stderr and "Traceback" not in proc.stderr


def test_progress_printer_speaks_on_rank_0_only(monkeypatch, capsys):
    from distill.training.progress import ProgressPrinter

    end = {"event": "epoch_end", "epoch": 0, "train_loss": 0.5, "val": {"mcc": 0.25, "accuracy": 0.75},
           "best_mcc": 0.25, "improved": True}
    monkeypatch.setenv("RANK", "1")
    ProgressPrinter()(end)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    ProgressPrinter("t ")(end)
    assert capsys.readouterr().err == "t epoch 1: train loss 0.5000  val MCC 0.2500  acc 0.7500  *best*\n"


def test_usage_errors_exit_2(capsys):
    for argv in ([], ["eval"], ["distil", "--epochs", "many"], ["frobnicate"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "usage:" in capsys.readouterr().err
