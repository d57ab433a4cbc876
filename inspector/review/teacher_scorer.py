"""The teachers' opinion of every flag, computed in the background while the inspector works.

The review workspace ranks flags by how much the student and its teacher ensemble disagree,
tile by tile. The live path has no time for three teacher networks, so one low-priority
thread scores the flags after they are stored: :class:`TeacherScorer` loads each unscored
flag's frame, cuts **the student's own tile boxes** (``FlagRecord.tiles``, so the comparison
is per tile and exact), runs the teacher package (``models/crack-teachers-X.Y.Z.crackpkg``,
``distill/export/teachers.py``) on them as one batch and stores the crack probability per tile
with :meth:`FlagStore.set_teacher_probs`, which also stores the frame's disagreement.

A tile is prepared as the inference engine prepares the student's (:func:`tile_batch`):
cut from the frame, reflect-padded at the bottom/right up to a whole tile where the frame is
smaller than a tile, resized to the model's input with the engine's own resize.

Threads and priority
--------------------
One daemon thread. On Linux it lowers its own priority first (nice 19 and the SCHED_IDLE
policy, which the kernel preempts as soon as any normal thread wakes, where a nice-19 thread
may keep the core to the end of its slice) and only then creates the onnxruntime session,
whose worker threads (``threads`` > 1) inherit both: the camera, inference and GUI threads win
every contention for a core. ``intra_op_num_threads=threads``, ``inter_op_num_threads=1``, no
spinning (see ``inspector/edge/engine.py``).

It loops: ``store.unscored(limit)`` → score each → ``on_scored(new_record)``; when nothing
is left it sleeps until :meth:`notify` (the app calls it when a flag is stored) or the poll
interval. Errors are logged, never raised: a flag that fails (its image is missing, it was
deleted meanwhile) is skipped for the rest of this scorer's life, not retried in a loop. A
closed store ends the thread. numpy + onnxruntime + OpenCV only: no torch, no Qt.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from inspector.background import lower_own_priority
from inspector.edge.engine import InferenceEngine, _resize
from inspector.live.loop import engine_model
from inspector.edge.contract import INPUT_NAME
from inspector.store.schema import FlagRecord, StoreError

log = logging.getLogger(__name__)

BATCH = 16            # flags fetched per round trip to the store
POLL_S = 5.0          # nothing to do: look again after this long even without notify()
STOP_JOIN_S = 30.0    # stop(): the flag being scored finishes first (well under a second here)


@dataclass
class ScorerStats:
    """What the scorer did: flags scored and skipped, the time spent scoring them, and how many
    times it looked for unscored flags."""

    scored: int = 0
    skipped: int = 0
    passes: int = 0
    busy_s: float = 0.0     # wall time in load → infer → store of the scored flags

    @property
    def ms_per_flag(self) -> float:
        return 1e3 * self.busy_s / self.scored if self.scored else float("nan")


def tile_batch(frame: np.ndarray, boxes: Sequence[Sequence[int]], tile: int, size: int) -> np.ndarray:
    """The uint8 batch N×size×size×3 of ``boxes`` (x0, y0, x1, y1) of ``frame``, prepared as
    :class:`~inspector.edge.engine.InferenceEngine` prepares tiles: a box clipped by the frame's
    bottom/right border (a frame smaller than one ``tile``) is reflect-padded to the tile, as
    the engine pads the frame; then each is resized to ``size`` (area when shrinking)."""
    height, width = frame.shape[:2]
    batch = np.empty((len(boxes), size, size, 3), np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(f"tile box {[x0, y0, x1, y1]} is not inside the {width}×{height} frame")
        crop = np.ascontiguousarray(frame[y0:y1, x0:x1])
        pad_y = tile - (y1 - y0) if y1 == height and y1 - y0 < tile else 0
        pad_x = tile - (x1 - x0) if x1 == width and x1 - x0 < tile else 0
        if pad_x or pad_y:
            crop = cv2.copyMakeBorder(crop, 0, pad_y, 0, pad_x, cv2.BORDER_REFLECT_101)
        batch[i] = _resize(crop, size, size)
    return batch


def tile_crack_probs(engine: InferenceEngine, frame: np.ndarray, boxes: Sequence[Sequence[int]]) -> list[float]:
    """The crack probability of ``engine``'s model for each box of ``frame`` (one batch)."""
    if not len(boxes):
        return []
    batch = tile_batch(frame, boxes, engine.tile_size, engine.input_size)
    (probs,) = engine.session.run(["probs"], {INPUT_NAME: batch})
    return [float(p) for p in probs[:, engine.crack_index]]


def _return_freed_memory() -> None:
    """Give the heap pages freed after loading back to the OS (glibc only; elsewhere nothing).

    Loading the package reads, unzips, parses and checks a 49 MB graph; glibc keeps those freed
    pages in this thread's arena for good: measured here, 77 of the 186 MB the load added stay
    resident otherwise."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl and others: no malloc_trim
        pass


def _store_closed(store) -> bool:
    return bool(getattr(store, "closed", False))


class TeacherScorer:
    """Scores unscored flags of ``store`` with the teacher package at ``package_path`` (module doc).

    ``start()`` once, ``notify()`` whenever a flag was stored, ``stop()`` to end (joins).
    ``on_scored(record)`` gets each newly scored FlagRecord, on the scorer's thread.
    """

    def __init__(self, store, package_path: str | os.PathLike, *, threads: int = 1,
                 on_scored: Callable[[FlagRecord], None] | None = None, poll_s: float = POLL_S,
                 batch: int = BATCH):
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.store = store
        self.package_path = Path(package_path)
        self.threads = threads
        self.on_scored = on_scored
        self.poll_s = float(poll_s)
        self.batch = int(batch)
        self.stats = ScorerStats()
        self.engine: InferenceEngine | None = None
        self.skipped: set[int] = set()   # ids that failed once: not retried by this scorer
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"TeacherScorer({self.package_path.name}, threads={self.threads}, {self.stats})"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None or self._stop.is_set():
            raise RuntimeError("a TeacherScorer starts once and not after stop(); make a new one")
        self._thread = threading.Thread(target=self._run, name="teacher-scorer", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """A flag was stored: look for work now instead of at the next poll. Cheap, any thread."""
        self._wake.set()

    def stop(self, timeout: float = STOP_JOIN_S) -> None:
        """End the thread after the flag it is scoring; idempotent."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("teacher scorer: still busy after %.0f s; left to finish as a daemon", timeout)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        lower_own_priority("teacher scorer")  # before the session exists, so its worker threads inherit it
        try:
            self.engine = InferenceEngine(self.package_path, threads=self.threads, providers=["CPUExecutionProvider"],
                                          cv2_threads=None)
        except Exception:  # noqa: BLE001 - a bad package disables scoring, never the app
            log.exception("teacher scorer: cannot load %s; flags stay unscored", self.package_path)
            return
        _return_freed_memory()
        log.info("teacher scorer: %s-%s on %d thread(s)", self.engine.manifest.name, self.engine.manifest.version,
                 self.threads)
        while not self._stop.is_set():
            self._wake.clear()  # before looking: a notify() from now on wakes the next wait
            try:
                todo = self._unscored()
            except StoreError as exc:
                if _store_closed(self.store):
                    log.info("teacher scorer: the flag store is closed; stopping")
                    return
                log.warning("teacher scorer: cannot list unscored flags: %s", exc)
                todo = []
            except Exception:  # noqa: BLE001 - log, wait, try again
                log.exception("teacher scorer: cannot list unscored flags")
                todo = []
            for rec in todo:
                if self._stop.is_set():
                    return
                self._score(rec)
            self.stats.passes += 1
            if not todo:
                self._wake.wait(self.poll_s)

    def _unscored(self) -> list[FlagRecord]:
        # Skipped flags stay unscored in the store, so ask for enough to get past them.
        recs = self.store.unscored(limit=self.batch + len(self.skipped))
        return [r for r in recs if r.id not in self.skipped][: self.batch]

    def _score(self, rec: FlagRecord) -> None:
        t0 = time.perf_counter()
        try:
            frame = self.store.load_frame(rec)
            probs = tile_crack_probs(self.engine, frame, [t["box"] for t in rec.tiles])
            new = self.store.set_teacher_probs(rec.id, probs, engine_model(self.engine))
        except Exception as exc:  # noqa: BLE001 - one bad flag (missing image, deleted, odd tiles) is skipped
            self.skipped.add(rec.id)
            self.stats.skipped += 1
            if isinstance(exc, (StoreError, ValueError)):
                log.warning("teacher scorer: flag %s skipped: %s", rec.id, exc)
            else:
                log.exception("teacher scorer: flag %s skipped", rec.id)
            return
        self.stats.scored += 1
        self.stats.busy_s += time.perf_counter() - t0
        if self.on_scored is not None:
            try:
                self.on_scored(new)
            except Exception:  # noqa: BLE001 - a failing callback must not stop the scoring
                log.exception("teacher scorer: on_scored failed for flag %s", rec.id)
