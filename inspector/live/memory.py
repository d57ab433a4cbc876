"""The flags already in the store, remembered by the flagger: a session that starts again on a
wall flagged before (the app restarted mid-walk, a second round) does not flag it again.

:class:`StoreMemory` reads the newest flags' frames on one background thread and hands them to
:meth:`inspector.live.flagging.Flagger.remember`; the flagger compares every candidate frame
with them as with the session's own flags (:mod:`inspector.live.flagging`).
"""
from __future__ import annotations

import logging
import threading

from inspector.background import lower_own_priority
from inspector.live.flagging import Flagger

log = logging.getLogger(__name__)

# The newest flags of the store a session remembers. Every view remembered (the store's or the
# session's) costs the flagger about 15 µs per candidate frame it compares: measured
# (benchmarks/flag_memory.py, 640×480, every frame a candidate) 2.3 ms per frame mean with 200
# views, 5.4 ms with 500, 35 ms with 2,000. The flagger runs on the inference thread: 200.
STORE_MEMORY = 200


class StoreMemory:
    """Teaches a :class:`Flagger` the views of the flags already in ``store`` (the newest
    ``limit``, newest first), on one background thread at nice 19, so a session that
    starts again on a wall flagged before (the app restarted mid-walk, a second round) does not
    flag it again. Frames that cannot be read are skipped and counted. The flags of this
    session are not read again (they are remembered as they are made); until the memory is
    loaded (5 ms a 640×480 flag, 13 ms a 1280×720 one: 1–3 s for 200), a stored view may still
    be flagged once.

    ``start()`` once, ``wait()`` for it, ``stop()`` to end early (joins); ``loaded`` / ``skipped``
    say what it did.
    """

    def __init__(self, flagger: Flagger, store, *, limit: int = STORE_MEMORY):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative number of flags, got {limit!r}")
        self.flagger, self.store, self.limit = flagger, store, limit
        self.loaded = self.skipped = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Note the store's newest flag (the ones after it are this session's) and start loading;
        a store that cannot be read means no memory (logged), never a failure of the app."""
        if self._thread is not None:
            raise RuntimeError("a StoreMemory starts once")
        try:
            newest = self.store.list(limit=1) if self.limit else []
        except Exception:  # noqa: BLE001
            log.exception("flag memory: cannot read the store; no stored flag is remembered")
            newest = []
        self._thread = threading.Thread(target=self._run, args=(newest[0].id if newest else None,),
                                        name="flag-memory", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every stored view is loaded (or the memory stopped); True if it is done."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, newest_id: int | None) -> None:
        if newest_id is None:
            return
        lower_own_priority("flag memory", idle=False)   # idle: it would wait as long as the view runs
        try:
            # newest first; a few this session may have stored since start() are left out
            records = [r for r in self.store.list(limit=self.limit + 64) if r.id <= newest_id][:self.limit]
        except Exception:  # noqa: BLE001 - no memory is a nuisance, never a failure of the app
            log.exception("flag memory: cannot list the stored flags")
            return
        for rec in records:
            if self._stop.is_set():
                return
            try:
                self.flagger.remember(self.store.load_frame(rec))
                self.loaded += 1
            except Exception as exc:  # noqa: BLE001 - a missing or unreadable image: skip it
                self.skipped += 1
                log.warning("flag memory: flag %s skipped: %s", rec.id, exc)
        log.info("flag memory: %d stored views remembered, %d skipped", self.loaded, self.skipped)
