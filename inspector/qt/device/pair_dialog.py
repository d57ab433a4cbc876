"""The pairing dialog: the device's certificate fingerprint shown for comparison (and checked
against the one it advertises on the network), and the pairing code the device shows.
"""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QRegularExpressionValidator
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit, QVBoxLayout, QWidget

from inspector.link import protocol as P
from inspector.link.connection import format_fingerprint


class PairDialog(QDialog):
    """Shows the device's certificate fingerprint for comparison and asks for the pairing code."""

    def __init__(self, address: str, fingerprint: str | None, parent: QWidget | None = None, *,
                 advertised: str | None = None):
        super().__init__(parent)
        self.setWindowTitle(f"Pair with {address}")
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel(f"Pair with the device at <b>{address}</b>.", wordWrap=True))
        if fingerprint:
            lay.addWidget(QLabel("Check that the device shows this certificate fingerprint "
                                 "(its console or log, line “AGENT READY … cert_sha256=…”):", wordWrap=True))
        else:
            lay.addWidget(QLabel("⚠ This device uses plain HTTP: the link is not encrypted and its identity "
                                 "cannot be checked. Use only for tests.", objectName="error", wordWrap=True))
        self.fingerprint = QLabel(format_fingerprint(fingerprint), objectName="value", wordWrap=True)
        self.fingerprint.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.fingerprint)
        if fingerprint and advertised:
            # mDNS can be spoofed as easily as anything else on the LAN: a hint, not a proof
            if fingerprint.startswith(advertised.lower()):
                lay.addWidget(QLabel("✓ It also matches the start of the fingerprint the device advertises on the "
                                     "network.", objectName="dim", wordWrap=True))
            else:
                lay.addWidget(QLabel(f"⚠ It does NOT match the fingerprint advertised on the network "
                                     f"({advertised}…): check the device before pairing.", objectName="error",
                                     wordWrap=True))
        form = QFormLayout()
        self.code = QLineEdit(placeholderText="6 digits")
        self.code.setValidator(QRegularExpressionValidator(rf"^[0-9]{{{P.PAIRING_CODE_DIGITS}}}$"))
        form.addRow("Pairing code shown by the device", self.code)
        lay.addLayout(form)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.buttons.button(QDialogButtonBox.Ok).setText("Pair")
        self.buttons.button(QDialogButtonBox.Ok).setEnabled(False)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self.code.textChanged.connect(
            lambda t: self.buttons.button(QDialogButtonBox.Ok).setEnabled(len(t) == P.PAIRING_CODE_DIGITS))
        lay.addWidget(self.buttons)
