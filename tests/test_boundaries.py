"""The design card's boundaries as contracts (import-linter, ``[tool.importlinter]`` in pyproject):
only ``inspector.qt`` imports PySide6, only ``distill`` imports torch, the Jetson agent needs
neither. Function-level imports count too (grimp reads every import statement)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is a test dependency (pyproject [project.optional-dependencies] test)"
    proc = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_every_module_outside_the_qt_layer_is_under_contract():
    """A new module cannot slip past the first contract by not being listed."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    listed = set(config["source_modules"])
    modules = set()
    for path in (REPO / "inspector").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[1:2] in (("qt",), ("__main__",), ("__init__",)):
            continue
        name = ".".join(p for p in parts if p != "__init__")
        if not any(name == m or name.startswith(m + ".") for m in listed):
            modules.add(name)
    assert not modules, f"add these to the first [[tool.importlinter.contracts]]: {sorted(modules)}"
