"""The source chooser: cameras, a video file, a URL or GStreamer pipeline, or the sample video.

Emits ``sourceChosen(SourceSpec)``; a spec that does not parse is explained inline (no dialog).
Looking for cameras opens devices, which can take a while, so it runs as a detached job.
"""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QFileDialog, QFrame, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                               QVBoxLayout, QWidget)

from inspector.paths import sample_video
from inspector.qt import folders
from inspector.qt.jobs import JobRunner

VIDEO_FILTER = "Videos (*.avi *.mp4 *.mkv *.mov *.m4v *.webm *.mjpg *.mjpeg);;All files (*)"


class SourceChooser(QFrame):
    sourceChosen = Signal(object)      # SourceSpec

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, objectName="panel")
        self.jobs = JobRunner(self)        # looking for cameras: detached, outcome dropped once the panel is gone
        lay = QVBoxLayout(self)
        lay.setContentsMargins(12, 10, 12, 12)
        lay.setSpacing(8)
        lay.addWidget(QLabel("SOURCE", objectName="sectionTitle"))
        self.current = QLabel("—", objectName="value", wordWrap=True)
        self.current.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.current)

        cams = QHBoxLayout()
        self.cameras = QComboBox()
        self.cameras.setFocusPolicy(Qt.ClickFocus)
        self.cameras.setPlaceholderText("no camera found")
        self.refresh = QPushButton("↻", toolTip="Look for cameras again")
        self.refresh.setFixedWidth(36)
        self.use_camera = QPushButton("Use")
        cams.addWidget(self.cameras, 1)
        cams.addWidget(self.refresh)
        cams.addWidget(self.use_camera)
        lay.addLayout(cams)

        url = QHBoxLayout()
        self.url = QLineEdit(placeholderText="rtsp://…, http://… or GStreamer pipeline", clearButtonEnabled=True)
        self.connect_url = QPushButton("Connect")
        url.addWidget(self.url, 1)
        url.addWidget(self.connect_url)
        lay.addLayout(url)

        files = QHBoxLayout()
        self.open_file = QPushButton("Open video file…")
        self.sample = QPushButton("Sample video")
        files.addWidget(self.open_file, 1)
        files.addWidget(self.sample, 1)
        lay.addLayout(files)

        self.error = QLabel(objectName="error", wordWrap=True)
        self.error.hide()
        lay.addWidget(self.error)
        for b in (self.refresh, self.use_camera, self.connect_url, self.open_file, self.sample):
            b.setFocusPolicy(Qt.NoFocus)

        self.refresh.clicked.connect(self.find_cameras)
        self.use_camera.clicked.connect(self._choose_camera)
        self.connect_url.clicked.connect(lambda: self.choose(self.url.text().strip()))
        self.url.returnPressed.connect(lambda: self.choose(self.url.text().strip()))
        self.open_file.clicked.connect(self._choose_file)
        self.sample.clicked.connect(self._choose_sample)
        self.use_camera.setEnabled(False)
        self.connect_url.setEnabled(False)             # enabled once there is something to connect to
        self.url.textChanged.connect(lambda text: self.connect_url.setEnabled(bool(text.strip())))

    def set_current(self, label: str) -> None:
        self.current.setText(label)

    def set_cameras(self, cameras: list[tuple[int, str]]) -> None:
        self._set_cameras(cameras)

    def find_cameras(self) -> None:
        from inspector.capture.sources import list_cameras

        self.refresh.setEnabled(False)
        self.cameras.setPlaceholderText("looking for cameras…")
        # failing to list them is a normal answer: no cameras
        self.jobs.run(list_cameras, on_success=self._set_cameras, on_failure=lambda _exc: self._set_cameras([]),
                      detached=True)

    def choose(self, spec) -> bool:
        """Parse ``spec`` and emit it; show why not if it does not parse."""
        from inspector.capture.sources import SourceError, parse_source

        if spec == "" or spec is None:
            self._show_error("Enter a URL, a GStreamer pipeline or a camera number.")
            return False
        try:
            parsed = parse_source(spec)
        except (SourceError, OSError) as exc:
            self._show_error(str(exc))
            return False
        self.error.hide()
        self.sourceChosen.emit(parsed)
        return True

    def _set_cameras(self, cameras) -> None:
        self.refresh.setEnabled(True)
        self.cameras.clear()
        for index, name in cameras:
            self.cameras.addItem(f"{index}: {name}", index)
        self.cameras.setPlaceholderText("no camera found")
        self.use_camera.setEnabled(bool(cameras))

    def _choose_camera(self) -> None:
        if self.cameras.currentIndex() >= 0:
            self.choose(int(self.cameras.currentData()))

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a video", str(folders.start_folder("video")), VIDEO_FILTER)
        if path:
            folders.remember("video", path)
            self.choose(path)

    def _choose_sample(self) -> None:
        try:
            self.choose(str(sample_video()))
        except FileNotFoundError as exc:
            self._show_error(str(exc))

    def _show_error(self, text: str) -> None:
        self.error.setText(text)
        self.error.show()
