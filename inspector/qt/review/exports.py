"""What the review workspace hands out of the store: the reviewed flags exported as a training data
set (:meth:`~inspector.store.database.FlagStore.export_dataset`) and the inspection report (PDF
or HTML, :func:`inspector.report.build.build_report`) of the flags the filter shows.

:class:`ReviewExports` asks where (a file dialog), runs the job on the shared runner
(:mod:`inspector.qt.jobs`), keeps the filter bar's button off meanwhile and says what came out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFileDialog, QWidget

from inspector.qt import folders, jobs
from inspector.qt.review.filters import ReviewFilterBar


class ReviewExports(QObject):
    """``ReviewExports(store, filters, say=, current_filter=, parent=)``: ``say(text, level)``
    shows a message; ``current_filter()`` is the workspace's FlagFilter (the report's location and
    dates). Signals: ``exportFinished(ExportReport)``, ``reportFinished(ReportSummary)``."""

    exportFinished = Signal(object)
    reportFinished = Signal(object)

    def __init__(self, store, filters: ReviewFilterBar, *, say: Callable[[str, str], None],
                 current_filter: Callable, parent: QWidget):
        super().__init__(parent)
        self.store, self.filters, self._say, self._filter = store, filters, say, current_filter
        self._window = parent       # the file dialogs' parent

    # ---------------------------------------------------------------- export

    def export(self, include_unreviewed: bool = False) -> None:
        folder = QFileDialog.getExistingDirectory(self._window, "Export reviewed flags to an empty folder",
                                                  str(folders.start_folder("export")))
        if folder:
            folders.remember("export", Path(folder).parent)   # next time: beside this export
            self.export_to(folder, include_unreviewed)

    def export_to(self, folder, include_unreviewed: bool = False) -> None:
        self.filters.export.setEnabled(False)
        self._say(f"Exporting flags to {folder}…", "info")
        jobs.run(self.store.export_dataset, folder, include_unreviewed=include_unreviewed,
                 on_success=self._exported, on_failure=lambda exc: self._job_failed("Export", exc))

    def _exported(self, r) -> None:
        self.filters.export.setEnabled(True)
        text = (f"Exported {r.flags} flags as {r.patches} patches to {r.out_dir}: {r.crack} crack, "
                f"{r.no_crack} no crack, {r.unlabelled} unlabelled.")
        if r.left_out:
            text += f" {r.left_out} unreviewed or unsure flags left out."
        if r.needs_tiles:
            text += (f" {len(r.needs_tiles)} crack frames need tiles: no crack tile marked yet "
                     "(their unmarked tiles are never exported as clean).")
        if r.skipped:
            text += f" {len(r.skipped)} skipped: their frame could not be read."
        self._say(text, "info")
        self.exportFinished.emit(r)

    # ---------------------------------------------------------------- report

    def report(self) -> None:
        path, chosen = QFileDialog.getSaveFileName(self._window, "Write the inspection report",
                                                   str(folders.start_folder("report") / "inspection-report.pdf"),
                                                   "PDF (*.pdf);;HTML (*.html)")
        if path:
            folders.remember("report", Path(path).parent)
            if not path.lower().endswith((".pdf", ".html")):
                path += ".html" if "html" in chosen.lower() else ".pdf"
            self.report_to(path)

    def report_to(self, path) -> None:
        flt = self._filter()
        self.filters.report.setEnabled(False)
        self._say(f"Writing the report {path}…", "info")
        jobs.run(_build_report, self.store, path, location=flt.location, since=flt.since, until=flt.until,
                 on_success=self._reported, on_failure=lambda exc: self._job_failed("Report", exc))

    def _reported(self, summary) -> None:
        self.filters.report.setEnabled(True)
        self._say(summary.message()[0].upper() + summary.message()[1:], "info")
        self.reportFinished.emit(summary)

    def _job_failed(self, what: str, exc: Exception) -> None:
        self.filters.export.setEnabled(True)
        self.filters.report.setEnabled(True)
        self._say(f"{what} failed: {exc}", "error")


def _build_report(store, path, **options):
    from inspector.report.build import build_report  # fpdf2 and the report's modules only when a report is asked for

    return build_report(store, path, **options)
