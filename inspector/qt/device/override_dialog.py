"""The expert override of a refused gate, as a dialog: which rules failed, a reason (required),
who decides (required, the login name to start with) and an explicit confirmation.

The one dialog for both ways a refused candidate can reach a device: **Push model…** in the
device panel and **Push anyway…** after an update. What it records is written by
:func:`inspector.update.history.override_package` (into the package's signed lineage and the
model history).
"""
from __future__ import annotations


from PySide6.QtWidgets import QCheckBox, QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit, QVBoxLayout, QWidget

from inspector.qt.startup import user_name
from inspector.update.history import MIN_OVERRIDE_REASON


class ExpertOverrideDialog(QDialog):
    """``ExpertOverrideDialog(failed_rules, package_label)``: after ``accepted``, :meth:`values`
    is ``(reason, by)``."""

    def __init__(self, failed_rules: list[str], package_label: str = "the candidate",
                 parent: QWidget | None = None, *, by: str | None = None):
        super().__init__(parent)
        self.setWindowTitle("Push a model that failed the gate")
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel(f"The gate refused {package_label}: its lineage says it was not promoted. "
                             f"Failed rules:", wordWrap=True))
        lay.addWidget(QLabel("\n".join(f"✗ {r}" for r in failed_rules) or "(none listed)", objectName="error",
                             wordWrap=True))
        lay.addWidget(QLabel("Pushing it anyway is an expert decision: your name, this reason and the time are "
                             "written into the package's signed lineage (the device lists them) and into the "
                             "model history.", objectName="dim", wordWrap=True))
        form = QFormLayout()
        self.reason = QLineEdit(placeholderText=f"Why (at least {MIN_OVERRIDE_REASON} characters)")
        self.by = QLineEdit((user_name() or "") if by is None else by, placeholderText="Your name")
        form.addRow("Reason", self.reason)
        form.addRow("Decided by", self.by)
        lay.addLayout(form)
        self.confirm = QCheckBox("I checked the candidate and take responsibility for pushing it")
        lay.addWidget(self.confirm)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.ok = self.buttons.button(QDialogButtonBox.Ok)
        self.ok.setText("Push anyway")
        self.ok.setEnabled(False)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        lay.addWidget(self.buttons)
        for w in (self.reason, self.by):
            w.textChanged.connect(self._check)
        self.confirm.toggled.connect(self._check)

    def values(self) -> tuple[str, str]:
        return self.reason.text().strip(), self.by.text().strip()

    def _check(self, *_) -> None:
        reason, by = self.values()
        self.ok.setEnabled(len(reason) >= MIN_OVERRIDE_REASON and bool(by) and self.confirm.isChecked())
