"""The Qt layer's job runner: detached jobs (no one waits for them) and the device panel's texts."""
from __future__ import annotations

import threading
import time

import shiboken6
from PySide6.QtCore import QObject

from inspector.qt import jobs
from inspector.qt.device.status_text import describe, gate_text


def test_a_detached_job_runs_outside_the_pool_and_reports_on_the_gui_thread(qtbot):
    gui = threading.get_ident()
    runner = jobs.JobRunner(threads=1)
    hold = threading.Event()
    runner.run(hold.wait, 5)                             # the one pool thread is taken
    with qtbot.waitCallback() as done:
        runner.run(threading.get_ident, on_success=done, detached=True)
    assert done.args[0] not in (gui, None)
    hold.set()
    runner.wait()


def test_closing_does_not_wait_for_a_detached_job_and_drops_its_outcome(qtbot):
    runner = jobs.JobRunner()
    release, seen = threading.Event(), []
    runner.run(release.wait, 5, on_success=seen.append, on_failure=seen.append, detached=True)
    started = time.monotonic()
    assert runner.close(2000)
    assert time.monotonic() - started < 1.0
    release.set()
    qtbot.wait(100)
    assert seen == []


def test_a_detached_job_outliving_its_runner_is_dropped_quietly(qtbot):
    owner = QObject()
    runner = jobs.JobRunner(owner)
    release, seen = threading.Event(), []
    thread_count = threading.active_count()
    runner.run(release.wait, 5, on_success=seen.append, detached=True)
    del owner                                            # the runner's C++ object goes with its parent
    assert not shiboken6.isValid(runner)
    release.set()
    qtbot.waitUntil(lambda: threading.active_count() <= thread_count, timeout=2000)
    qtbot.wait(50)
    assert seen == []


def test_gate_text_and_describe():
    assert gate_text({"promoted": True}) == "promoted"
    assert gate_text({"promoted": False}, long=True) == "NOT promoted (the gate refused it; no override)"
    assert gate_text({"override": {"by": "ana", "reason": "field check", "failed": ["mcc"]}}) == \
        "overridden by ana: field check"
    assert gate_text({}) == "—"
    assert describe(ZeroDivisionError("x")) == "ZeroDivisionError: x"
