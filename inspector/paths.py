"""Where the shipped files are: the default model package, the sample video, the report's fonts.

From a source checkout they sit in ``models/`` and ``resources/`` at the repository root; in a
PyInstaller bundle they are unpacked under ``sys._MEIPASS`` with the same relative paths.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

SAMPLE_VIDEO_NAME = "sample_inspection.avi"
_DEFAULT_MODEL = re.compile(r"^crack-student-(\d+)\.(\d+)\.(\d+)-int8\.crackpkg$")
_DEFAULT_TEACHERS = re.compile(r"^crack-teachers-(\d+)\.(\d+)\.(\d+)\.crackpkg$")


def app_root() -> Path:
    """The folder holding ``models/`` and ``resources/``."""
    bundle = getattr(sys, "_MEIPASS", None)
    return Path(bundle) if bundle else Path(__file__).resolve().parents[1]


def models_dir() -> Path:
    return app_root() / "models"


def resources_dir() -> Path:
    return app_root() / "resources"


def resource(name: str) -> Path:
    """A shipped file under ``resources/`` by its relative name (``"fonts/DejaVuSans.ttf"``);
    FileNotFoundError naming it if the checkout or the bundle lacks it."""
    path = resources_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"the shipped resource {name} is missing from {resources_dir()}")
    return path


def _newest(pattern: re.Pattern, what: str) -> Path:
    found = []
    for p in models_dir().glob("*.crackpkg"):
        m = pattern.match(p.name)
        if m:
            found.append((tuple(int(g) for g in m.groups()), p))
    if not found:
        raise FileNotFoundError(f"no shipped {what} in {models_dir()}")
    return max(found)[1]


def default_model() -> Path:
    """The newest shipped INT8 student package (``models/crack-student-X.Y.Z-int8.crackpkg``)."""
    return _newest(_DEFAULT_MODEL, "model package crack-student-X.Y.Z-int8.crackpkg")


def default_teachers() -> Path:
    """The newest shipped teacher-ensemble package (``models/crack-teachers-X.Y.Z.crackpkg``):
    what the app's background scorer runs on flagged frames."""
    return _newest(_DEFAULT_TEACHERS, "teacher package crack-teachers-X.Y.Z.crackpkg")


def sample_video() -> Path:
    """The shipped sample inspection video (made from redistributable images; see resources/CREDITS.md)."""
    path = resources_dir() / SAMPLE_VIDEO_NAME
    if not path.is_file():
        raise FileNotFoundError(f"the sample video {path} is missing (rebuild: python scripts/make_sample_video.py)")
    return path
