"""File dialogs open in the user's documents, then where that kind of file was last chosen (issue 22),
and the app's log keeps libraries at warning level."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PySide6.QtWidgets import QFileDialog

from inspector.qt import folders


@pytest.fixture
def settings(tmp_path, monkeypatch):
    path = tmp_path / "config" / "dialogs.ini"
    monkeypatch.setattr(folders, "settings_file", lambda: path)
    return path


def test_the_real_settings_file_is_in_the_tests_own_config_folder():
    assert "crack-tests-config-" in str(folders.settings_file())     # conftest: never the user's own


def test_first_the_documents_folder_then_the_last_one_used(settings, tmp_path):
    assert folders.start_folder("report") == folders.documents() and folders.documents().is_dir()
    chosen = tmp_path / "bridge-42"
    chosen.mkdir()
    folders.remember("report", chosen / "inspection-report.pdf")
    assert folders.start_folder("report") == chosen
    assert folders.start_folder("video") == folders.documents()      # each kind its own
    assert settings.is_file()                                          # kept for the next session
    chosen.rmdir()
    assert folders.start_folder("report") == folders.documents()      # gone: back to the documents
    with pytest.raises(ValueError, match="kind must be one of"):
        folders.start_folder("pictures")


def test_the_open_video_dialog_starts_in_documents_and_remembers(settings, tmp_path, qtbot, monkeypatch):
    from inspector.qt.live.source_panel import SourceChooser

    asked = []
    video = tmp_path / "site" / "sweep.mp4"
    video.parent.mkdir()
    video.write_bytes(b"")

    def dialog(parent, caption, folder, filters):
        asked.append(folder)
        return str(video), filters

    monkeypatch.setattr(QFileDialog, "getOpenFileName", dialog)
    chooser = SourceChooser()
    qtbot.addWidget(chooser)
    chooser.choose = lambda path: None
    chooser._choose_file()
    chooser._choose_file()
    assert asked == [str(folders.documents()), str(video.parent)]


def test_library_info_logs_stay_quiet(monkeypatch):
    from inspector.qt.main import configure_logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    app_logger = logging.getLogger("inspector")
    monkeypatch.setattr(app_logger, "level", app_logger.level)
    configure_logging()
    assert logging.getLogger("inspector.live.loop").isEnabledFor(logging.INFO)
    assert not logging.getLogger("fontTools.subset").isEnabledFor(logging.INFO)
    assert logging.getLogger("fontTools.subset").isEnabledFor(logging.WARNING)
    configure_logging(quiet=True)
    assert not logging.getLogger("inspector.live.loop").isEnabledFor(logging.INFO)
