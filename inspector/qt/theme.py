"""Colours, fonts and the style sheet: one dark, neutral theme for the whole window.

Verdict colours are chosen to read on concrete (grey) and under the TURBO heat-map: red for a
crack, amber for "not sure", both with a dark outline so they stay visible on bright walls.
"""
from __future__ import annotations

from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

BG = "#17191c"          # window
PANEL = "#1f2226"       # side panels, HUD
PANEL_EDGE = "#2c3035"
VIEW_BG = "#0e0f11"     # around the camera frame
TEXT = "#e6e8eb"
TEXT_DIM = "#9aa1a9"
ACCENT = "#4c9aff"      # focus, selection, primary buttons

CRACK = QColor(255, 59, 48)        # tile ≥ threshold
UNCERTAIN = QColor(255, 179, 0)    # tile in the uncertain band
CLEAN = QColor(120, 200, 140)      # legend only: clean tiles are not drawn

REASON_COLOURS = {"crack": CRACK, "uncertain": UNCERTAIN, "manual": QColor(ACCENT)}

BANNER = {  # level -> (background, border, text)
    "info": ("#1d2b3a", "#2f5d8a", "#d6e6f7"),
    "warning": ("#3a2e12", "#8a6a1f", "#ffe2a8"),
    "error": ("#3a1717", "#8a2f2f", "#ffd0d0"),
}

STYLE = f"""
QWidget {{ color: {TEXT}; font-size: 10pt; }}
QMainWindow, QDialog {{ background: {BG}; }}
QFrame#panel {{ background: {PANEL}; border: 1px solid {PANEL_EDGE}; border-radius: 6px; }}
QLabel#sectionTitle {{ color: {TEXT_DIM}; font-size: 8pt; font-weight: 600; letter-spacing: 1px; }}
QLabel#dim {{ color: {TEXT_DIM}; }}
QLabel#value {{ font-weight: 600; }}
QLabel#error {{ color: #ff8a80; }}
QLabel#warning {{ color: #ffd27a; }}
QPushButton {{ background: #2a2e34; border: 1px solid #3a3f46; border-radius: 4px; padding: 5px 10px; }}
QPushButton:hover {{ background: #323740; }}
QPushButton:pressed {{ background: #25292e; }}
QPushButton#primary {{ background: #1f4f8f; border-color: {ACCENT}; font-weight: 600; }}
QPushButton#primary:hover {{ background: #255ca6; }}
QPushButton:disabled {{ color: #666c73; }}
QLineEdit, QComboBox {{ background: #121416; border: 1px solid #3a3f46; border-radius: 4px; padding: 4px 6px;
    selection-background-color: {ACCENT}; }}
QLineEdit:focus, QComboBox:focus {{ border-color: {ACCENT}; }}
QComboBox QAbstractItemView {{ background: #121416; selection-background-color: #1f4f8f; }}
QCheckBox {{ spacing: 6px; }}
QSlider::groove:horizontal {{ height: 4px; background: #3a3f46; border-radius: 2px; }}
QSlider::sub-page:horizontal {{ background: {ACCENT}; border-radius: 2px; }}
QSlider::handle:horizontal {{ background: {TEXT}; width: 12px; margin: -5px 0; border-radius: 6px; }}
QListWidget {{ background: #121416; border: 1px solid {PANEL_EDGE}; border-radius: 4px; }}
QListWidget::item {{ padding: 3px; border-bottom: 1px solid #202327; }}
QListWidget::item:selected {{ background: #1f3350; }}
QScrollBar:vertical {{ background: transparent; width: 8px; }}
QScrollBar::handle:vertical {{ background: #3a3f46; border-radius: 4px; min-height: 24px; }}
QScrollBar::add-line, QScrollBar::sub-line {{ height: 0; }}
QToolTip {{ background: {PANEL}; color: {TEXT}; border: 1px solid {PANEL_EDGE}; }}
"""


def apply(app: QApplication) -> None:
    """Dark palette + style sheet on the whole application."""
    app.setStyle("Fusion")
    pal = QPalette()
    for role, colour in ((QPalette.Window, BG), (QPalette.Base, "#121416"), (QPalette.AlternateBase, PANEL),
                         (QPalette.Text, TEXT), (QPalette.WindowText, TEXT), (QPalette.ButtonText, TEXT),
                         (QPalette.Button, "#2a2e34"), (QPalette.Highlight, ACCENT),
                         (QPalette.HighlightedText, "#ffffff"), (QPalette.ToolTipBase, PANEL),
                         (QPalette.ToolTipText, TEXT), (QPalette.PlaceholderText, "#6b7178")):
        pal.setColor(role, QColor(colour))
    app.setPalette(pal)
    font = QFont("DejaVu Sans")
    font.setStyleHint(QFont.SansSerif)
    font.setPointSize(10)
    app.setFont(font)
    app.setStyleSheet(STYLE)


def mono_font(point_size: int = 10, bold: bool = False) -> QFont:
    """Tabular figures for numbers that change every frame (no jitter in the HUD)."""
    f = QFont("DejaVu Sans Mono")
    f.setStyleHint(QFont.Monospace)
    f.setPointSize(point_size)
    f.setBold(bold)
    return f
