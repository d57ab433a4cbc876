"""The inspection report: what an inspector hands to the structure's owner after a review.

:func:`build_report` reads the flags a filter selects (location, time range) from a
:class:`~inspector.store.database.FlagStore` and writes one self-contained file, HTML or PDF by the
extension. Both formats render the same content model, built once in :mod:`inspector.report.content`:

- a summary (:class:`ReportContent`): title, the time range of the flags included, counts by
  reviewed label and by location, the models that flagged them, the filter, generation time;
- one :class:`FrameSection` per frame **reviewed as crack**: the frame with its heat-map blended
  in and the tiles the inspector marked as crack outlined in red (a JPEG, at most
  :data:`IMAGE_WIDTH` px wide, so a report of hundreds of frames stays mailable), when and where
  it was taken, the note, the model, each tile's student and teacher probabilities and the
  reviewer's verdict.

A flag whose image file is gone is still listed ("image missing"): its review is what the owner
needs. An empty store or a filter that matches nothing gives a valid report that says so.

numpy + OpenCV + the flag store here; fpdf2 only when a PDF is written; never Qt.
"""
from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from inspector.fsio import write_atomic
from inspector.report.content import ReportContent, ReportError, build_content
from inspector.store.database import FlagStore, StoreError
from inspector.store.query import FlagFilter, ReviewCounts

FORMATS = (".html", ".pdf")


@dataclass(frozen=True)
class ReportSummary:
    """What :func:`build_report` wrote."""

    path: Path
    format: str                      # "html" | "pdf"
    flags: int                       # flags the filter matched
    crack_frames: int                # frames reviewed as crack, one section each
    images_missing: int              # of those, listed without a picture
    counts: ReviewCounts
    bytes: int
    seconds: float

    @property
    def empty(self) -> bool:
        return self.flags == 0

    def message(self) -> str:
        if self.empty:
            return f"nothing matched the filter: wrote an empty {self.format.upper()} report to {self.path}"
        missing = f", {self.images_missing} with the image missing" if self.images_missing else ""
        return (f"wrote {self.path}: {self.flags} flags ({self.counts.unreviewed} unreviewed), "
                f"{self.crack_frames} frames reviewed as crack{missing}; "
                f"{self.bytes / 1024:.0f} kB in {self.seconds:.1f} s")


def build_report(store: FlagStore, out_path, *, location: str | None = None, since=None, until=None,
                 title: str | None = None) -> ReportSummary:
    """Write the report of the flags in ``store`` matching ``location`` (exact) and the time range
    (``since``/``until``: ISO dates or times, or date/datetime; a date alone is that whole UTC day,
    ``until`` included) to ``out_path`` (``.html`` or ``.pdf``). Returns what was written.

    ValueError for a bad argument (extension, date); ReportError if the store or the file fails.
    """
    started = time.perf_counter()
    out = Path(out_path)
    renderer = _renderer(out)
    flt = FlagFilter(location=location, since=_iso(since, "since"), until=_iso(until, "until"))
    try:
        records = store.query(flt, sort="time", descending=False)
        content = build_content(store, records, flt, title)
    except StoreError as err:
        raise ReportError(f"cannot read the flag store: {err}") from err
    try:
        data = renderer(content)
    except FileNotFoundError as err:  # a shipped font is missing
        raise ReportError(f"cannot render the report: {err}") from err
    try:
        write_atomic(out, lambda f: f.write(data))
    except OSError as err:
        raise ReportError(f"cannot write the report {out}: {err}") from err
    return ReportSummary(out, out.suffix.lower()[1:], content.counts.total, len(content.sections),
                         content.images_missing, content.counts, len(data), time.perf_counter() - started)


def _renderer(out: Path) -> Callable[[ReportContent], bytes]:
    suffix = out.suffix.lower()
    if suffix == ".html":
        from inspector.report.html import render_html

        return lambda content: render_html(content).encode("utf-8")
    if suffix == ".pdf":
        from inspector.report.pdf import render_pdf   # fpdf2 only when a PDF is written

        return render_pdf
    raise ValueError(f"the report's file name must end in .html or .pdf (the format), got {out.name!r}")


def _iso(value, name: str) -> str | None:
    """A date/datetime as the ISO text FlagFilter takes (it validates strings itself)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    raise ValueError(f"{name} must be an ISO-8601 date or time, a date or a datetime, got {value!r}")
