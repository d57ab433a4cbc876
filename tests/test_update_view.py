"""Update model in the app (pytest-qt, offscreen): the run of the update dialog over a real flag
store of real frames, the job as a separate process, its events on screen, Cancel, the gate's
verdict, the push to a real device agent on loopback and the swap into this laptop's live view;
the model history and its rollbacks.

The fast tests run ``tests/fake_update.py`` in place of ``distill update`` (see
tests/update_support.py). The slow test runs the real ``distill update`` on its short path.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from inspector.capture.sources import parse_source
from inspector.link.client import DeviceClient
from inspector.link.pairing import PairingStore
from inspector.live.flagging import Flagger, FlagPolicy
from inspector.qt import confirm
from inspector.paths import sample_video
from inspector.qt.device.override_dialog import ExpertOverrideDialog
from inspector.qt.update.history_view import ModelHistoryDialog
from inspector.qt.window import UPDATE_PACE_S, MainWindow
from inspector.update.history import ModelHistory
from support import SHIPPED_VERSION, engine  # noqa: F401  (fixtures)
from update_support import (FAKE, NEW_VERSION, REPO, RUN_MS, _fake_mode, agent, device_model, frames,  # noqa: F401
                            history, make_dialog, one_thread_engine, pair_with, paired, reviewed_store,
                            stage_states, start_agent, store)


# ---------------------------------------------------------------------------- the dialog, fake job

def test_progress_curves_stages_then_the_new_model_runs_in_the_laptops_view(qtbot, store, history, engine):
    d = make_dialog(qtbot, store, history, engine)
    with qtbot.waitSignal(d.deployed, timeout=RUN_MS) as deployed:
        d.start_button.click()
    assert deployed.args[0] == f"crack-student {NEW_VERSION} live on this laptop"
    assert d.state.outcome == "passed" and set(stage_states(d).values()) == {"done"}
    assert d.run_page.bar.value() == d.run_page.bar.maximum()
    assert d.run_page.curves.points == 4                               # 3 student epochs + 1 teacher
    items = [d.run_page.stage_list.item(i).text() for i in range(d.run_page.stage_list.count())]
    assert len(items) == 9 and all(t.startswith("✓") for t in items)
    log_text = d.run_page.log_view.toPlainText()
    assert "a library printed this to stdout" in log_text and "fake update: labelled" in log_text
    table = [[d.run_page.table.item(r, c).text() for c in range(5)] for r in range(d.run_page.table.rowCount())]
    assert ["golden", "MCC", "0.912", "0.918", "+0.006"] in table
    assert any(row[0] == "site validation" and row[1] == "MCC" for row in table)
    assert ["int8 vs fp32", "agreement", "—", "0.994", "—"] in table
    assert d.verdict.text().startswith("✓ The gate passed")
    assert d.laptop.engine.manifest.version == f"{NEW_VERSION}-int8"
    assert d.laptop.engine.inspect(store.load_frame(store.list(limit=1)[0])).tiles
    qtbot.waitUntil(lambda: len(history.laptop_stack()) == 2, timeout=10000)
    assert [v.version for v in history.updates()] == [NEW_VERSION] and history.updates()[0].gate_passed
    assert not d.export_dir and not list(d.work_dir.glob(".export-*"))


def test_cancel_stops_the_job_and_says_so(qtbot, store, history, engine):
    d = make_dialog(qtbot, store, history, engine, mode="hold")
    d.start_button.click()
    qtbot.waitUntil(lambda: d.run_page.curves.points >= 3, timeout=RUN_MS)      # teacher + 2 student epochs
    assert d.state.stages["distil"] == "running" and d.process.running
    with qtbot.waitSignal(d.updateFinished, timeout=30000) as done:
        d.run_page.cancel_button.click()
    assert done.args == ["cancelled"]
    assert not d.process.running and d.process.proc.exitCode() == 3
    assert d.state.stages["distil"] == "cancelled" and d.verdict.text().startswith("■ Cancelled")
    assert d.laptop.swaps == [] and history.updates() == [] and d.run_page.close_button.isEnabled()


def test_a_job_that_cannot_start_ends_the_yield_it_began(qtbot, store, history, engine, tmp_path):
    """A program that is not there: the job ends at once with an error, and runningChanged says
    False after True, so the window does not stay yielded (paced, the demo device niced)."""
    d = make_dialog(qtbot, store, history, engine, program=[str(tmp_path / "no-such-distill")])
    seen = []
    d.runningChanged.connect(seen.append)
    with qtbot.waitSignal(d.updateFinished, timeout=30000) as done:
        d.start_button.click()
    assert done.args == ["error"] and seen == [True, False]


def test_a_failed_gate_names_the_rule_and_pushes_nothing_until_an_expert_overrides(qtbot, store, history, engine,
                                                                                 paired):
    pairing, pairings = paired
    d = make_dialog(qtbot, store, history, engine, mode="fail", device=paired)
    assert "test-agent" in d.push_box.text() and "running on test-agent" in d.plan_page.fields["base"].text()
    with qtbot.waitSignal(d.updateFinished, timeout=RUN_MS) as done:
        d.start_button.click()
    assert done.args == ["failed"]
    assert "site_validation_mcc" in d.verdict.text() and d.verdict.text().startswith("✗ The gate failed")
    assert d.override_button.isVisible() and "Not pushed" in d.deploy_label.text()
    qtbot.wait(500)
    assert device_model(pairing)["version"] == SHIPPED_VERSION                     # nothing pushed
    assert [m["version"] for m in DeviceClient.from_pairing(pairing).models().models] == [SHIPPED_VERSION]

    d.override_button.click()
    dialog = d.findChild(ExpertOverrideDialog)
    assert not dialog.ok.isEnabled()
    dialog.reason.setText("site set mislabelled, checked by hand")
    assert not dialog.ok.isEnabled()
    dialog.confirm.setChecked(True)
    with qtbot.waitSignal(d.deployed, timeout=RUN_MS) as deployed:
        dialog.ok.click()
    assert deployed.args[0] == f"crack-student {NEW_VERSION} live on test-agent"
    assert device_model(pairing)["version"] == f"{NEW_VERSION}-int8"
    override = history.updates()[0].override
    assert override["reason"] == "site set mislabelled, checked by hand"


def test_a_passed_gate_goes_live_on_the_device(qtbot, store, history, engine, paired, monkeypatch):
    pairing, pairings = paired
    d = make_dialog(qtbot, store, history, engine, device=paired)
    with qtbot.waitSignal(d.deployed, timeout=RUN_MS) as deployed:
        d.start_button.click()
    assert deployed.args[0] == f"crack-student {NEW_VERSION} live on test-agent"
    status = DeviceClient.from_pairing(pairing).status()
    assert status.model["version"] == f"{NEW_VERSION}-int8" and status.fps > 0
    assert d.laptop.swaps == []                                                  # the device, not the laptop

    h = ModelHistoryDialog(history, engine=lambda: d.laptop.engine, swap_engine=d.laptop.swap,
                           device=lambda: paired, make_engine=one_thread_engine)
    qtbot.addWidget(h)
    qtbot.waitUntil(lambda: h.device_table.rowCount() == 2 and h.device_rollback.isEnabled(), timeout=30000)
    rows = [h.device_table.item(r, 0).text() + " " + h.device_table.item(r, 4).text() for r in range(2)]
    assert rows[0] == f"crack-student {NEW_VERSION}-int8 ● active"
    assert "site validation 0.710" in h.device_table.item(0, 3).text()
    asked = []
    monkeypatch.setattr(confirm, "ask", lambda parent, title, text, action: asked.append(text) or False)  # "Cancel"
    h.device_rollback.click()
    assert asked and f"back to crack-student-{SHIPPED_VERSION}" in asked[0] and h.device_rollback.isEnabled()
    assert device_model(pairing)["version"] == f"{NEW_VERSION}-int8"               # declined: nothing changed
    monkeypatch.setattr(confirm, "ask", lambda *a: True)
    with qtbot.waitSignal(h.rolledBack, timeout=60000):
        h.device_rollback.click()
    assert device_model(pairing)["version"] == SHIPPED_VERSION
    # the newer version is still stored there: select it and make it active again
    qtbot.waitUntil(lambda: h.device_table.rowCount() == 2 and "active" in h.device_table.item(1, 4).text(),
                    timeout=30000)
    assert not h.device_activate.isEnabled()                        # nothing selected yet
    h.device_table.selectRow(1)
    assert not h.device_activate.isEnabled()                        # the active one: nothing to do
    h.device_table.selectRow(0)
    assert h.device_activate.isEnabled() and h.selected_device_version() == f"crack-student-{NEW_VERSION}-int8"
    with qtbot.waitSignal(h.activated, timeout=120000) as made:
        h.device_activate.click()
    assert made.args == [pairing.agent_name, f"crack-student-{NEW_VERSION}-int8"]
    assert device_model(pairing)["version"] == f"{NEW_VERSION}-int8"


def test_cancel_kills_a_job_that_ignores_sigterm(qtbot):
    """Cancel is SIGTERM; a job that ignores it is killed after the grace period, and says so."""
    from inspector.qt.update.process import UpdateProcess

    job = UpdateProcess(kill_after_ms=500)
    logs = []
    job.log.connect(lambda level, text: logs.append((level, text)))
    code = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")
    with qtbot.waitSignal(job.log, timeout=30000):            # 'ready' (not an event) reaches the log
        job.start([sys.executable, "-c", code])
    with qtbot.waitSignal(job.ended, timeout=30000) as ended:
        job.cancel()
    assert ended.args == [-1, True]
    assert ("stdout", "ready") in logs
    assert any(level == "warning" and "killed" in text for level, text in logs)
    assert not job.running


def test_the_window_update_button_and_laptop_rollback_from_the_history(qtbot, tmp_path, frames, engine, monkeypatch):
    store = reviewed_store(tmp_path / "flags", frames, engine)
    history = ModelHistory(tmp_path / "user-data")
    os.environ["FAKE_UPDATE_MODE"] = "pass"
    w = MainWindow(engine, store, Flagger(FlagPolicy(auto=False)), parse_source(sample_video()),
                   pairings=PairingStore(tmp_path / "config"), browse=lambda timeout: [], history=history)
    w.update_options = {"program": FAKE, "make_engine": one_thread_engine}
    qtbot.addWidget(w)
    w.show()
    w.start()
    try:
        w.workspaces.setCurrentIndex(1)
        w.review.filters.update_model.click()
        d = w.update_dialog
        seen = []   # after the window's own handler: what the window did when the job started and ended
        d.runningChanged.connect(lambda running: seen.append((running, w.inspector.pace, w.notice.text.text())))
        qtbot.waitUntil(lambda: d.start_button.isEnabled(), timeout=30000)
        with qtbot.waitSignal(d.deployed, timeout=RUN_MS):
            d.start_button.click()
        assert seen[0][:2] == (True, UPDATE_PACE_S) and "Update model is training" in seen[0][2], seen
        assert seen[-1][0] is False and w.inspector.pace is None and not w.notice.isVisible()
        assert w.engine.manifest.version == f"{NEW_VERSION}-int8"
        assert NEW_VERSION in w.windowTitle()
        qtbot.waitUntil(lambda: w.inspector.latest is not None
                        and w.inspector.latest.model.version == f"{NEW_VERSION}-int8", timeout=30000)
        qtbot.waitUntil(lambda: len(history.laptop_stack()) == 2, timeout=10000)
        d.close()

        w.review.filters.models.click()
        h = w.findChild(ModelHistoryDialog)
        qtbot.waitUntil(lambda: h.laptop_rollback.isEnabled(), timeout=30000)
        live_rows = [h.laptop.item(r, 0).text() for r in range(h.laptop.rowCount()) if h.laptop.item(r, 5).text()]
        assert live_rows == [f"crack-student {NEW_VERSION}"], [[h.laptop.item(r, c).text() for c in range(6)] for r in range(h.laptop.rowCount())]
        monkeypatch.setattr(confirm, "ask", lambda *a: True)  # (the question itself: test_confirm_defaults_to_cancel)
        with qtbot.waitSignal(h.rolledBack, timeout=60000):
            h.laptop_rollback.click()
        assert w.engine.manifest.version == SHIPPED_VERSION
        qtbot.waitUntil(lambda: w.inspector.latest is not None
                        and w.inspector.latest.model.version == SHIPPED_VERSION, timeout=30000)
        assert [e["kind"] for e in history.events()] == ["live", "rollback"]
    finally:
        w.shutdown()
        store.close()


def test_torch_never_enters_the_app_process(tmp_path, frames, engine):
    """A whole update run in a fresh app process (the fake job): torch is not in sys.modules."""
    store = reviewed_store(tmp_path / "flags", frames, engine)   # enough for a site-validation part of both classes
    store.close()
    child = REPO / "tests" / "update_child.py"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "FAKE_UPDATE_MODE": "pass",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(child), str(tmp_path / "flags"), str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=180, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"outcome": "passed", "deployed": f"crack-student {NEW_VERSION} live on this laptop",
                   "torch": False, "distill": False}


# ---------------------------------------------------------------------------- the real job

def _distill_update_help() -> str | None:
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "update", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    return proc.stdout if proc.returncode == 0 else None


# The real job's shortest run: --fast, two steps per epoch, one teacher epoch, a few unlabelled
# and replayed patches (about 2 minutes on 2 idle cores; the packages, the gate and the push are real).
SHORT_RUN = ["--max-steps", "2", "--teacher-epochs", "1", "--max-unlabelled", "32", "--replay-ratio", "0.25"]


@pytest.mark.slow
def test_real_distill_update_goes_live_on_a_real_agent(qtbot, store, history, engine, tmp_path):
    """Reviewed real frames → the real ``distill update`` → its verdict → the candidate live on a
    real agent. The labels here are the base model's own verdicts, so the site-validation rule
    (the candidate must beat the base there) may refuse: then the expert override pushes it.
    The agent starts once the job is done (it infers all the time: on 2 cores it would double the
    job's time), so the push runs after the verdict, by the same path the dialog takes itself."""
    help_text = _distill_update_help()
    if help_text is None:
        pytest.skip("distill update is not there yet")
    device: list = []
    extra = [a for i in range(0, len(SHORT_RUN), 2) if SHORT_RUN[i] in help_text for a in SHORT_RUN[i:i + 2]]
    d = make_dialog(qtbot, store, history, engine, program=None, fast="--fast" in help_text, extra_args=extra)
    d.device = lambda: device[0] if device else None
    d.push_box.setChecked(False)
    events = []
    d.process.event.connect(events.append)
    with qtbot.waitSignal(d.updateFinished, timeout=900000) as done:
        d.start_button.click()
    kinds = [e["event"] for e in events]
    assert {"start", "stage", "progress", "epoch", "gate", "result"} <= set(kinds), d.run_page.log_view.toPlainText()[-3000:]
    assert done.args[0] in ("passed", "failed") and d.run_page.table.rowCount() >= 4
    version = d.candidate["version"]
    assert d.laptop.swaps == [] and not d.deploy_text                              # the box was off
    agent = start_agent(tmp_path / "agent")
    try:
        device.append(pair_with(agent, tmp_path))
        pairing = device[0][0]
        with qtbot.waitSignal(d.deployed, timeout=180000) as deployed:
            if done.args[0] == "failed":
                assert d.verdict.text().startswith("✗ The gate failed") and d.state.failed_rules()
                d.override("the site labels here are the base model's own verdicts (test)")
            else:
                d.deploy()
    except BaseException:
        agent.stop()
        raise
    try:
        assert deployed.args[0] == f"crack-student {version} live on test-agent"
        status = DeviceClient.from_pairing(pairing).status()
        assert status.model["version"] == f"{version}-int8" and status.fps > 0
        assert history.updates()[0].version == version
    finally:
        agent.stop()
