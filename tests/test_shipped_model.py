"""The shipped default student package on real frames it never trained on.

CrackForest (pavement) and UAV75 (bridges) frames with pixel masks: the heat-map of the INT8
student must sit on the annotated crack pixels more than chance, and tiles holding crack
pixels must score higher than clean ones. Margins were measured on these frames with the
shipped model (numbers in the model card) and set below them with room, not tuned to pass.
"""
import os
from pathlib import Path

import numpy as np
import pytest

from distill.data.imageio import load_mask, load_rgb
from distill.metrics import roc_auc
from inspector.edge.engine import InferenceEngine
from inspector.edge.package import load_package
from inspector.paths import default_model, models_dir

DATA = Path(os.environ["CRACK_DATA_DIR"])
MODELS = models_dir()


def shipped(kind: str) -> Path:
    """The app's default (INT8) package, or its FP32 parent beside it."""
    int8 = default_model()
    return int8 if kind == "int8" else int8.with_name(int8.name.replace("-int8.crackpkg", ".crackpkg"))


def frames(dataset: str, n: int):
    images = sorted((DATA / dataset / "images").glob("*.jpg"))
    for path in images[:: max(1, len(images) // n)][:n]:
        yield load_rgb(path), load_mask(DATA / dataset / "masks" / f"{path.stem}.png")


@pytest.fixture(scope="module")
def engine():
    return InferenceEngine(shipped("int8"), threads=1)  # the tiling the app uses: the package's own


def test_shipped_packages_load_and_int8_descends_from_fp32():
    fp32, int8 = load_package(shipped("fp32")).manifest, load_package(shipped("int8")).manifest
    assert int8.quantization.type == "int8-qdq" and fp32.quantization.type == "fp32"
    assert int8.parent_version == fp32.version
    assert int8.labels == fp32.labels == ("no_crack", "crack")
    assert int8.tiling == fp32.tiling and int8.tiling is not None
    assert {d["licence"] for d in fp32.training_data} == {"CC BY 4.0", "CC BY-SA 4.0"}


def heat_ratio_and_tile_auc(engine, dataset: str, n: int):
    ratios, tile_scores, tile_labels = [], [], []
    for image, mask in frames(dataset, n):
        result = engine.inspect(image)
        if mask.any() and result.heatmap.mean() > 0:
            ratios.append(float(result.heatmap[mask].mean() / result.heatmap.mean()))
        for tile in result.tiles:
            x0, y0, x1, y1 = tile.box
            tile_scores.append(tile.crack_prob)
            tile_labels.append(int(mask[y0:y1, x0:x1].any()))
    return np.array(ratios), roc_auc(np.array(tile_labels), np.array(tile_scores))


# Measured with crack-student-1.1.0-int8 (ResNet-18, 160 px tiles, no overlap) on these 12
# frames: heat on crack pixels / mean heat = 1.57 at the median on CrackForest with the continuous
# heat-map (40 frames: 1.51; the old tile-by-tile patchwork: 1.66 and 1.59), tile ROC-AUC 0.65 (40
# frames: 0.66). Chance is 1.0 and 0.5.
def test_heatmap_sits_on_annotated_pavement_cracks_more_than_chance(engine):
    ratios, auc = heat_ratio_and_tile_auc(engine, "crackforest_cfd", 12)
    assert len(ratios) >= 8
    assert np.median(ratios) > 1.3, ratios
    assert auc > 0.58


# A known limit, kept visible: on UAV75 bridge frames the ResNet-18 student's heat-map is NOT
# above chance (median ratio 0.77 on 12 and on 40 frames with the continuous heat-map; the
# patchwork: 0.75 and 0.77; tile AUC 0.53 / 0.55), where the
# ImageNet-initialised EfficientNet-Lite0 student of 1.0.0 reached 1.47 / AUC 0.64 (see the
# model card). strict: if a new default model fixes it, this test fails and must become a margin.
@pytest.mark.xfail(strict=True, reason="ResNet-18 student (from scratch on walls) does not localise bridge cracks")
def test_heatmap_sits_on_annotated_bridge_cracks_more_than_chance(engine):
    ratios, auc = heat_ratio_and_tile_auc(engine, "uav75", 12)
    assert len(ratios) >= 8
    assert np.median(ratios) > 1.2, ratios
    assert auc > 0.55


def test_shipped_teacher_ensemble_loads_from_float16_and_sees_cracks():
    import torch

    from distill.data.layouts import read_dataset
    from distill.data.splits import split_by_source
    from distill.export.package import uint8_patches
    from distill.models.ensemble import TeacherEnsemble

    ensemble = TeacherEnsemble.from_checkpoints(sorted((MODELS / "teachers").glob("efficientnet_lite*.pt")))
    assert len(ensemble.members) == 3
    assert all(p.dtype == torch.float32 for p in ensemble.parameters())
    # the held-out split of scripts/build_default_models.py (same rule, same seed)
    samples = split_by_source(read_dataset(DATA / "ozgenel_ccic_subset"), seed=0)["test"][::20]
    x = torch.from_numpy(uint8_patches(samples, 96)).permute(0, 3, 1, 2).float() / 255
    predicted = ensemble(x).argmax(1).numpy()
    labels = np.array([s.label for s in samples])
    assert (predicted == labels).mean() > 0.9
