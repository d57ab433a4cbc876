"""The 1.x import paths of the edge model still work after the rooms moved (issue 19): tools
outside the app (scripts, checks) import ``inspector.package``, ``inspector.engine``,
``inspector.numerics`` and ``inspector.model_check``; they get the edge room's own objects."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from inspector.edge import check, contract, engine, fields, manifest, numerics, package

REPO = Path(__file__).resolve().parents[1]
OLD_PACKAGE_NAMES = {  # every public name inspector/package.py had in 1.x, and where it lives now
    fields: ["PackageError"],
    manifest: ["FORMAT", "MANIFEST_MEMBER", "MODEL_MEMBER", "DEFAULT_REFERENCE_MEMBER", "REQUIRED_OUTPUTS",
               "QUANTIZATION_TYPES", "SIGNATURE_ALGS", "InputSpec", "Preprocessing", "Quantization", "Tiling",
               "ReferenceSpec", "Signature", "Manifest", "utc_now_iso"],
    contract: ["INPUT_NAME", "check_model_contract", "ReferenceCheckError", "verify_reference_outputs"],
    package: ["MAX_MEMBER_BYTES", "MAX_REFERENCE_BYTES", "signed_payload", "ModelPackage", "load_package",
              "write_package"],
}


def test_inspector_package_has_every_1x_name_from_its_new_home():
    old = importlib.import_module("inspector.package")
    for home, names in OLD_PACKAGE_NAMES.items():
        for name in names:
            assert getattr(old, name) is getattr(home, name), name


@pytest.mark.parametrize("old, new", [("inspector.engine", engine), ("inspector.numerics", numerics),
                                      ("inspector.model_check", check)])
def test_old_module_paths_are_the_moved_modules(old, new):
    assert importlib.import_module(old) is new


def test_a_fresh_process_verifies_the_shipped_packages_through_the_1x_path():
    """What a tool written against 1.x does on a new machine: load every shipped package, which
    runs its reference check on this CPU, through ``inspector.package``."""
    code = ("import sys, glob; from inspector.package import load_package; "
            "paths = sorted(glob.glob('models/*.crackpkg')); "
            "[load_package(p) for p in paths]; print(len(paths))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) == len(list((REPO / "models").glob("*.crackpkg"))) >= 3
