"""``inspector --check-model`` and the INT8/FP32 choice the app makes on this CPU (inspector.edge.check)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inspector.edge import check as model_check, numerics
from inspector.edge.package import load_package, write_package
from inspector.paths import default_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "numeric_paths"))
import wrong_models  # noqa: E402


def test_check_report_passes_the_shipped_student_and_says_where_its_references_came_from():
    ok, text = model_check.check_report(default_model())
    assert ok, text
    assert "references 48 images, computed with onnxruntime" in text and "isa" in text
    assert f"CPU integer ISA {numerics.int8_isa()}" in text
    assert "CPU optimised" in text and "CPU unfused" in text and text.count(" pass") >= 2


def test_check_report_names_the_failed_rule_and_numbers_for_a_wrong_model(tmp_path):
    p = load_package(default_model(), verify_reference=False)
    bad = write_package(tmp_path / "bad.crackpkg", p.manifest.to_dict(),
                        wrong_models.swap_labels(p.onnx_bytes), p.reference, verify=False)
    ok, text = model_check.check_report(bad)
    assert not ok and "FAIL: verdicts differ on 48 of 48" in text and "max |Δp| = 1" in text


def test_check_model_command_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "inspector", "--check-model", str(default_model())],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "cpu-int8" in run.stdout
    cut = tmp_path / "cut.crackpkg"
    cut.write_bytes(default_model().read_bytes()[:1000])
    run = subprocess.run([sys.executable, "-m", "inspector", "--check-model", str(cut)],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 1 and "refused before any run" in run.stdout


def test_the_faster_variant_is_chosen_measured_and_remembered(tmp_path, monkeypatch):
    int8 = default_model()
    assert model_check.fp32_sibling(int8) is not None
    calls = []

    def fake_ms(pkg, threads):
        calls.append(pkg.manifest.quantization.type)
        return {"int8-qdq": 30.0, "fp32": 20.0}[pkg.manifest.quantization.type]   # INT8 slower here

    monkeypatch.setattr(model_check, "_tile_ms", fake_ms)
    first = model_check.choose_variant(int8, 2, tmp_path)
    assert first.path == model_check.fp32_sibling(int8) and "FP32: INT8 is 1.5x slower" in first.reason
    assert numerics.int8_isa() in first.reason and sorted(calls) == ["fp32", "int8-qdq"]
    again = model_check.choose_variant(int8, 2, tmp_path)          # remembered: not measured again
    assert again == first and len(calls) == 2
    assert model_check.choose_variant(int8, 1, tmp_path).ms and len(calls) == 4   # other threads: measured


def test_the_real_measurement_prefers_int8_where_it_is_faster(tmp_path):
    choice = model_check.choose_variant(default_model(), 2, None)
    assert set(choice.ms) == {"int8", "fp32"} and all(v > 0 for v in choice.ms.values())
    faster = "int8" if choice.ms["int8"] <= choice.ms["fp32"] else "fp32"
    assert (choice.path == default_model()) == (faster == "int8")


def test_without_an_fp32_sibling_the_int8_package_runs(tmp_path):
    lone = tmp_path / "crack-student-1.1.1-int8.crackpkg"
    lone.write_bytes(default_model().read_bytes())
    choice = model_check.choose_variant(lone, 2, tmp_path)
    assert choice.path == lone and "no FP32 package" in choice.reason


@pytest.mark.parametrize("name", ["x.crackpkg", "crack-student-1.1.1.crackpkg"])
def test_fp32_sibling_only_for_int8_names(tmp_path, name):
    assert model_check.fp32_sibling(tmp_path / name) is None
