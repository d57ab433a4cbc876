"""The review workspace: walk through the flagged frames and label them, keyboard first.

``ReviewWorkspace(store)`` is one widget: the filter bar over a thumbnail grid
(:mod:`.grid`), the large view of the current flag (:mod:`.frame`) and its side
panel (:mod:`.meta`). It owns a :class:`~inspector.review.queue.ReviewQueue` (the logic, no
Qt) and subscribes to it: ``list`` → the grid's rows, ``records`` → their cells, ``current`` →
the large view, the panel and the grid's current cell.

Keys (:data:`~.keys.KEYS`; ``F1`` lists them) are QShortcuts on this widget, so they work only while it
is shown, and a text field with the focus takes letters as text. A verdict applies to the grid's
selection when more than one flag is selected (one undo step), else to the current flag, then
moves on (``auto-advance``). Store writes are synchronous (one small SQLite transaction each);
one that fails (:class:`~inspector.store.schema.StoreError`, e.g. a full disk) changes nothing, is
shown as a message, and the view is re-read from the store.

Pictures never load on the GUI thread: thumbnails on a low-priority runner, the large frame on
a one-thread runner (newest request wins; the next flag is prefetched), export and report on
the shared runner (:mod:`.exports`). New flags from the live view (:meth:`flag_stored`) are merged
into the list where the sort puts them, without reshuffling what is already listed.

For benchmarks and scripts: ``grid`` is the QListView; ``firstPageShown`` is emitted once the
first screenful of the grid has been painted with its thumbnails.
"""
from __future__ import annotations

import logging

from PySide6.QtCore import QItemSelectionModel, Qt, QTimer, Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QScrollArea, QSlider, QSplitter, QVBoxLayout, QWidget

from inspector.review.queue import ReviewQueue
from inspector.store.schema import StoreError
from inspector.qt.banner import Banner
from inspector.qt.bridge import RenderSettings
from inspector.qt.jobs import JobRunner
from inspector.qt.startup import user_name
from inspector.qt.review.exports import ReviewExports
from inspector.qt.review.filters import ReviewFilterBar
from inspector.qt.review.frame import FrameLoader, ReviewFrameView
from inspector.qt.review.grid import ReviewGridModel, ReviewGridView, ThumbnailLoader
from inspector.qt.review.keys import KeysDialog, install_shortcuts
from inspector.qt.review.meta import ReviewMetaPanel

log = logging.getLogger(__name__)

NEW_FLAGS_MS = 300          # new flags arriving in a burst are merged in once


def merge_new_ids(listed: list[int], fresh: list[int], new: list[int]) -> list[int]:
    """``listed`` with the ids ``new`` inserted where the order ``fresh`` (a new query) puts them;
    ids of ``listed`` missing from ``fresh`` stay after the id before them."""
    rank = {fid: k for k, fid in enumerate(fresh)}
    queue = sorted(new, key=rank.__getitem__)
    merged, j = [], 0
    for fid in listed:
        r = rank.get(fid)
        if r is not None:
            while j < len(queue) and rank[queue[j]] < r:
                merged.append(queue[j])
                j += 1
        merged.append(fid)
    return merged + queue[j:]


class ReviewWorkspace(QWidget):
    """``ReviewWorkspace(store, reviewer=None, threshold=0.5, show_message=None)``.

    ``show_message(text, level)``: where messages go (the main window's); without it the
    workspace's own banner shows them. Signals: ``firstPageShown``, ``message(text, level)``,
    ``exportFinished(ExportReport)``, ``reportFinished(ReportSummary)``, ``updateRequested()``,
    ``historyRequested()`` (Update model… / Models…: the window opens them). ``flagScored.emit(record)``
    may be called from any thread (the teacher scorer's ``on_scored``): the cell repaints.
    """

    firstPageShown = Signal()
    flagScored = Signal(object)
    message = Signal(str, str)
    exportFinished = Signal(object)
    reportFinished = Signal(object)
    updateRequested = Signal()          # Update model… (the window opens the update dialog)
    historyRequested = Signal()         # Models… (the window opens the model history)

    def __init__(self, store, *, reviewer: str | None = None, threshold: float = 0.5, show_message=None,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.store = store
        self._show_message = show_message
        self._syncing = False
        self._closed = False
        self._stale = False
        self._sized = False
        self.queue = ReviewQueue(store, reviewer=reviewer or user_name(), threshold=threshold)
        self._seen_max = self._newest_id()
        self.thumb_jobs = JobRunner(self, threads=2, nice=10)   # never competes with the live view
        self.frames = FrameLoader(store, JobRunner(self, threads=1), self)

        self.banner = Banner(closable=True)
        self.filters = ReviewFilterBar()
        self.exports = ReviewExports(store, self.filters, say=self._say, current_filter=lambda: self.queue.filter,
                                     parent=self)
        self.model = ReviewGridModel(store, ThumbnailLoader(store, self.thumb_jobs, self), self)
        self.grid = ReviewGridView()
        self.grid.setModel(self.model)
        self.frame = ReviewFrameView()
        self.frame.set_threshold(threshold)
        self.meta = ReviewMetaPanel()
        self.heat = QCheckBox("Heat-map  (H)")
        self.heat.setFocusPolicy(Qt.NoFocus)
        self.opacity = QSlider(Qt.Horizontal, minimum=0, maximum=100, value=45, toolTip="Heat-map opacity")
        self.opacity.setFocusPolicy(Qt.NoFocus)
        self.opacity.setFixedWidth(120)
        self.position = QLabel("", objectName="dim")
        self.keys_dialog: KeysDialog | None = None
        self._layout()
        self._connect()
        self.shortcuts = install_shortcuts(self)
        self._counts_timer = QTimer(self, singleShot=True, interval=0, timeout=self._update_counts)
        self._new_timer = QTimer(self, singleShot=True, interval=NEW_FLAGS_MS, timeout=self._pick_up_new)
        self._on_list()
        self._update_choices()
        self._on_current(self.queue.current)

    # ---------------------------------------------------------------- layout

    def _layout(self) -> None:
        frame_column = QWidget()
        fc = QVBoxLayout(frame_column)
        fc.setContentsMargins(0, 0, 0, 0)
        fc.setSpacing(6)
        fc.addWidget(self.frame, 1)
        bar = QHBoxLayout()
        bar.addWidget(self.position, 1)
        bar.addWidget(QLabel("click a tile or T: crack ↔ clean", objectName="dim"))
        bar.addSpacing(12)
        bar.addWidget(self.heat)
        bar.addWidget(self.opacity)
        fc.addLayout(bar)
        right = QWidget()
        rh = QHBoxLayout(right)
        rh.setContentsMargins(0, 0, 0, 0)
        rh.setSpacing(8)
        rh.addWidget(frame_column, 1)
        # the verdict buttons and the flag's fields scroll on a short screen (a 768-px laptop)
        self.meta_scroll = QScrollArea(widgetResizable=True, frameShape=QScrollArea.NoFrame)
        self.meta_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.meta.setFixedWidth(270)                 # long values are cut inside it, not the panel itself
        self.meta_scroll.setWidget(self.meta)
        self.meta_scroll.setFixedWidth(270 + self.meta_scroll.verticalScrollBar().sizeHint().width())
        rh.addWidget(self.meta_scroll)
        self.splitter = QSplitter(Qt.Horizontal)
        self.splitter.addWidget(self.grid)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setChildrenCollapsible(False)
        self.grid.setMinimumWidth(180)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(10, 8, 10, 10)
        lay.setSpacing(8)
        lay.addWidget(self.banner)
        lay.addWidget(self.filters)
        lay.addWidget(self.splitter, 1)

    def _connect(self) -> None:
        q = self.queue
        q.subscribe("list", self._on_list)
        q.subscribe("records", self._on_records)
        q.subscribe("current", self._on_current)
        self.grid.selectionModel().currentChanged.connect(self._on_grid_current)
        self.grid.selectionModel().selectionChanged.connect(self._update_position)
        self.grid.firstPageShown.connect(self.firstPageShown)
        self.flagScored.connect(lambda rec: self.records_changed([rec]))
        self.filters.filterChanged.connect(self.set_filter)
        self.filters.choiceMade.connect(self.grid.setFocus)
        self.filters.exportRequested.connect(self.exports.export)
        self.filters.reportRequested.connect(self.exports.report)
        self.exports.exportFinished.connect(self.exportFinished)
        self.exports.reportFinished.connect(self.reportFinished)
        self.filters.updateRequested.connect(self.updateRequested)
        self.filters.historyRequested.connect(self.historyRequested)
        self.frame.tileClicked.connect(self.toggle_tile)
        self.frames.loaded.connect(self._frame_loaded)
        self.frames.failed.connect(self._frame_failed)
        self.meta.verdictRequested.connect(self._on_verdict_button)
        self.meta.fieldsEdited.connect(self._on_fields)
        self.meta.doneEditing.connect(self.grid.setFocus)
        self.meta.auto_advance.toggled.connect(lambda on: setattr(self.queue, "auto_advance", on))
        self.heat.toggled.connect(self._on_heat)
        self.opacity.valueChanged.connect(self._on_heat)

    # ---------------------------------------------------------------- public

    def flag_stored(self, record) -> None:
        """The live view stored a flag: merge it in soon (now if shown, else when shown)."""
        if self.isVisible():
            self._new_timer.start()
        else:
            self._stale = True

    def records_changed(self, records) -> None:
        """Flags changed elsewhere (e.g. scored by the teachers): repaint them."""
        self.model.update_records(records)
        current = self.queue.current_id
        if any(r.id == current for r in records):
            self._on_current(self.queue.current)
        self._counts_timer.start()

    def set_threshold(self, threshold: float) -> None:
        self.queue.threshold = float(threshold)
        self.frame.set_threshold(threshold)

    def set_filter(self, flt, sort: str | None = None, descending: bool | None = None) -> None:
        self._seen_max = self._newest_id()
        self._guard(lambda: self.queue.set_filter(flt, sort, descending))
        if self.queue.current_id is not None and self.queue.index >= 0:
            self.grid.scrollTo(self.model.index(self.queue.index))

    def show_message(self, text: str, level: str = "info") -> None:
        """Show ``text`` in the workspace's own banner (the window forwards its messages here while
        the workspace is on screen)."""
        self.banner.show_message(text, level)

    def shutdown(self) -> None:
        """Deleted flags are removed for good; background jobs stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.thumb_jobs.close(2000)
        self.frames.runner.close(2000)
        try:
            purged = self.queue.close()
            if purged:
                log.info("review: %d deleted flags removed", len(purged))
        except StoreError as err:
            log.warning("review: deleted flags not removed now (the next start removes them): %s", err)

    # ---------------------------------------------------------------- key actions

    def label_crack(self) -> None:
        self._verdict("crack")

    def label_no_crack(self) -> None:
        self._verdict("no_crack")

    def label_unsure(self) -> None:
        self._verdict("unsure")

    def accept(self) -> None:
        self._verdict("accept")

    def previous(self) -> None:
        self.queue.previous()

    def next(self) -> None:
        self.queue.next()

    def next_unreviewed(self) -> None:
        self._guard(self.queue.next_unreviewed)

    def undo(self) -> None:
        if not self._guard(self.queue.undo):
            self._say("Nothing to undo", "info")

    def redo(self) -> None:
        if not self._guard(self.queue.redo):
            self._say("Nothing to redo", "info")

    def delete(self) -> None:
        ids = self.grid.selected_ids()
        self._guard(lambda: self.queue.delete(ids if len(ids) > 1 else None))

    def toggle_tile(self, tile: int | None = None) -> None:
        rec = self.frame.record
        if rec is None or not rec.tiles:
            return
        tile = self.frame.cursor if tile is None else tile
        self.frame.cursor = tile
        self._guard(lambda: self.queue.toggle_tile(tile, rec.id))

    def toggle_heat(self) -> None:
        self.heat.toggle()

    def show_keys(self) -> None:
        if self.keys_dialog is None:
            self.keys_dialog = KeysDialog(self)
        self.keys_dialog.show()
        self.keys_dialog.raise_()

    def _verdict(self, verdict: str) -> None:
        ids = self.grid.selected_ids()
        batch = ids if len(ids) > 1 else None
        if verdict == "accept":
            self._guard(lambda: self.queue.accept(batch))
        else:
            self._guard(lambda: self.queue.set_label(verdict, batch))

    def _on_verdict_button(self, verdict: str) -> None:
        self._verdict(verdict)
        self.grid.setFocus()

    def _on_fields(self, flag_id: int, location: str, note: str) -> None:
        self._guard(lambda: self.queue.set_fields(location=location or None, note=note or None, flag_id=flag_id))
        self._update_choices()

    # ---------------------------------------------------------------- store writes

    def _guard(self, action):
        """Run a store action; a StoreError becomes a message and the view is re-read."""
        try:
            return action()
        except StoreError as err:
            log.warning("review: %s", err)
            self._say(str(err), "error")
            self._resync()
            return None

    def _resync(self) -> None:
        """After a failed write: drop flags the store no longer lists, re-read every record."""
        try:
            alive = {r.id for r in self.store.get_many(self.queue.ids) if r.deleted_at is None}
        except StoreError as err:
            log.warning("review: cannot re-read the flags: %s", err)
            return
        if len(alive) != len(self.queue.ids):
            self._adopt([i for i in self.queue.ids if i in alive])
        self.model.forget_records()
        self._on_current(self.queue.current)

    def _say(self, text: str, level: str = "info") -> None:
        self.message.emit(text, level)
        if self._show_message is not None:
            self._show_message(text, level)
        else:
            self.show_message(text, level)

    # ---------------------------------------------------------------- queue events

    def _on_list(self) -> None:
        self._syncing = True
        try:
            self.model.sync(self.queue.ids)
        finally:
            self._syncing = False
        self._counts_timer.start()

    def _on_records(self, records) -> None:
        self.model.update_records(records)
        self._counts_timer.start()

    def _on_current(self, rec) -> None:
        self._follow_current()
        shown = self.frame.record
        same = shown is not None and rec is not None and shown.id == rec.id and self.frame.picture != "loading"
        self.frame.show_record(rec, same_frame=same)
        self.meta.show_record(rec)
        self._update_position()
        if rec is not None and not same:
            self._load_frame(rec)

    def _follow_current(self) -> None:
        row = self.queue.index
        if not 0 <= row < self.model.rowCount():
            return
        idx = self.model.index(row)
        sel = self.grid.selectionModel()
        if self.grid.currentIndex() != idx:
            self._syncing = True
            try:
                sel.setCurrentIndex(idx, QItemSelectionModel.ClearAndSelect)
            finally:
                self._syncing = False
        self.grid.scrollTo(idx)

    def _on_grid_current(self, current, previous) -> None:
        if not self._syncing and current.isValid() and current.row() != self.queue.index:
            self.queue.go(current.row())

    def _update_position(self, *_) -> None:
        n = len(self.queue.ids)
        selected = len(self.grid.selectionModel().selectedIndexes())
        text = f"{self.queue.index + 1} / {n}" if self.queue.current_id is not None else f"0 / {n}"
        if selected > 1:
            text += f"   ·   {selected} selected: keys apply to all of them"
        self.position.setText(text)

    def _update_counts(self) -> None:
        try:
            self.filters.set_counts(self.queue.counts())
        except StoreError as err:
            log.info("review counts: %s", err)

    def _update_choices(self) -> None:
        try:
            sources, locations, versions = (self.store.distinct(c) for c in ("source", "location", "model_version"))
        except StoreError as err:
            log.info("review choices: %s", err)
            return
        self.filters.set_choices(sources, locations, versions)
        self.meta.set_locations(locations)

    # ---------------------------------------------------------------- new flags

    def _newest_id(self) -> int:
        try:
            newest = self.store.list(limit=1)
        except StoreError:
            return 0
        return newest[0].id if newest else 0

    def _pick_up_new(self) -> None:
        q = self.queue
        try:
            fresh = self.store.query_ids(q.filter, sort=q.sort, descending=q.descending)
        except StoreError as err:
            log.info("review: new flags not listed: %s", err)
            return
        listed = set(q.ids)
        new = [i for i in fresh if i > self._seen_max and i not in listed]
        self._seen_max = max([self._seen_max, *fresh])
        if new:
            self._adopt(merge_new_ids(q.ids, fresh, new))
        self._update_choices()

    def _adopt(self, ids: list[int]) -> None:
        """The queue lists ``ids`` now; the current flag stays current (by id)."""
        q = self.queue
        current = q.current_id
        q.ids = ids
        if current in ids:
            q.index = ids.index(current)
        else:
            q.index = min(max(q.index, 0), len(ids) - 1)
        self._on_list()
        if q.current_id != current:
            q.go(q.index)
        else:
            self._follow_current()
            self._update_position()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if not self._sized:   # the grid starts three columns wide (two on a small screen)
            self._sized = True
            total = sum(self.splitter.sizes()) or self.width()
            columns = 3 if total >= 1100 else 2
            grid = columns * self.grid.gridSize().width() + self.grid.verticalScrollBar().sizeHint().width() + 8
            self.splitter.setSizes([grid, max(1, total - grid)])
        if self._stale:
            self._stale = False
            self._pick_up_new()
        self.model.forget_records()      # teachers' scores that arrived meanwhile
        self._update_counts()
        QTimer.singleShot(0, self.grid.setFocus)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API (a workspace opened on its own)
        self.shutdown()
        super().closeEvent(event)

    # ---------------------------------------------------------------- pictures

    def _on_heat(self, *_) -> None:
        settings = RenderSettings(self.heat.isChecked(), self.opacity.value() / 100)
        self.frame.set_settings(settings)
        self.model.set_heat(settings.overlay, settings.opacity)
        self.opacity.setEnabled(settings.overlay)

    def _load_frame(self, rec) -> None:
        cached = self.frames.cached(rec.id)
        if cached is None:
            thumb = self.model.cached_thumbnail(rec.id)
            if thumb is not None:
                self.frame.set_preview(*thumb)
        self.frames.load(rec)
        following = self.queue.index + 1
        if following < len(self.queue.ids):
            self.frames.prefetch(self.model.record(following))

    def _frame_loaded(self, flag_id: int, value) -> None:
        if self.frame.record is not None and self.frame.record.id == flag_id:
            self.frame.set_frame(*value)

    def _frame_failed(self, flag_id: int, reason: str) -> None:
        if self.frame.record is not None and self.frame.record.id == flag_id:
            self.frame.set_missing(reason)
