"""Background threads that must never slow the live view: one way to lower a thread's priority
(plain standard library), shared by the teacher scorer and the flagger's store memory."""
from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

NICE = 19             # the lowest priority: background work may wait, the live view may not


def lower_own_priority(what: str, *, idle: bool = True) -> None:
    """Nice 19 for the calling thread only (Linux: a thread id is a PRIO_PROCESS target) and,
    with ``idle``, the SCHED_IDLE policy: a nice-19 thread may finish its time slice before a
    woken nice-0 thread gets the core, an idle-policy thread is preempted at once. Threads it
    starts afterwards (an onnxruntime session's workers) inherit both. Elsewhere, or where the
    system refuses, nothing changes (logged with ``what``, the thread's job)."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, NICE)
        if idle:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:
        log.info("%s: cannot lower its priority: %s", what, exc)
