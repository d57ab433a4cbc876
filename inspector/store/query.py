"""What the review view asks of the flag store, as SQL: filters, sort orders and counts.

Every query reads the ``flags`` table only (no image is opened) and filters and sorts on
indexed columns (``store_schema`` v3), so a store of 10,000 flags answers in milliseconds
(``benchmarks/review_bench.py``). Values are always bound as parameters; column names come
from the fixed tables below, never from the caller.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, fields

from inspector.store.schema import CONTRADICTION_CLEAN_P, CONTRADICTION_CRACK_P, REASONS, REVIEW_LABELS

# name -> the ORDER BY expression for "descending" (ascending reverses it). "need" is "most in need
# of review first": disagreement with the teachers, then the student's uncertainty; flags not yet
# scored by the teachers rank by uncertainty after those that are.
# Each order is exactly the one of an index in store_schema.SORT_INDEXES (so no sort is needed).
SORTS = {
    "time": "created {d}, id {d}",
    "probability": "crack_prob_max {d}, id {d}",
    "uncertainty": "uncertainty {d}, id {d}",
    "disagreement": "disagreement IS NULL {a}, disagreement {d}, uncertainty {d}, id {d}",
    "need": "disagreement IS NULL {a}, disagreement {d}, uncertainty {d}, id {d}",
}
# A disagreement at least this large is counted (and badged) as "a disagreement": the teachers
# and the student put the tile on different sides of 0.5 with some margin.
DISAGREEMENT_COUNTED = 0.5
STATES = ("all", "unreviewed", "reviewed", "needs_tiles", "contradicted")
# "needs tiles": a frame a person called crack (C) without a tile a person called crack; the view
# asks for its crack tiles. Tile labels are stored only where a person set them (store_schema v4),
# so any '"crack"' in the JSON list is a person's. Reads tile_labels, which no sort index covers:
# the row is read only for the crack frames ("label = 'crack'" is checked first).
NEEDS_TILES = "(label = 'crack' AND instr(coalesce(tile_labels, ''), '\"crack\"') = 0)"
# "contradicted": FlagRecord.contradicted in SQL, a person's label the teacher ensemble confidently
# says the opposite of on some tile. Worth a second look before it trains a model.
CONTRADICTED = (
    f"(teacher_probs IS NOT NULL AND ("
    f"(label = 'no_crack' AND EXISTS (SELECT 1 FROM json_each(teacher_probs) t "
    f"WHERE t.value >= {CONTRADICTION_CRACK_P!r})) "
    f"OR (label = 'crack' AND tile_labels IS NOT NULL AND EXISTS (SELECT 1 FROM json_each(tile_labels) l "
    f"JOIN json_each(teacher_probs) t ON t.key = l.key WHERE (l.value = 'crack' AND t.value <= "
    f"{CONTRADICTION_CLEAN_P!r}) OR (l.value = 'no_crack' AND t.value >= {CONTRADICTION_CRACK_P!r})))))")


@dataclass(frozen=True)
class FlagFilter:
    """Which flags to show; every field left as None (or "all") does not filter.

    ``state``: ``all``, ``unreviewed``, ``reviewed``, ``needs_tiles`` (reviewed crack frames
    still waiting for their crack tiles, see :data:`NEEDS_TILES`) or ``contradicted`` (labels the
    teachers confidently contradict, see :data:`CONTRADICTED`); ``label`` is a reviewed frame label (``crack``/``no_crack``/``unsure``); ``since``/``until``
    are ISO-8601 times or dates (a date alone means that whole day, UTC); ``prob_min``/``prob_max``
    bound the student's max tile probability; ``text`` finds a substring in location or note.
    """

    state: str = "all"
    label: str | None = None
    reason: str | None = None
    source: str | None = None
    location: str | None = None
    model_version: str | None = None
    since: str | None = None
    until: str | None = None
    prob_min: float | None = None
    prob_max: float | None = None
    disagreement_min: float | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state must be one of {list(STATES)}, got {self.state!r}")
        if self.label is not None and self.label not in REVIEW_LABELS:
            raise ValueError(f"label must be one of {list(REVIEW_LABELS)}, got {self.label!r}")
        if self.reason is not None and self.reason not in REASONS:
            raise ValueError(f"reason must be one of {list(REASONS)}, got {self.reason!r}")
        for name in ("prob_min", "prob_max", "disagreement_min"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1):
                raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
        for name in ("since", "until"):
            if getattr(self, name) is not None:
                _time_bound(name, getattr(self, name), end=name == "until")

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) not in (None, "all") for f in fields(self))

    def where(self) -> tuple[str, list]:
        """``(" WHERE ...", params)`` for this filter; deleted flags are never listed."""
        clauses, params = ["deleted_at IS NULL"], []
        if self.state == "unreviewed":
            clauses.append("label IS NULL")
        elif self.state == "reviewed":
            clauses.append("label IS NOT NULL")
        elif self.state == "needs_tiles":
            clauses.append(NEEDS_TILES)
        elif self.state == "contradicted":
            clauses.append(CONTRADICTED)
        for column in ("label", "reason", "source", "location", "model_version"):
            value = getattr(self, column)
            if value is not None:
                # "+column": SQLite then reads the column from the sort order's covering index
                # instead of jumping through a one-column index and sorting (30 -> 9 ms at 10k)
                clauses.append(f"+{column} = ?")
                params.append(value)
        if self.since is not None:
            clauses.append("created >= ?")
            params.append(_time_bound("since", self.since, end=False))
        if self.until is not None:
            clauses.append("created < ?")
            params.append(_time_bound("until", self.until, end=True))
        if self.prob_min is not None:
            clauses.append("crack_prob_max >= ?")
            params.append(float(self.prob_min))
        if self.prob_max is not None:
            clauses.append("crack_prob_max <= ?")
            params.append(float(self.prob_max))
        if self.disagreement_min is not None:
            clauses.append("disagreement >= ?")
            params.append(float(self.disagreement_min))
        if self.text:
            clauses.append("(instr(lower(coalesce(location, '')), ?) > 0 OR instr(lower(coalesce(note, '')), ?) > 0)")
            params += [self.text.lower()] * 2
        return " WHERE " + " AND ".join(clauses), params


def order_by(sort: str, descending: bool = True) -> str:
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {list(SORTS)}, got {sort!r}")
    d, a = ("DESC", "ASC") if descending else ("ASC", "DESC")
    return " ORDER BY " + SORTS[sort].format(d=d, a=a)


def _time_bound(name: str, value: str, *, end: bool) -> str:
    """An ISO time as stored (UTC, milliseconds) for comparison with ``created``. A date alone
    is the start of that day (``since``) or the start of the next one (``until``, exclusive)."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be an ISO-8601 date or time, got {value!r}")
    try:
        if len(value) == 10:
            day = _dt.date.fromisoformat(value)
            when = _dt.datetime.combine(day + _dt.timedelta(days=1 if end else 0), _dt.time(),
                                        tzinfo=_dt.timezone.utc)
        else:
            when = _dt.datetime.fromisoformat(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        raise ValueError(f"{name} must be an ISO-8601 date or time, got {value!r}") from None
    return when.astimezone(_dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class ReviewCounts:
    """How many flags a filter matches, by review state (deleted flags are not counted)."""

    total: int = 0
    unreviewed: int = 0
    crack: int = 0
    no_crack: int = 0
    unsure: int = 0
    disagreements: int = 0      # frames whose teachers and student differ by >= DISAGREEMENT_COUNTED
    needs_tiles: int = 0        # crack frames without a tile a person called crack (NEEDS_TILES)
    contradicted: int = 0       # reviewed frames the teachers confidently contradict on a tile (CONTRADICTED)

    @property
    def reviewed(self) -> int:
        return self.total - self.unreviewed
