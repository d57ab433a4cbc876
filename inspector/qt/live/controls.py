"""Side-panel controls: display (overlay, opacity, threshold, legend) and the next flag's fields.

Widgets emit plain signals; the window connects them to the view and the inspector.
"""
from __future__ import annotations

import cv2
import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPixmap
from PySide6.QtWidgets import (QCheckBox, QFormLayout, QFrame, QGridLayout, QHBoxLayout, QLabel, QLineEdit,
                               QPushButton, QSlider, QVBoxLayout, QWidget)

from inspector.qt import theme


def section(title: str) -> tuple[QFrame, QVBoxLayout]:
    """A titled panel."""
    frame = QFrame(objectName="panel")
    lay = QVBoxLayout(frame)
    lay.setContentsMargins(12, 10, 12, 12)
    lay.setSpacing(8)
    lay.addWidget(QLabel(title.upper(), objectName="sectionTitle"))
    return frame, lay


def _swatch(colour: QColor, dashed: bool = False, filled: bool = True) -> QLabel:
    pm = QPixmap(18, 12)
    pm.fill(Qt.transparent)
    p = QPainter(pm)
    if filled:
        c = QColor(colour)
        c.setAlpha(60)
        p.fillRect(1, 1, 16, 10, c)
    pen = p.pen()
    pen.setColor(colour)
    pen.setWidth(2)
    if dashed:
        pen.setStyle(Qt.DashLine)
    p.setPen(pen)
    p.drawRect(1, 1, 15, 9)
    p.end()
    label = QLabel()
    label.setPixmap(pm)
    return label


def _colour_bar(width: int = 220, height: int = 10) -> QLabel:
    ramp = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))
    rgb = np.ascontiguousarray(cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB))
    img = QImage(rgb.data, width, height, rgb.strides[0], QImage.Format_RGB888).copy()
    label = QLabel()
    label.setPixmap(QPixmap.fromImage(img))
    return label


class _Slider(QWidget):
    """A labelled 0..1 slider with its value shown as a number."""

    changed = Signal(float)

    def __init__(self, title: str, value: float, lo: float = 0.0, hi: float = 1.0, parent=None):
        super().__init__(parent)
        lay = QGridLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setVerticalSpacing(2)
        self.title = QLabel(title)
        self.value_label = QLabel(objectName="value")
        self.value_label.setFont(theme.mono_font(10, bold=True))
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(round(lo * 100), round(hi * 100))
        self.slider.setPageStep(5)
        self.slider.setFocusPolicy(Qt.ClickFocus)   # keep Space for flagging
        lay.addWidget(self.title, 0, 0)
        lay.addWidget(self.value_label, 0, 1, Qt.AlignRight)
        lay.addWidget(self.slider, 1, 0, 1, 2)
        self.slider.valueChanged.connect(self._on_value)
        self.set_value(value)
        self._on_value(self.slider.value())

    def value(self) -> float:
        return self.slider.value() / 100.0

    def set_value(self, v: float) -> None:
        self.slider.setValue(round(v * 100))

    def _on_value(self, raw: int) -> None:
        self.value_label.setText(f"{raw / 100:.2f}")
        self.changed.emit(raw / 100.0)


class DisplayControls(QFrame):
    """Overlay on/off, opacity, verdict threshold and the colour legend."""

    overlayToggled = Signal(bool)
    opacityChanged = Signal(float)
    thresholdChanged = Signal(float)

    def __init__(self, *, overlay: bool = True, opacity: float = 0.45, threshold: float = 0.5,
                 uncertain_low: float = 0.40, parent: QWidget | None = None):
        super().__init__(parent, objectName="panel")
        self.uncertain_low = uncertain_low
        lay = QVBoxLayout(self)
        lay.setContentsMargins(12, 10, 12, 12)
        lay.setSpacing(8)
        lay.addWidget(QLabel("DISPLAY", objectName="sectionTitle"))
        self.overlay = QCheckBox("Heat-map overlay  (H)", checked=overlay)
        self.overlay.setFocusPolicy(Qt.ClickFocus)
        self.opacity = _Slider("Heat-map opacity", opacity)
        self.threshold = _Slider("Crack threshold", threshold, 0.05, 0.99)
        lay.addWidget(self.overlay)
        lay.addWidget(self.opacity)
        lay.addWidget(self.threshold)

        legend = QGridLayout()
        legend.setHorizontalSpacing(8)
        legend.setVerticalSpacing(4)
        self.crack_text = QLabel()
        self.uncertain_text = QLabel()
        self.clean_text = QLabel(objectName="dim")
        for row, (sw, text) in enumerate(((_swatch(theme.CRACK), self.crack_text),
                                          (_swatch(theme.UNCERTAIN, dashed=True, filled=False), self.uncertain_text),
                                          (_swatch(QColor(theme.TEXT_DIM), filled=False), self.clean_text))):
            legend.addWidget(sw, row, 0)
            legend.addWidget(text, row, 1)
        legend.setColumnStretch(1, 1)
        lay.addLayout(legend)
        bar = QVBoxLayout()
        bar.setSpacing(2)
        bar.addWidget(_colour_bar())
        ends = QHBoxLayout()
        ends.addWidget(QLabel("heat 0", objectName="dim"))
        ends.addStretch(1)
        ends.addWidget(QLabel("crack evidence", objectName="dim"))
        ends.addStretch(1)
        ends.addWidget(QLabel("1", objectName="dim"))
        bar.addLayout(ends)
        lay.addLayout(bar)

        self.overlay.toggled.connect(self.overlayToggled)
        self.overlay.toggled.connect(self.opacity.setEnabled)
        self.opacity.changed.connect(self.opacityChanged)
        self.threshold.changed.connect(self.thresholdChanged)
        self.threshold.changed.connect(self._update_legend)
        self._update_legend(self.threshold.value())

    def _update_legend(self, t: float) -> None:
        lo = min(self.uncertain_low, t)
        self.crack_text.setText(f"Crack  p ≥ {t:.2f}")
        self.uncertain_text.setText(f"Uncertain  {lo:.2f} ≤ p < {t:.2f}")
        self.clean_text.setText(f"Clean  p < {lo:.2f}  (not outlined)")


class FlagFields(QFrame):
    """Location and note for the next flags, and the manual flag button."""

    flagRequested = Signal()
    fieldsChanged = Signal(str, str)   # location, note

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, objectName="panel")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(12, 10, 12, 12)
        lay.setSpacing(8)
        lay.addWidget(QLabel("NEXT FLAGS", objectName="sectionTitle"))
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.setHorizontalSpacing(10)
        self.location = QLineEdit(placeholderText="e.g. Pier 3, north face", clearButtonEnabled=True)
        self.note = QLineEdit(placeholderText="optional", clearButtonEnabled=True)
        form.addRow("Location", self.location)
        form.addRow("Note", self.note)
        lay.addLayout(form)
        self.flag = QPushButton("⚑  Flag this frame   [Space]", objectName="primary")
        self.flag.setFocusPolicy(Qt.NoFocus)
        self.flag.clicked.connect(self.flagRequested)
        lay.addWidget(self.flag)
        for edit in (self.location, self.note):
            edit.textChanged.connect(self._emit_fields)
            edit.returnPressed.connect(edit.clearFocus)   # Enter: done typing, Space flags again

    def _emit_fields(self) -> None:
        self.fieldsChanged.emit(self.location.text().strip(), self.note.text().strip())
