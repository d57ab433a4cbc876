"""Live curves of an update: training loss and site-validation MCC per epoch, one line per model
(the student, each adapted teacher). pyqtgraph (pure Python on numpy; QtCharts is not in
pyside6-essentials), imported here only, when the update dialog is first opened."""
from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from inspector.qt import theme

STUDENT_PEN = theme.ACCENT
TEACHER_PENS = ("#c792ea", "#ffb300", "#7fd1b9", "#f78c6c")


class TrainingCurves(QWidget):
    """``set_curves({model: [(epoch, loss, val_mcc or None)]})`` redraws both plots."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        pg.setConfigOptions(antialias=True)
        self.view = pg.GraphicsLayoutWidget()
        self.view.setBackground(theme.PANEL)
        self.loss = self._plot("Training loss", 0)
        self.mcc = self._plot("Validation MCC (site)", 1)
        self.mcc.setYRange(0, 1, padding=0.02)
        self.legend = QLabel("", objectName="dim")     # above the plots: a legend inside hides the lines
        self.legend.setContentsMargins(8, 2, 8, 2)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.legend)
        lay.addWidget(self.view, 1)
        self._lines: dict[tuple[str, str], pg.PlotDataItem] = {}
        self.points = 0

    def _plot(self, title: str, col: int) -> pg.PlotItem:
        plot = self.view.addPlot(row=0, col=col, title=f"<span style='color:{theme.TEXT_DIM}'>{title}</span>")
        plot.showGrid(x=True, y=True, alpha=0.15)
        plot.setLabel("bottom", "epoch")
        plot.getAxis("bottom").setTickSpacing(1, 1)      # epochs are whole numbers
        plot.setMouseEnabled(x=False, y=False)
        plot.hideButtons()
        for axis in ("left", "bottom"):
            plot.getAxis(axis).setTextPen(theme.TEXT_DIM)
            plot.getAxis(axis).setPen(theme.PANEL_EDGE)
        return plot

    def clear(self) -> None:
        self.loss.clear()
        self.mcc.clear()
        self._lines.clear()
        self.legend.setText("")
        self.points = 0

    def set_curves(self, curves: dict[str, list[tuple[int, float, float | None]]]) -> None:
        teachers = [m for m in curves if m != "student"]
        self.points = 0
        keys = []
        for model, points in curves.items():
            pen = STUDENT_PEN if model == "student" else TEACHER_PENS[teachers.index(model) % len(TEACHER_PENS)]
            width = 2.5 if model == "student" else 1.5
            epochs = [p[0] for p in points]
            self._line(self.loss, model, pen, width).setData(epochs, [p[1] for p in points])
            with_mcc = [(p[0], p[2]) for p in points if p[2] is not None]
            self._line(self.mcc, model, pen, width).setData([e for e, _ in with_mcc], [v for _, v in with_mcc])
            self.points += len(points)
            keys.append(f"<span style='color:{pen}'>━●</span> {model.replace('teacher:', 'teacher ')}")
        self.legend.setText("&nbsp;&nbsp;&nbsp;&nbsp;".join(keys))

    def _line(self, plot: pg.PlotItem, model: str, pen: str, width: float) -> pg.PlotDataItem:
        key = (plot.titleLabel.text, model)
        line = self._lines.get(key)
        if line is None:
            name = model.replace("teacher:", "teacher ")
            line = plot.plot([], [], pen=pg.mkPen(pen, width=width), symbol="o", symbolSize=6,
                             symbolBrush=pen, symbolPen=pen, name=name)
            line.setZValue(10 if model == "student" else 0)
            self._lines[key] = line
        return line
