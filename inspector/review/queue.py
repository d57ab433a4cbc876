"""The review model: a queue of flagged frames the inspector walks through and labels (no Qt).

:class:`ReviewQueue` sits over a :class:`~inspector.store.database.FlagStore`. It holds the ordered ids
of the flags the current filter matches (``ids``; records are read from the store on demand,
so 10,000 flags cost a list of ints), the current position, and the inspector's name. Every
verdict is one store transaction with its history entry, so undo / redo work across restarts.

The labelling rules (what the keys of the review view do). A tile has a training label only
when a person set it, and the store records how (``tile_sources``); every other tile is
**unknown** (None), whatever the student said of it:

- ``set_label("crack")`` (C): "there is a crack here". The frame is crack; tiles the person
  marked keep their labels, every other tile is unknown (on a frame already crack nothing
  changes). Until a person marks a crack tile (or accepts the verdicts) the frame **needs
  tiles**: ``FlagFilter(state="needs_tiles")`` lists it and :meth:`next_unreviewed` visits it;
- ``set_label("no_crack")`` (N): every tile is clean, source ``frame_clean``;
- ``set_label("unsure")`` (U): the frame is left out of training exports; tiles stay as they were;
- ``accept()`` (Space): "the verdicts shown are right": tiles a person set keep their labels,
  every unknown tile takes the student's verdict at ``threshold`` with source ``accepted``; the
  frame is crack if any tile is, else no_crack;
- ``toggle_tile(i)``: flips one tile as shown (its label, else the student's verdict) and marks
  it (source ``marked``); other tiles stay as they are. The frame becomes crack if any tile is
  crack, no_crack if every tile is known and clean, and otherwise keeps its label (a crack frame
  still needs tiles; an unreviewed frame stays unreviewed).

Batches (``ids``) apply the same rule per frame, as one undo step.

The list does not reshuffle while the inspector works (a labelled frame stays in place even if
it no longer matches an "unreviewed" filter) until :meth:`refresh` or a new filter; new flags
from the live view are picked up by :meth:`refresh` (the view calls it when flags arrive).

Subscribers (plain callables, called on the caller's thread): ``on_records(list[FlagRecord])``
when flags changed, ``on_list()`` when the list of ids changed, ``on_current(FlagRecord|None)``
when the current flag moved or changed.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from inspector.store.query import FlagFilter
from inspector.store.schema import REVIEW_LABELS, FlagRecord, StoreError

log = logging.getLogger(__name__)

DEFAULT_SORT = "need"


class ReviewQueue:
    def __init__(self, store, *, reviewer: str | None = None, threshold: float = 0.5,
                 flt: FlagFilter | None = None, sort: str = DEFAULT_SORT, descending: bool = True,
                 auto_advance: bool = True):
        self.store = store
        self.reviewer = reviewer
        self.threshold = float(threshold)
        self.filter = flt or FlagFilter()
        self.sort, self.descending = sort, descending
        self.auto_advance = auto_advance
        self.ids: list[int] = []
        self.index = -1
        self._subscribers: dict[str, list[Callable]] = {"records": [], "list": [], "current": []}
        self.refresh()

    # ------------------------------------------------------------------ events

    def subscribe(self, kind: str, callback: Callable) -> None:
        """``kind``: "records", "list" or "current" (see the module docstring)."""
        if kind not in self._subscribers:
            raise ValueError(f"kind must be one of {list(self._subscribers)}, got {kind!r}")
        self._subscribers[kind].append(callback)

    def _emit(self, kind: str, *args) -> None:
        for callback in list(self._subscribers[kind]):
            callback(*args)

    # ------------------------------------------------------------------ the list

    def set_filter(self, flt: FlagFilter | None = None, sort: str | None = None,
                   descending: bool | None = None) -> None:
        self.filter = flt if flt is not None else self.filter
        self.sort = sort or self.sort
        self.descending = self.descending if descending is None else descending
        self.refresh()

    def refresh(self) -> None:
        """Query the list again; the current flag stays current if it is still in it."""
        current = self.current_id
        self.ids = self.store.query_ids(self.filter, sort=self.sort, descending=self.descending)
        if current in self.ids:
            self.index = self.ids.index(current)
        else:
            self.index = min(max(self.index, 0), len(self.ids) - 1)
        self._emit("list")
        self._emit("current", self.current)

    def counts(self):
        """:class:`~inspector.store.query.ReviewCounts` of the current filter."""
        return self.store.counts(self.filter)

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------ position

    @property
    def current_id(self) -> int | None:
        return self.ids[self.index] if 0 <= self.index < len(self.ids) else None

    @property
    def current(self) -> FlagRecord | None:
        flag_id = self.current_id
        if flag_id is None:
            return None
        try:
            return self.store.get(flag_id)
        except StoreError:
            return None

    def go(self, index: int) -> FlagRecord | None:
        if self.ids:
            self.index = max(0, min(len(self.ids) - 1, index))
        rec = self.current
        self._emit("current", rec)
        return rec

    def go_to_id(self, flag_id: int) -> FlagRecord | None:
        return self.go(self.ids.index(flag_id)) if flag_id in self.ids else self.current

    def next(self) -> FlagRecord | None:
        return self.go(self.index + 1)

    def previous(self) -> FlagRecord | None:
        return self.go(self.index - 1)

    def next_unreviewed(self) -> FlagRecord | None:
        """The next flag after the current one (wrapping) that is unreviewed or needs its crack
        tiles, else stay."""
        order = self.ids[self.index + 1:] + self.ids[:self.index + 1]
        for start in range(0, len(order), 200):
            for rec in self.store.get_many(order[start:start + 200]):
                if (not rec.reviewed or rec.needs_tiles) and rec.deleted_at is None:
                    return self.go_to_id(rec.id)
        return self.current

    # ------------------------------------------------------------------ verdicts

    def set_label(self, label: str, ids: Iterable[int] | None = None) -> list[FlagRecord]:
        """Label the current flag (or the flags ``ids``, as one undo step); see the rules above."""
        if label not in REVIEW_LABELS:
            raise ValueError(f"label must be one of {list(REVIEW_LABELS)}, got {label!r}")
        return self._verdict(ids, lambda rec: self._label_change(rec, label), "label")

    def accept(self, ids: Iterable[int] | None = None) -> list[FlagRecord]:
        """The verdicts shown are right (Space): unknown tiles take the student's verdicts,
        recorded as ``accepted``; tiles a person set stay."""
        def change(rec: FlagRecord) -> dict:
            labels, sources = _tiles(rec)
            model = rec.model_tile_labels(self.threshold)
            for i, source in enumerate(sources):
                if source is None:
                    labels[i], sources[i] = model[i], "accepted"
            return {"label": "crack" if "crack" in labels else "no_crack", "tile_labels": labels,
                    "tile_sources": sources}
        return self._verdict(ids, change, "accept")

    def toggle_tile(self, tile: int, flag_id: int | None = None) -> FlagRecord | None:
        """Flip one tile of a flag (the current one by default) as the view shows it."""
        rec = self._record(flag_id)
        if rec is None:
            return None
        if not 0 <= tile < len(rec.tiles):
            raise ValueError(f"tile must be in 0..{len(rec.tiles) - 1}, got {tile}")
        labels, sources = _tiles(rec)
        shown = rec.effective_tile_labels(self.threshold)[tile]
        labels[tile], sources[tile] = ("no_crack" if shown == "crack" else "crack"), "marked"
        if "crack" in labels:
            label = "crack"
        elif None not in labels:
            label = "no_crack"
        else:
            label = rec.label
        new = self.store.set_review(rec.id, label=label, tile_labels=labels, tile_sources=sources,
                                    reviewer=self.reviewer, action="tile")
        self._changed([new])
        return new

    def set_fields(self, *, location=None, note=None, flag_id: int | None = None) -> FlagRecord | None:
        """Edit location and note in place (empty text clears a field)."""
        rec = self._record(flag_id)
        if rec is None:
            return None
        new = self.store.set_review(rec.id, location=location, note=note, reviewer=self.reviewer, action="fields")
        self._changed([new])
        return new

    def delete(self, ids: Iterable[int] | None = None) -> list[int]:
        """Delete flags (the current one by default): gone from the list, undoable until
        :meth:`close`. Returns the ids deleted."""
        targets = self._targets(ids)
        for flag_id in targets:
            self.store.delete(flag_id, reviewer=self.reviewer)
        if targets:
            keep = self.index
            self.ids = [i for i in self.ids if i not in set(targets)]
            self.index = min(keep, len(self.ids) - 1)
            self._emit("list")
            self._emit("current", self.current)
        return targets

    def undo(self) -> list[FlagRecord]:
        return self._walk(self.store.undo)

    def redo(self) -> list[FlagRecord]:
        return self._walk(self.store.redo)

    def can_undo(self) -> bool:
        return self.store.can_undo()

    def can_redo(self) -> bool:
        return self.store.can_redo()

    def close(self) -> list[str]:
        """The view closes: deleted flags are removed for good (rows, then files)."""
        return self.store.purge_deleted()

    # ------------------------------------------------------------------ internals

    def _record(self, flag_id: int | None) -> FlagRecord | None:
        if flag_id is None:
            return self.current
        return self.store.get(flag_id)

    def _targets(self, ids: Iterable[int] | None) -> list[int]:
        if ids is None:
            return [] if self.current_id is None else [self.current_id]
        return list(dict.fromkeys(ids))

    def _label_change(self, rec: FlagRecord, label: str) -> dict:
        if label == "no_crack":
            return {"label": label, "tile_labels": ["no_crack"] * len(rec.tiles),
                    "tile_sources": ["frame_clean"] * len(rec.tiles)}
        if label == "crack":
            if rec.label == "crack":     # already crack: the tiles stay as they are
                return {"label": label}
            # "there is a crack here": the tiles the person marked stay, nothing else is known
            # (the student's verdicts never become labels; N's "all clean" and Space's
            # "the verdicts are right" no longer hold for a frame now called crack)
            labels, sources = _tiles(rec)
            keep = [s == "marked" for s in sources]
            return {"label": label, "tile_labels": [t if k else None for t, k in zip(labels, keep)],
                    "tile_sources": [s if k else None for s, k in zip(sources, keep)]}
        return {"label": label}

    def _verdict(self, ids, change: Callable[[FlagRecord], dict], action: str) -> list[FlagRecord]:
        targets = self._targets(ids)
        records = self.store.get_many(targets)
        if len(records) == 1 and ids is None:
            new = [self.store.set_review(records[0].id, reviewer=self.reviewer, action=action, **change(records[0]))]
        else:
            new = self.store.set_reviews([(r.id, change(r)) for r in records], reviewer=self.reviewer,
                                         action=f"batch {action}")
        self._changed(new)
        if new and ids is None and self.auto_advance:
            self.next()
        return new

    def _walk(self, step) -> list[FlagRecord]:
        changed = step()
        if not changed:
            return []
        restored = [r.id for r in changed if r.deleted_at is None and r.id not in self.ids]
        gone = {r.id for r in changed if r.deleted_at is not None}
        if restored or gone:   # an undone / redone deletion: the flag comes back or goes again
            self.ids = [i for i in self.ids if i not in gone]
            self.ids = sorted(set(self.ids) | set(restored), key=self._order_key(changed))
            self._emit("list")
        self._changed(changed)
        if changed[0].id in self.ids:
            self.go_to_id(changed[0].id)
        return changed

    def _order_key(self, changed):
        """Where restored flags go back: the query order (one ids query; cheap)."""
        order = {flag_id: i for i, flag_id in enumerate(
            self.store.query_ids(self.filter, sort=self.sort, descending=self.descending))}
        return lambda flag_id: order.get(flag_id, len(order))

    def _changed(self, records: list[FlagRecord]) -> None:
        if records:
            self._emit("records", records)
            current = self.current_id
            if any(r.id == current for r in records):
                self._emit("current", self.current)


def _tiles(rec: FlagRecord) -> tuple[list, list]:
    """Copies of a flag's tile labels and their sources (None per unknown tile)."""
    n = len(rec.tiles)
    labels = list(rec.tile_labels) if rec.tile_labels is not None else [None] * n
    sources = list(rec.tile_sources) if rec.tile_sources is not None else [None] * n
    return labels, sources
