"""Update model in the app (pytest-qt, offscreen): the update dialog over a real flag store of
real frames, the job as a separate process, its events on screen, Cancel, the gate's verdict,
the push to a real device agent on loopback and the swap into this laptop's live view; the
model history and its rollbacks.

The fast tests run ``tests/fake_update.py`` in place of ``distill update``: the same arguments,
real events (made with inspector.update.protocol), a real update.json and real candidate
packages (the shipped ones re-written under version 1.2.0). The slow test runs the real
``distill update`` on its short path.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inspector.update import plan as MU
from inspector.link.client import DeviceClient, PairingStore, client_name
from inspector.edge.engine import InferenceEngine
from inspector.live.flagging import Flagger, FlagPolicy
from inspector.update.history import HistoryError, ModelHistory, ModelVersion
from inspector.paths import default_model, sample_video
from inspector.qt.update.history_view import ModelHistoryDialog
from inspector.qt.device.override_dialog import ExpertOverrideDialog
from inspector.qt.update.view import UpdateDialog
from inspector.qt.window import MainWindow
from inspector.capture.sources import parse_source
from inspector.store.database import FlagStore, ModelRef
from agent_support import Agent
from support import SHIPPED_VERSION, engine, sample_video_results  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
FAKE = [sys.executable, str(REPO / "tests" / "fake_update.py")]
NEW_VERSION = "1.2.0"          # what the fake job makes from the shipped 1.1.0
RUN_MS = 120000


def one_thread_engine(path):
    return InferenceEngine(path, threads=1)


# ---------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def frames(engine):
    """36 frames of the sample video (every 15th) with the shipped model's result."""
    return sample_video_results(engine, 36, 15)


def reviewed_store(root: Path, frames, engine) -> FlagStore:
    """A store of the real frames: 24 reviewed (accepted verdicts: crack frames with their tiles,
    clean ones), 4 unsure, 8 unreviewed."""
    store = FlagStore(root)
    m = engine.manifest
    model = ModelRef(m.name, m.version, m.model_sha256)
    for k, (rgb, result) in enumerate(frames):
        rec = store.add(rgb, result.heatmap, result.tiles, reason="manual", source="camera 0", model=model,
                        crack_prob_max=result.crack_prob_max)
        if k < 24:
            tiles = tuple("crack" if t.crack_prob >= 0.5 else "no_crack" for t in result.tiles)
            label = "crack" if "crack" in tiles else "no_crack"
            store.set_review(rec.id, label=label, tile_labels=tiles, reviewer="tester")
        elif k < 28:
            store.set_review(rec.id, label="unsure", reviewer="tester")
    return store


@pytest.fixture
def store(tmp_path, frames, engine):
    s = reviewed_store(tmp_path / "flags", frames, engine)
    yield s
    s.close()


@pytest.fixture
def history(tmp_path):
    return ModelHistory(tmp_path / "user-data")


class LaptopView:
    """Stands for the window: the engine the live view runs, swapped by the dialog."""

    def __init__(self, engine):
        self.engine = engine
        self.swaps = []

    def swap(self, engine):
        self.engine = engine
        self.swaps.append(engine)


def make_dialog(qtbot, store, history, engine, *, mode="pass", device=None, tmp_path=None, **options):
    os.environ["FAKE_UPDATE_MODE"] = mode
    laptop = LaptopView(engine)
    dialog = UpdateDialog(store, engine=lambda: laptop.engine, swap_engine=laptop.swap,
                          device=(lambda: device), history=history, program=options.pop("program", FAKE),
                          make_engine=one_thread_engine, **options)
    qtbot.addWidget(dialog)
    dialog.laptop = laptop
    dialog.show()
    qtbot.waitUntil(lambda: dialog.start_button.isEnabled(), timeout=30000)
    return dialog


@pytest.fixture(autouse=True)
def _fake_mode():
    yield
    os.environ.pop("FAKE_UPDATE_MODE", None)


def stage_states(dialog) -> dict:
    return dict(dialog.state.stages)


# ---------------------------------------------------------------------------- the device

def start_agent(root: Path) -> Agent:
    """A real agent on loopback (TLS) on the sample video with the shipped model."""
    root.mkdir(parents=True, exist_ok=True)
    return Agent(root / "data", "--source", str(sample_video()), "--model", str(default_model()), "--name",
                 "test-agent", tls=True)


def pair_with(agent: Agent, root: Path):
    """(Pairing, PairingStore) of this app with ``agent``, the pairings in ``root``."""
    pairings = PairingStore(root / "config")
    pairing = DeviceClient("127.0.0.1", agent.port, tls=True, cert_sha256=agent.cert_sha256).pair(
        agent.pairing_code_file(), client_name(), pairings.signing_key())
    pairings.save(pairing)
    client, deadline = DeviceClient.from_pairing(pairing), time.monotonic() + 60
    while not (client.status().model and client.status().fps > 0):    # the model in service, frames flowing
        assert time.monotonic() < deadline, "the agent put no model in service"
        time.sleep(0.2)
    return pairing, pairings


@pytest.fixture
def agent(tmp_path):
    """One agent per test: it infers all the time, and must not compete with the slow test's job."""
    a = start_agent(tmp_path / "agent")
    yield a
    a.stop()


@pytest.fixture
def paired(agent, tmp_path):
    return pair_with(agent, tmp_path)


def device_model(pairing) -> dict:
    return DeviceClient.from_pairing(pairing).status().model


# ---------------------------------------------------------------------------- no Qt: the pieces

def test_update_command_is_built_in_one_place(tmp_path):
    cmd = MU.update_command("base.crackpkg", tmp_path / "lab", tmp_path / "out", unlabelled=tmp_path / "lab/unlabelled",
                            seed=3, fast=True, override_reason="site photos were mislabelled", pushed_by="ana",
                            program=["distill"])
    assert cmd[:2] == ["distill", "update"]
    assert cmd[cmd.index("--base") + 1] == "base.crackpkg" and cmd[cmd.index("--seed") + 1] == "3"
    assert cmd[cmd.index("--confirm") + 1] == "site photos were mislabelled" and "--override-gate" in cmd
    assert "--fast" in cmd and cmd[cmd.index("--pushed-by") + 1] == "ana"
    assert MU.update_command("b", "l", "o", program=None)[:3] == [sys.executable, "-m", "distill.cli"]


def test_training_base_is_the_fp32_parent_of_the_int8_package():
    assert MU.training_base(default_model()).name == f"crack-student-{SHIPPED_VERSION.removesuffix('-int8')}.crackpkg" \
        or MU.training_base(default_model()) == default_model()


def test_update_state_folds_the_events_of_a_real_run(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "lab").mkdir()
    proc = subprocess.run([*FAKE, "update", "--base", str(default_model()), "--labelled", str(tmp_path / "lab"),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    state, other = MU.UpdateState(), []
    for line in proc.stdout.splitlines():
        event, text = MU.parse_output_line(line)
        if event is not None:
            state.apply(event)
        elif text:
            other.append(text)
    assert other == ["a library printed this to stdout"]
    assert state.outcome == "passed" and state.promoted and state.fraction() == 1.0
    assert set(state.stages.values()) == {"done"}
    assert [p[0] for p in state.curves["student"]] == [1, 2, 3] and state.curves["student"][-1][2] == 0.66
    rows = MU.comparison_rows(MU.gate_of(MU.read_update_json(out)))
    assert ("golden", "MCC", 0.912, 0.918) in rows
    assert ("int8_vs_fp32", "agreement", None, 0.994) in rows
    assert MU.parse_output_line('{"v": 1, "event": "stage"}')[1].startswith("not a valid update event")


def test_model_history_registry(tmp_path):
    h = ModelHistory(tmp_path / "data")
    assert [v.version for v in h.shipped()] == [SHIPPED_VERSION.removesuffix("-int8")]
    h.add(ModelVersion("crack-student", "1.2.0", "1.1.0", "2026-01-01T00:00:00Z", int8=str(tmp_path / "a.crackpkg"),
                       gate_passed=False))
    h.record_override("crack-student", "1.2.0", "site photos mislabelled", "ana")
    assert h.updates()[0].override["reason"] == "site photos mislabelled"
    with pytest.raises(HistoryError):
        h.laptop_rollback()
    h.record_laptop_live("crack-student", "1.2.0-int8", "new.crackpkg", previous=("crack-student", "1.1.0-int8", "old"))
    assert h.laptop_rollback()["package"] == "old"
    assert [e["kind"] for e in h.events()] == ["override", "live", "rollback"]
    (tmp_path / "data" / "model-history.json").write_text("{not json")
    with pytest.raises(HistoryError, match="damaged"):
        h.updates()


# ---------------------------------------------------------------------------- the dialog, fake job

def test_plan_shows_what_will_be_used(qtbot, store, history, engine):
    d = make_dialog(qtbot, store, history, engine)
    f = {k: v.text() for k, v in d.fields.items()}
    plan = d.plan
    assert plan.review.reviewed == 28 and plan.review.unsure == 4 and plan.review.unreviewed == 8
    assert plan.labelled_tiles == 24 * len(engine.inspect(store.load_frame(store.list(limit=1)[0])).tiles)
    assert f"{plan.labelled_tiles} tiles" in f["tiles"] and "8 unreviewed + 4 unsure" in f["unlabelled"]
    assert f["replay"].startswith("base data replay, chosen by the job")
    assert engine.manifest.version in f["base"] and "this laptop" in f["base"]
    assert "estimate" in f["estimate"]
    assert d.push_box.isChecked() and "this laptop's live view" in d.push_box.text()


def test_plan_says_what_is_missing_and_start_stays_off(qtbot, tmp_path, frames, engine, history):
    """Reviewed frames that cannot give the site-validation part 5 crack tiles (clean frames and a
    single frame with crack tiles): the plan says what to label, Start stays off, start() does nothing."""
    store = FlagStore(tmp_path / "few")
    m = engine.manifest
    model = ModelRef(m.name, m.version, m.model_sha256)
    try:
        for k, (rgb, result) in enumerate(frames[:12]):
            rec = store.add(rgb, result.heatmap, result.tiles, reason="manual", source="camera 0", model=model,
                            crack_prob_max=result.crack_prob_max)
            n = len(result.tiles)
            tiles = tuple("crack" if (k == 0 and i < 2) else "no_crack" for i in range(n))
            store.set_review(rec.id, label="crack" if k == 0 else "no_crack", tile_labels=tiles, reviewer="tester")
        os.environ["FAKE_UPDATE_MODE"] = "pass"
        laptop = LaptopView(engine)
        dialog = UpdateDialog(store, engine=lambda: laptop.engine, swap_engine=laptop.swap, history=history,
                              program=FAKE, make_engine=one_thread_engine)
        qtbot.addWidget(dialog)
        dialog.show()
        qtbot.waitUntil(lambda: dialog.plan is not None, timeout=30000)
        plan = dialog.plan
        assert plan.labelled_tiles > 0 and plan.missing and plan.split.val_crack == 0
        assert dialog.missing_label.isVisible()
        assert "label at least 3 more frames with a crack tile" in dialog.missing_label.text()
        assert "0 crack" in dialog.fields["validation"].text()
        assert not dialog.start_button.isEnabled()
        dialog.start()
        assert dialog.pages.currentIndex() == 0 and dialog.state is None
    finally:
        store.close()


def test_progress_curves_stages_then_the_new_model_runs_in_the_laptops_view(qtbot, store, history, engine):
    d = make_dialog(qtbot, store, history, engine)
    with qtbot.waitSignal(d.deployed, timeout=RUN_MS) as deployed:
        d.start_button.click()
    assert deployed.args[0] == f"crack-student {NEW_VERSION} live on this laptop"
    assert d.state.outcome == "passed" and set(stage_states(d).values()) == {"done"}
    assert d.bar.value() == d.bar.maximum()
    assert d.curves.points == 4                               # 3 student epochs + 1 teacher
    items = [d.stage_list.item(i).text() for i in range(d.stage_list.count())]
    assert len(items) == 9 and all(t.startswith("✓") for t in items)
    log_text = d.log_view.toPlainText()
    assert "a library printed this to stdout" in log_text and "fake update: labelled" in log_text
    table = [[d.table.item(r, c).text() for c in range(5)] for r in range(d.table.rowCount())]
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
    qtbot.waitUntil(lambda: d.curves.points >= 3, timeout=RUN_MS)      # teacher + 2 student epochs
    assert d.state.stages["distil"] == "running" and d.process.running
    with qtbot.waitSignal(d.updateFinished, timeout=30000) as done:
        d.cancel_button.click()
    assert done.args == ["cancelled"]
    assert not d.process.running and d.process.proc.exitCode() == 3
    assert d.state.stages["distil"] == "cancelled" and d.verdict.text().startswith("■ Cancelled")
    assert d.laptop.swaps == [] and history.updates() == [] and d.close_button.isEnabled()


def test_a_failed_gate_names_the_rule_and_pushes_nothing_until_an_expert_overrides(qtbot, store, history, engine,
                                                                                 paired):
    pairing, pairings = paired
    d = make_dialog(qtbot, store, history, engine, mode="fail", device=paired)
    assert "test-agent" in d.push_box.text() and "running on test-agent" in d.fields["base"].text()
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


def test_a_passed_gate_goes_live_on_the_device(qtbot, store, history, engine, paired):
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
    with qtbot.waitSignal(h.rolledBack, timeout=60000):
        h.device_rollback.click()
    assert device_model(pairing)["version"] == SHIPPED_VERSION


def test_the_base_is_the_devices_model_when_this_laptop_has_it_else_the_laptops_with_the_reason(
        store, history, engine, paired, agent, tmp_path):
    """The dialog's base model follows the device: the same model as the laptop's; a version only
    the device has (no weights here: the laptop's model, and the note says why); that version
    once the laptop's history holds it; a device that does not answer."""
    sys.path.insert(0, str(REPO / "tests"))
    from fake_update import write_candidates

    pairing, pairings = paired
    m = engine.manifest
    plan = MU.make_plan(store, m, default_model(), pairing=pairing, history=history)
    assert (plan.base.version, plan.base.where, plan.base.note) == (m.version, "test-agent", "")
    assert plan.device == "test-agent"

    (tmp_path / "candidates").mkdir()
    made = write_candidates(default_model(), tmp_path / "candidates", NEW_VERSION)
    MU.deploy_to_device(pairing, pairings.signing_key(), made["int8"])
    plan = MU.make_plan(store, m, default_model(), pairing=pairing, history=history)
    assert plan.base.version == m.version and plan.base.path == default_model()
    assert f"runs crack-student {NEW_VERSION}-int8, which this laptop does not have" in plan.base.note

    history.add(ModelVersion(m.name, NEW_VERSION, m.version, "2026-12-03T00:00:00+00:00", int8=made["int8"],
                             fp32=made["fp32"], checkpoint=made["checkpoint"]))
    plan = MU.make_plan(store, m, default_model(), pairing=pairing, history=history)
    assert (plan.base.version, plan.base.where, plan.base.note) == (f"{NEW_VERSION}-int8", "test-agent", "")
    assert plan.base.path == Path(made["int8"])

    agent.stop()
    plan = MU.make_plan(store, m, default_model(), pairing=pairing, history=history)
    assert plan.base.version == m.version and plan.base.where == "this laptop"
    assert plan.base.note.startswith("test-agent did not answer")


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


def test_the_window_update_button_and_laptop_rollback_from_the_history(qtbot, tmp_path, frames, engine):
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
        qtbot.waitUntil(lambda: d.start_button.isEnabled(), timeout=30000)
        with qtbot.waitSignal(d.deployed, timeout=RUN_MS):
            d.start_button.click()
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
    assert {"start", "stage", "progress", "epoch", "gate", "result"} <= set(kinds), d.log_view.toPlainText()[-3000:]
    assert done.args[0] in ("passed", "failed") and d.table.rowCount() >= 4
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
