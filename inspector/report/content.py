"""The inspection report's content, built once from the flag store and rendered by both formats
(:mod:`inspector.report.html`, :mod:`inspector.report.pdf`): the summary (:class:`ReportContent`)
and one :class:`FrameSection` per frame reviewed as crack, with its JPEG picture.

numpy + OpenCV + the flag store; never Qt, never fpdf2.
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np

from inspector.edge.engine import overlay
from inspector.store.database import FlagStore, StoreError
from inspector.store.query import DISAGREEMENT_COUNTED, FlagFilter, ReviewCounts
from inspector.store.schema import FlagRecord
from inspector.errors import InspectorError

log = logging.getLogger(__name__)

DEFAULT_TITLE = "Crack inspection report"
IMAGE_WIDTH = 640           # px; frames wider than this are shrunk (the shipped camera gives 640)
JPEG_QUALITY = 82           # a 640×480 blended frame: ~60 kB, no visible blocking on the heat colours
HEAT_ALPHA = 0.45           # the live view's default opacity, a little stronger for print
CRACK_RGB = (220, 30, 30)   # the crack-tile outline, as in the live view
NO_LOCATION = "(no location)"
GRID_MAX_COLUMNS = 8        # wider tilings are listed, not drawn as a grid (cells would be unreadable)


class ReportError(InspectorError, RuntimeError):
    """The report cannot be written (the store failed, the file cannot be written)."""


@dataclass(frozen=True)
class TileRow:
    index: int
    box: tuple[int, int, int, int]
    student: float                   # the student's crack probability
    teacher: float | None            # the teacher ensemble's, None if not scored
    label: str | None                # the reviewed tile label, None if not reviewed


@dataclass(frozen=True)
class FrameSection:
    """One frame reviewed as crack, everything the report shows of it."""

    flag_id: int
    uid: str
    created_utc: str                 # "2026-11-21 13:03:12 UTC"
    created_local: str               # "2026-11-21 14:03:12 CET"
    location: str | None
    note: str | None
    source: str
    model: str                       # "crack-student 1.1.0"
    teacher_model: str | None
    reviewer: str | None
    reviewed_at: str | None          # UTC, as created_utc
    verdict: str                     # the frame's reviewed label
    image_jpeg: bytes | None         # None: the image could not be read
    image_size: tuple[int, int]      # (width, height) of image_jpeg, else of the frame
    image_problem: str | None        # why there is no picture (or no heat-map), for the reader
    tiles: tuple[TileRow, ...]
    grid: tuple[tuple[int | None, ...], ...] | None  # tile indices by row/column, None if not a grid

    @property
    def crack_tiles(self) -> int:
        return sum(t.label == "crack" for t in self.tiles)

    @property
    def tiles_reviewed(self) -> bool:
        return any(t.label is not None for t in self.tiles)

    @property
    def grid_fits(self) -> bool:
        """Whether the tiles are shown as a grid laid out like the frame (else as a list)."""
        return self.grid is not None and len(self.grid[0]) <= GRID_MAX_COLUMNS

    def details(self) -> list[tuple[str, str]]:
        """The section's facts as (label, text), in the order both formats print them."""
        tiles = f"{self.crack_tiles} of {len(self.tiles)} tiles crack" if self.tiles_reviewed else "tiles not labelled"
        return [("Time", both_times(self.created_local, self.created_utc)), ("Location", self.location or "—"),
                ("Note", self.note or "—"), ("Source", self.source), ("Model", self.model),
                ("Teachers", self.teacher_model or "not scored"),
                ("Verdict", f"{self.verdict}: {tiles}"),
                ("Reviewer", self.reviewer or "—"), ("Reviewed", self.reviewed_at or "—")]


@dataclass(frozen=True)
class LocationRow:
    location: str
    total: int
    crack: int
    no_crack: int
    unsure: int
    unreviewed: int


@dataclass(frozen=True)
class ReportContent:
    """The whole report, format-free: the summary, then the sections."""

    title: str
    generated_utc: str
    generated_local: str
    filter_text: str
    first_flag: str | None           # time range of the flags included (UTC), None if none
    last_flag: str | None
    counts: ReviewCounts
    locations: tuple[LocationRow, ...]
    students: tuple[tuple[str, int], ...]   # ("crack-student 1.1.0", flags) by model
    teachers: tuple[tuple[str, int], ...]   # ("teachers 1.0.0 (sha 1a2b3c4d)", flags scored)
    sections: tuple[FrameSection, ...]

    @property
    def empty(self) -> bool:
        return self.counts.total == 0

    @property
    def images_missing(self) -> int:
        return sum(s.image_jpeg is None for s in self.sections)

    def facts(self) -> list[tuple[str, str]]:
        """The summary's facts as (label, text), in the order both formats print them."""
        period = f"{self.first_flag} – {self.last_flag}" if self.first_flag else "—"
        return [("Flags included", period), ("Filter", self.filter_text),
                ("Student model", _models_text(self.students) or "—"),
                ("Teacher ensemble", _models_text(self.teachers) or "not scored"),
                ("Generated", both_times(self.generated_local, self.generated_utc))]

    def review_table(self) -> tuple[tuple[str, ...], list[tuple]]:
        n = self.counts
        return (("Flags", "Crack", "No crack", "Unsure", "Unreviewed", "Teacher disagreements"),
                [(n.total, n.crack, n.no_crack, n.unsure, n.unreviewed, n.disagreements)])

    def location_table(self) -> tuple[tuple[str, ...], list[tuple]]:
        return (("Location", "Flags", "Crack", "No crack", "Unsure", "Unreviewed"),
                [(r.location, r.total, r.crack, r.no_crack, r.unsure, r.unreviewed) for r in self.locations])


NOTHING_MATCHED = "No flags match this report's filter ({filter}): nothing to report."
NO_CRACK_FRAMES = "No frame in this selection was reviewed as crack."
TILE_LEGEND = ("Per tile: S = student crack probability, T = teacher ensemble (— not scored); "
               "red: tiles reviewed as crack.")


def fmt_prob(p: float | None) -> str:
    return "—" if p is None else f"{p:.2f}"


def tile_list(s: FrameSection) -> tuple[tuple[str, ...], list[tuple]]:
    """The tiles as a table, for frames whose tiles do not fit a grid."""
    return (("Tile", "Box (x0, y0, x1, y1)", "Student", "Teacher", "Reviewed"),
            [(f"#{t.index + 1}", ", ".join(map(str, t.box)), fmt_prob(t.student), fmt_prob(t.teacher),
              t.label or "—") for t in s.tiles])


def _models_text(models) -> str:
    return "; ".join(f"{name} — {n} flag{'s' if n != 1 else ''}" for name, n in models)


# --------------------------------------------------------------------------- the content model


def build_content(store: FlagStore, records: list[FlagRecord], flt: FlagFilter,
                  title: str | None = None, *, now: _dt.datetime | None = None) -> ReportContent:
    """The report of ``records`` (what ``flt`` selected, oldest first), images read from ``store``."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    local, utc = _times(now)
    created = sorted(r.created for r in records)
    return ReportContent(
        title=title or _default_title(flt), generated_utc=utc, generated_local=local,
        filter_text=describe_filter(flt),
        first_flag=_times(_parse(created[0]))[1] if created else None,
        last_flag=_times(_parse(created[-1]))[1] if created else None,
        counts=count_reviews(records), locations=_by_location(records),
        students=_tally(f"{r.model.name} {r.model.version}" for r in records),
        teachers=_tally(_teacher_name(r.teacher_model) for r in records if r.teacher_model),
        sections=tuple(frame_section(store, r) for r in records if r.label == "crack"))


def count_reviews(records: list[FlagRecord]) -> ReviewCounts:
    labels = Counter(r.label for r in records)
    return ReviewCounts(total=len(records), unreviewed=labels[None], crack=labels["crack"],
                        no_crack=labels["no_crack"], unsure=labels["unsure"],
                        disagreements=sum(r.disagreement is not None and r.disagreement >= DISAGREEMENT_COUNTED
                                          for r in records),
                        needs_tiles=sum(r.needs_tiles for r in records),
                        contradicted=sum(r.contradicted for r in records))


def describe_filter(flt: FlagFilter) -> str:
    parts = []
    if flt.location is not None:
        parts.append(f"location = {flt.location}")
    if flt.since is not None:
        parts.append(f"from {flt.since}")
    if flt.until is not None:
        parts.append(f"until {flt.until}" + (" (included)" if len(flt.until) == 10 else ""))
    return "; ".join(parts) if parts else "all flags"


def frame_section(store: FlagStore, rec: FlagRecord) -> FrameSection:
    tiles = _tile_rows(rec)
    image, size, problem = _picture(store, rec, tiles)
    local, utc = _times(_parse(rec.created))
    return FrameSection(
        flag_id=rec.id, uid=rec.uid, created_utc=utc, created_local=local, location=rec.location,
        note=rec.note, source=rec.source, model=f"{rec.model.name} {rec.model.version}",
        teacher_model=_teacher_name(rec.teacher_model) if rec.teacher_model else None,
        reviewer=rec.reviewer, reviewed_at=_times(_parse(rec.reviewed_at))[1] if rec.reviewed_at else None,
        verdict=rec.label or "", image_jpeg=image, image_size=size, image_problem=problem,
        tiles=tiles, grid=tile_grid(t.box for t in tiles))


def _tile_rows(rec: FlagRecord) -> tuple[TileRow, ...]:
    teacher = rec.teacher_probs or ()
    labels = rec.tile_labels or ()
    return tuple(TileRow(i, tuple(int(v) for v in t["box"]), float(t["crack_prob"]),
                         float(teacher[i]) if i < len(teacher) else None,
                         labels[i] if i < len(labels) else None)
                 for i, t in enumerate(rec.tiles))


def tile_grid(boxes) -> tuple[tuple[int | None, ...], ...] | None:
    """Tile indices laid out as in the frame (rows by top edge, columns by left edge), or None
    when two tiles would share a cell (not a grid: the renderers list the tiles instead)."""
    boxes = list(boxes)
    rows = sorted({b[1] for b in boxes})
    cols = sorted({b[0] for b in boxes})
    grid: list[list[int | None]] = [[None] * len(cols) for _ in rows]
    for i, (x0, y0, *_rest) in enumerate(boxes):
        r, c = rows.index(y0), cols.index(x0)
        if grid[r][c] is not None:
            return None
        grid[r][c] = i
    return tuple(tuple(row) for row in grid) if boxes else None


def _picture(store: FlagStore, rec: FlagRecord, tiles) -> tuple[bytes | None, tuple[int, int], str | None]:
    """The frame with its heat-map and the reviewed crack tiles, as a JPEG; a missing frame is
    (None, frame size, why); a missing heat-map gives the bare frame and says so."""
    try:
        frame = store.load_frame(rec)
    except StoreError as err:
        log.warning("report: flag %s listed without its image: %s", rec.uid, err)
        return None, (rec.width, rec.height), "image missing"
    problem = None
    try:
        frame = overlay(frame, store.load_heatmap(rec), HEAT_ALPHA)
    except (StoreError, ValueError) as err:
        log.warning("report: flag %s shown without its heat-map: %s", rec.uid, err)
        problem = "heat-map missing: the frame alone"
    return (*_encode(frame, [t.box for t in tiles if t.label == "crack"]), problem)


def _encode(frame_rgb: np.ndarray, crack_boxes) -> tuple[bytes, tuple[int, int]]:
    h, w = frame_rgb.shape[:2]
    scale = min(1.0, IMAGE_WIDTH / w)
    img = frame_rgb if scale == 1.0 else cv2.resize(frame_rgb, (round(w * scale), round(h * scale)),
                                                    interpolation=cv2.INTER_AREA)
    img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    bgr = CRACK_RGB[::-1]
    line = max(2, round(img.shape[1] / 320))
    for x0, y0, x1, y1 in crack_boxes:
        # inset by half the line, so an outline on the frame border is not cut in half
        p0 = (round(x0 * scale) + line // 2, round(y0 * scale) + line // 2)
        p1 = (round(x1 * scale) - 1 - line // 2, round(y1 * scale) - 1 - line // 2)
        cv2.rectangle(img, p0, p1, bgr, line)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ReportError("OpenCV could not encode a report image as JPEG")
    return buf.tobytes(), (img.shape[1], img.shape[0])


def _by_location(records: list[FlagRecord]) -> tuple[LocationRow, ...]:
    groups: dict[str, Counter] = {}
    for r in records:
        groups.setdefault(r.location or NO_LOCATION, Counter())[r.label] += 1
    return tuple(LocationRow(loc, sum(c.values()), c["crack"], c["no_crack"], c["unsure"], c[None])
                 for loc, c in sorted(groups.items(), key=lambda kv: (kv[0] == NO_LOCATION, kv[0].lower())))


def _tally(names) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(Counter(names).items(), key=lambda kv: (-kv[1], kv[0])))


def _teacher_name(teacher_model: str) -> str:
    """ "name version sha256" -> "name version (sha 1a2b3c4d)"; anything else as it is."""
    parts = teacher_model.split()
    if len(parts) == 3 and len(parts[2]) >= 8:
        return f"{parts[0]} {parts[1]} (sha {parts[2][:8]})"
    return teacher_model


def _default_title(flt: FlagFilter) -> str:
    return f"{DEFAULT_TITLE}: {flt.location}" if flt.location else DEFAULT_TITLE


def _parse(iso: str) -> _dt.datetime:
    when = _dt.datetime.fromisoformat(iso)
    return when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)


def _times(when: _dt.datetime) -> tuple[str, str]:
    """(local, UTC) as the report prints them; local is this computer's time zone."""
    local = when.astimezone()
    utc = when.astimezone(_dt.timezone.utc)
    return (f"{local:%Y-%m-%d %H:%M:%S} {local.tzname() or local.strftime('%z')}".rstrip(),
            f"{utc:%Y-%m-%d %H:%M:%S} UTC")


def both_times(local: str, utc: str) -> str:
    """ "local", then "(UTC)" on a line of its own; the UTC time alone where this computer's time is
    UTC. (HTML shows the line break as a space; the PDF's narrow columns keep each time whole.)"""
    return utc if local == utc else f"{local}\n({utc})"
