"""The update dialog's first page, **what will be used**: reviewed frames and tiles per label,
unlabelled frames, what is left out, the site-validation part, replay, the base model and an
estimated time (from an :class:`~inspector.update.plan.UpdatePlan`), what the reviewed data
still lack for a run the gate could promote, and "push when the gate passes".

The page only shows a plan; the dialog makes it (a job) and owns the buttons' actions.
"""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QFormLayout, QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from inspector.update.plan import REPLAY_RATIO, SITE_MIN_PER_CLASS, UpdatePlan, format_duration

FIELDS = (("reviewed", "Reviewed frames"), ("tiles", "Reviewed tiles"), ("unlabelled", "Unlabelled frames"),
          ("left_out", "Left out"), ("validation", "Site validation"), ("replay", "Replay"), ("base", "Base model"),
          ("estimate", "Estimated time"))


class PlanPage(QWidget):
    """The plan's fields (``fields[key]``), ``missing_label``, ``push_box`` and the buttons
    ``history_button``, ``close_button``, ``start_button`` (off until a plan allows a run)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("UPDATE MODEL", objectName="sectionTitle"))
        lay.addWidget(QLabel("Fine-tune the student on the reviewed flags, against the teachers, then check it "
                             "against the current model before it goes live.", objectName="dim", wordWrap=True))
        box = QFrame(objectName="panel")
        self.form = QFormLayout(box)
        self.form.setContentsMargins(14, 12, 14, 12)
        self.form.setVerticalSpacing(8)
        self.fields = {}
        for key, caption in FIELDS:
            value = QLabel("…", objectName="value", wordWrap=True)
            value.setTextInteractionFlags(Qt.TextSelectableByMouse)
            self.fields[key] = value
            self.form.addRow(QLabel(caption, objectName="dim"), value)
        lay.addWidget(box)
        # what the reviewed data lack for a run the gate could promote (the job's own split rule)
        self.missing_label = QLabel("", objectName="error", wordWrap=True, visible=False)
        self.missing_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.missing_label)
        # not a reason to refuse a run, a reason to expect the gate to refuse it
        self.caution_label = QLabel("", objectName="warning", wordWrap=True, visible=False)
        self.caution_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.caution_label)
        self.push_box = QCheckBox("Push when the gate passes", checked=True)
        lay.addWidget(self.push_box)
        lay.addStretch(1)
        buttons = QHBoxLayout()
        self.history_button = QPushButton("Model history…")
        self.start_button = QPushButton("Start update", objectName="primary", enabled=False)
        self.close_button = QPushButton("Close")
        # Enter starts the update (once it can start), never opens the history or closes
        self.start_button.setDefault(True)
        for b in (self.history_button, self.close_button):
            b.setAutoDefault(False)
        buttons.addWidget(self.history_button)
        buttons.addStretch(1)
        buttons.addWidget(self.close_button)
        buttons.addWidget(self.start_button)
        lay.addLayout(buttons)

    def clear(self) -> None:
        """A plan is being made: every field "…", Start off."""
        self.start_button.setEnabled(False)
        for v in self.fields.values():
            v.setText("…")

    def show_plan(self, plan: UpdatePlan) -> None:
        """Fill the fields from ``plan``; Start is on only if the gate could promote its candidate."""
        r, p = plan.review, plan.patches
        f = self.fields
        f["reviewed"].setText(f"{r.crack} crack, {r.no_crack} no crack  ({p['frames']} frames exported)"
                              + (f"; {r.contradicted} whose label the teachers confidently contradict: worth a "
                                 f"second look first (Review: \"Teachers disagree with the label\")"
                                 if r.contradicted else ""))
        f["tiles"].setText(f"{p['crack']} crack, {p['no_crack']} no crack  ({plan.labelled_tiles} tiles)")
        f["unlabelled"].setText(f"{r.unreviewed} unreviewed + {r.unsure} unsure  ({p['unlabelled']} tiles, "
                                f"labelled by the teachers)")
        f["left_out"].setText(f"{p['needs_tiles']} crack frames without tile labels" if p["needs_tiles"] else "none")
        job = plan.job
        f["replay"].setText("—" if job is None else
                            f"{job.replay_teachers} base patches for the teachers, {job.replay_student} for the "
                            f"student ({REPLAY_RATIO:g} per training tile: {job.adapt} reviewed tiles not held "
                            f"out + {job.unlabelled} unlabelled)")
        b = plan.base
        f["base"].setText(f"{b.label} — {'running on ' + b.where if b.where != 'this laptop' else 'this laptop'}"
                          + (f"\n{b.note}" if b.note else ""))
        f["estimate"].setText(f"≈ {format_duration(plan.estimate_s)}  ({plan.estimate_basis}; the live view slows "
                              f"down meanwhile to leave the cores to the update)")
        target = f"to {plan.device}" if plan.device else "into this laptop's live view"
        self.push_box.setText(f"Push when the gate passes ({target})")
        sp = plan.split
        f["validation"].setText("—" if sp is None else
                                f"{sp.val_crack} crack, {sp.val_clean} clean tiles from {len(sp.val)} frames held out "
                                f"to judge the candidate (at least {SITE_MIN_PER_CLASS} of each)")
        held = plan.base_held_out
        if held is not None and sp is not None:
            f["validation"].setText(f["validation"].text() + f"; the base scores MCC {held[0]:.3f} on them "
                                    f"(its verdicts when it flagged them)")
        self.caution_label.setText(
            f"The base already scores MCC {held[0]:.3f} on the {held[1]} held-out reviewed tiles: the gate "
            f"promotes a candidate only if it does better there, so this update will likely be refused. Review "
            f"frames the model gets wrong first (the review's order \"most in need\")." if plan.base_already_high
            else "")
        self.caution_label.setVisible(plan.base_already_high)
        missing = plan.missing
        self.missing_label.setText("Start is off until the reviewed data can show a gain, because the gate could "
                                   "not promote any candidate: " + "; ".join(missing) if missing else "")
        self.missing_label.setVisible(bool(missing))
        ok = plan.labelled_tiles > 0 and b.path is not None and not missing
        self.start_button.setEnabled(ok)
        self.start_button.setToolTip("; ".join(missing))
