"""The PyInstaller bundle: scripts/build_bundle.sh builds dist/crack-inspector/ and runs its own
self-test with no Python on PATH (window, flag + review, export, distill update, device agent).

Marked ``bundle`` and left out of a plain ./test.sh; .ci/run runs it after the suite
(``./test.sh -m bundle tests/test_bundle.py``): about 4 minutes on a quiet 2-core machine, 12-40
under other load, ~4 GB of disk (docs/benchmarks/bundle.md).
"""
from __future__ import annotations

import json
import subprocess

import pytest

from support import REPO

REPORT = REPO / "dist" / "bundle-report.json"
BUILD_TIMEOUT_S = 3600
SIZE_BUDGET = {"cpu": 3_900_000_000, "cuda": 5_600_000_000}   # bytes; measured in docs/benchmarks/bundle.md


@pytest.fixture(scope="module")
def built():
    REPORT.unlink(missing_ok=True)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_bundle.sh")], cwd=REPO, capture_output=True,
                          text=True, timeout=BUILD_TIMEOUT_S)
    return proc, json.loads(REPORT.read_text()) if REPORT.is_file() else None


@pytest.mark.bundle
def test_the_bundle_builds_and_passes_its_self_test(built):
    proc, report = built
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert report is not None and report["exit_status"] == 0 and report["built"] is True
    test = report["selftest"]
    assert test["ok"] is True and test["failures"] == []
    assert test["window"]["exit_status"] == 0 and test["window"]["first_frame_after_window_s"] is not None
    update = test["distill_update"]
    assert update["exit_status"] == 0 and update["promoted"] in (True, False) and update["first_event_s"] is not None
    assert test["agent"]["answered"] is True and test["agent"]["ready_s"] is not None


@pytest.mark.bundle
def test_the_bundle_is_one_folder_with_three_programs_and_no_test_or_gpu_only_parts(built):
    proc, report = built
    assert proc.returncode == 0, proc.stderr[-4000:]
    dist = REPO / "dist" / "crack-inspector"
    for program in ("inspector", "distill", "inspector-agent"):
        assert (dist / program).is_file()
    internal = dist / "_internal"
    assert (internal / "models" / "crack-student-1.1.1-int8.crackpkg").is_file()
    assert (internal / "resources" / "sample_inspection.avi").is_file()
    for left_out in ("triton", "pytest", "hypothesis", "sklearn", "scipy", "PySide6/QtQml.abi3.so",
                     "PySide6/QtQuick.abi3.so", "PySide6/QtNetwork.abi3.so"):
        assert not (internal / left_out).exists(), left_out
    names = {p.name for p in internal.rglob("*") if not p.is_symlink()}   # a dangling top-level link is harmless
    assert not (internal / "PySide6" / "Qt" / "translations").exists()
    if report["flavour"] == "cpu":
        assert not [n for n in names if n.startswith(("libcudnn_", "libcusolver", "libtorch_cuda_linalg"))]
    assert len(report["selftest"]["largest_files"]) == 10
    assert 0 < report["selftest"]["size_bytes"] <= SIZE_BUDGET[report["flavour"]]
