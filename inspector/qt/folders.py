"""Where file dialogs open: the folder last used for that kind of file, else the user's documents.

A dialog given no folder opens in the process's working directory, which for an installed app is
its install folder: a report saved there is lost to the inspector. Each kind of file
(``"report"``, ``"export"``, ``"video"``, ``"package"``) remembers its own last folder across
sessions in ``dialogs.ini`` of the per-user config folder (:func:`settings_file`).
"""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, QStandardPaths

KINDS = ("report", "export", "video", "package")


def settings_file() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("crack-inspector", appauthor=False)) / "dialogs.ini"


def _settings() -> QSettings:
    return QSettings(str(settings_file()), QSettings.Format.IniFormat)


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def documents() -> Path:
    """The user's documents folder (home when the platform names none or it does not exist)."""
    loc = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    return Path(loc) if loc and Path(loc).is_dir() else Path.home()


def start_folder(kind: str) -> Path:
    """The folder a ``kind`` dialog opens in: the last one used for it if it still exists, else
    the documents folder."""
    _check(kind)
    last = _settings().value(f"last_folder/{kind}", "", type=str)
    return Path(last) if last and Path(last).is_dir() else documents()


def remember(kind: str, chosen: str | Path) -> None:
    """Remember where the user chose a ``kind`` file (a file's folder, or a folder itself)."""
    _check(kind)
    p = Path(chosen)
    folder = p if p.is_dir() else p.parent
    s = _settings()
    s.setValue(f"last_folder/{kind}", str(folder))
    s.sync()
