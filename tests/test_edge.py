"""`distill export` end to end: a checkpoint becomes FP32 and INT8 packages that score the same
patches as the checkpoint does (`distill eval` on a package vs on the checkpoint)."""
import json
import os
from pathlib import Path

import torch

from distill.models.checkpoint import save_checkpoint
from distill.cli import main
from distill.data.layouts import read_dataset
from distill.data.splits import write_manifest
from distill.models.registry import build_model
from inspector.edge.package import load_package
from support import calibrated

torch.set_num_threads(1)
DATA = Path(os.environ["CRACK_DATA_DIR"])


def test_export_writes_fp32_and_int8_packages_that_evaluate_like_the_checkpoint(tmp_path):
    samples = read_dataset(DATA / "ozgenel_ccic_subset")[::60]  # 67 real patches, both classes
    manifest = tmp_path / "patches.csv"
    write_manifest(manifest, samples)
    model = calibrated(build_model("efficientnet_lite0", input_size=64, pretrained=True), 64)
    ckpt = tmp_path / "student.pt"
    save_checkpoint(ckpt, model)

    out = tmp_path / "pkgs"
    assert main(["export", str(ckpt), "--out", str(out), "--name", "tiny", "--version", "0.1.0",
                 "--calibration", str(manifest), "--eval", f"sample={manifest}",
                 "--training-data", "Özgenel=CC BY 4.0", "--calibration-count", "32"]) == 0
    fp32, int8 = load_package(out / "tiny-0.1.0.crackpkg"), load_package(out / "tiny-0.1.0-int8.crackpkg")
    assert int8.manifest.parent_version == fp32.manifest.version == "0.1.0"
    assert int8.manifest.quantization.type == "int8-qdq" and fp32.manifest.quantization.type == "fp32"
    assert len(int8.onnx_bytes) * 3 < len(fp32.onnx_bytes)
    assert fp32.manifest.metrics["sample"]["n"] == len(samples)

    results = {}
    for name, path in (("ckpt", ckpt), ("fp32", out / "tiny-0.1.0.crackpkg")):
        metrics_file = tmp_path / f"{name}.json"
        assert main(["eval", str(path), str(manifest), "--out", str(metrics_file)]) == 0
        results[name] = json.loads(metrics_file.read_text())["metrics"]
    assert results["fp32"]["confusion"] == results["ckpt"]["confusion"]
    assert abs(results["fp32"]["roc_auc"] - results["ckpt"]["roc_auc"]) < 1e-6
    assert results["fp32"]["mcc"] == fp32.manifest.metrics["sample"]["mcc"]
