"""distill.export.teachers and the shipped teacher package: the ensemble the student was distilled
from, as ONNX, must give the PyTorch ensemble's probabilities and its exact Grad-CAM.

Everything runs on real patches (Özgenel walls, UAV75 bridge crops) and the shipped teachers.
"""
from __future__ import annotations

import inspect
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.models.checkpoint import load_classifier
from distill.config import RunConfig
from distill.data.layouts import read_dataset
from distill.export.package import uint8_patches
from distill.models.ensemble import TeacherEnsemble
from distill.export.graph import ExportError, ort_session
from distill.models.registry import build_model
from distill.export.teachers import EnsembleGraph, export_ensemble_onnx
from inspector.edge.package import load_package
from inspector.paths import default_model, default_teachers, models_dir
from support import one_thread, read_manifest  # noqa: F401 - one_thread is an autouse fixture

DATA = Path(os.environ["CRACK_DATA_DIR"])
TEACHERS = [models_dir() / "teachers" / f"efficientnet_lite{i}.pt" for i in range(3)]
CRACK = 1


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    """40 real uint8 96 px patches: Özgenel crack and no-crack walls, UAV75 bridge patches."""
    walls = read_dataset(DATA / "ozgenel_ccic_subset", surface="wall")
    bridges = read_dataset(DATA / "uav75", surface="bridge")
    picked = walls[::len(walls) // 24][:24] + bridges[::len(bridges) // 16][:16]
    return uint8_patches(picked, 96)


@pytest.fixture(scope="module")
def ensemble() -> TeacherEnsemble:
    return TeacherEnsemble.from_checkpoints(TEACHERS)  # the default averaging, as distillation uses it


@pytest.fixture(scope="module")
def package():
    return load_package(default_teachers())  # validates every field and reruns the references


def torch_probs(ens: TeacherEnsemble, images: np.ndarray) -> np.ndarray:
    x01 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return torch.softmax(ens(x01), dim=1).numpy()


def autograd_cam(ens: TeacherEnsemble, images: np.ndarray, cls: int) -> np.ndarray:
    """Grad-CAM of the ensemble's logit over the members' last feature maps taken as one layer,
    by autograd: ReLU(Σ_k mean_ij(∂z_c/∂A_kij) · A_k)."""
    x01 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    maps = [m.features(x01).detach().requires_grad_(True) for m in ens.members]
    stacked = torch.stack([m.head(m.embed(a)) for m, a in zip(ens.members, maps)])
    if ens.average == "logits":
        z = stacked.mean(0)
    else:
        z = torch.logsumexp(F.log_softmax(stacked, dim=-1), dim=0) - math.log(len(maps))
    z[:, cls].sum().backward()
    cam = sum((a.grad.mean(dim=(2, 3), keepdim=True) * a).sum(1) for a in maps)
    return torch.relu(cam).detach().numpy()


def test_shipped_package_is_the_shipped_ensemble(package, ensemble):
    m = package.manifest
    teachers = [load_classifier(p).meta for p in TEACHERS]
    assert m.name == "crack-teachers" and m.quantization.type == "fp32"
    assert m.input.size == teachers[0].input_size == 96          # what the teachers were trained at
    assert m.labels == tuple(teachers[0].label_names)
    student = read_manifest(default_model())
    assert m.tiling.to_dict() == student["tiling"]                # the student's tiles are what it scores
    info = m.extra["ensemble"]
    default_average = inspect.signature(TeacherEnsemble).parameters["average"].default
    assert info["average"] == default_average == RunConfig().ensemble_average == ensemble.average
    assert [x["arch"] for x in info["members"]] == [t.arch for t in teachers]
    import hashlib

    assert [x["sha256"] for x in info["members"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in TEACHERS]


def test_package_probs_agree_with_pytorch_ensemble(package, ensemble, patches):
    probs, cam = ort_session(package.onnx_bytes).run(["probs", "cam"], {"image": patches})
    want = torch_probs(ensemble, patches)
    assert np.abs(probs - want).max() < 1e-4
    # real patches on both sides of the decision, so agreement is not all-zeros against all-zeros
    assert (want[:, CRACK] > 0.9).sum() >= 5 and (want[:, CRACK] < 0.1).sum() >= 5
    ref = autograd_cam(ensemble, patches, CRACK)
    assert cam.shape == (len(patches), 2, 3, 3)
    assert np.abs(cam[:, CRACK] - ref).max() <= 1e-3 * max(1.0, float(np.abs(ref).max()))


def test_probability_averaging_is_exported_exactly(patches, tmp_path):
    ens = TeacherEnsemble.from_checkpoints(TEACHERS[:2], average="probs")
    report = export_ensemble_onnx(ens, tmp_path / "probs.onnx", check_images=patches[:8])
    assert report.cam_method == "analytic-mlp" and report.probs_max_abs_diff < 1e-4
    probs, cam = ort_session(tmp_path / "probs.onnx").run(["probs", "cam"], {"image": patches})
    assert np.abs(probs - torch_probs(ens, patches)).max() < 1e-4
    for cls in (0, 1):
        ref = autograd_cam(ens, patches, cls)
        assert np.abs(cam[:, cls] - ref).max() <= 1e-3 * max(1.0, float(np.abs(ref).max()))


def test_members_of_different_input_sizes_are_refused():
    members = [build_model("efficientnet_lite0", input_size=96), build_model("efficientnet_lite0", input_size=64)]
    with pytest.raises(ExportError, match="input sizes"):
        EnsembleGraph(TeacherEnsemble(members))


def test_cli_exports_a_loadable_package(tmp_path, capsys):
    from distill.cli import main

    data = tmp_path / "data"
    for label in ("crack", "no_crack"):
        (data / label).mkdir(parents=True)
        for f in sorted((DATA / "ozgenel_ccic_subset" / label).glob("*.jpg"))[:6]:
            shutil.copy(f, data / label / f.name)
    rc = main(["export-teachers", str(TEACHERS[0]), "--samples", str(data), "--eval", f"few={data}",
               "--training-data", "Özgenel=CC BY 4.0", "--out", str(tmp_path / "out"), "--version", "0.1.0"])
    assert rc == 0, capsys.readouterr().err
    pkg = load_package(tmp_path / "out" / "crack-teachers-0.1.0.crackpkg")
    assert pkg.manifest.metrics["few"]["n"] == 12
    assert pkg.manifest.tiling.size == 160
    assert "probs vs PyTorch" in capsys.readouterr().out
