"""Update model, before the run: the pieces without Qt (the command, the training base, the
events folded into a state, the model history's registry), the plan page of the update dialog
over a real flag store of real frames, and the base model chosen from the paired device.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inspector.paths import default_model
from inspector.qt.update.view import UpdateDialog
from inspector.store.database import FlagStore, ModelRef
from inspector.update.deploy import deploy_to_device
from inspector.update.history import HistoryError, ModelHistory, ModelVersion
from inspector.update.job import (UpdateState, comparison_rows, gate_of, parse_output_line, read_update_json,
                                  training_base, update_command)
from inspector.update.plan import make_plan
from support import SHIPPED_VERSION, engine  # noqa: F401  (fixtures)
from update_support import (FAKE, NEW_VERSION, REPO, LaptopView, _fake_mode, agent, frames, history,  # noqa: F401
                            make_dialog, one_thread_engine, paired, store)


# ---------------------------------------------------------------------------- no Qt: the pieces

def test_update_command_is_built_in_one_place(tmp_path):
    cmd = update_command("base.crackpkg", tmp_path / "lab", tmp_path / "out", unlabelled=tmp_path / "lab/unlabelled",
                         seed=3, fast=True, override_reason="site photos were mislabelled", pushed_by="ana",
                         program=["distill"])
    assert cmd[:2] == ["distill", "update"]
    assert cmd[cmd.index("--base") + 1] == "base.crackpkg" and cmd[cmd.index("--seed") + 1] == "3"
    assert cmd[cmd.index("--confirm") + 1] == "site photos were mislabelled" and "--override-gate" in cmd
    assert "--fast" in cmd and cmd[cmd.index("--pushed-by") + 1] == "ana"
    assert update_command("b", "l", "o", program=None)[:3] == [sys.executable, "-m", "distill.cli"]


def test_training_base_is_the_fp32_parent_of_the_int8_package():
    assert training_base(default_model()).name == f"crack-student-{SHIPPED_VERSION.removesuffix('-int8')}.crackpkg" \
        or training_base(default_model()) == default_model()


def test_progress_follows_the_time_stages_take_and_never_goes_back():
    from inspector.update import protocol as U

    state = UpdateState()
    seen = []

    def apply(kind, **e):
        state.apply({"event": kind, **e})
        seen.append(state.fraction())

    apply("start", base={}, out="x", stages=list(U.STAGES))
    apply("stage", stage="read", status="start", index=1, of=9)
    apply("stage", stage="read", status="done", index=1, of=9)
    apply("stage", stage="split", status="done", index=2, of=9)
    assert seen[-1] < 0.05                       # two short stages are not 2/9 of the job
    apply("stage", stage="adapt_teachers", status="start", index=3, of=9)
    apply("progress", stage="adapt_teachers", done=8, total=10)
    apply("progress", stage="adapt_teachers", done=1, total=10)      # the next teacher starts over
    apply("progress", stage="adapt_teachers", done=5, total=40)      # or the total grows
    assert seen == sorted(seen) and 0.25 < seen[-1] < 0.4               # the teachers are a third of it
    for name in U.STAGES[2:]:
        apply("stage", stage=name, status="done", index=0, of=9)
    assert seen[-1] == 1.0 and seen == sorted(seen)


def test_the_plan_counts_the_tiles_the_job_will_use_by_its_rules():
    """distill update (pipeline.stage_split) trains the teachers on the reviewed tiles not held out
    plus 0.5 base patches each, the student on those plus the unlabelled tiles of frames not held
    out (at most 3000; 500 with --fast) plus 0.5 base patches each: the plan says the same numbers
    (a field trial's plan said ≈ 102 replay patches where the job wanted 744)."""
    from inspector.update.plan import job_counts, site_split

    units = {f"flag:{i}": (3, 9) for i in range(20)}                      # 20 reviewed frames
    split = site_split(units)
    unlabelled = {f"flag:{i}": 12 for i in range(10)} | {f"flag:u{i}": 12 for i in range(100)}
    job = job_counts(split, unlabelled)
    held = sum(12 for i in range(10) if f"flag:{i}" in split.val)
    assert job.adapt == 12 * len(split.adapt) and job.unlabelled == 1320 - held
    assert job.replay_teachers == round(0.5 * job.adapt)
    assert job.replay_student == round(0.5 * (job.adapt + job.unlabelled))
    assert job_counts(split, unlabelled, fast=True).unlabelled == 500


def test_the_base_on_the_held_out_part_from_the_stored_verdicts():
    from inspector.update.plan import BaseModel, base_on_held_out, site_split

    base = BaseModel("crack-student", "1.1.1-int8", "0" * 64, None, "this laptop")
    units = {f"flag:{i}": (2, 2) for i in range(20)}
    split = site_split(units)
    right = [("crack", 0.9), ("crack", 0.8), ("no_crack", 0.1), ("no_crack", 0.2)]
    wrong = [("crack", 0.1), ("crack", 0.8), ("no_crack", 0.1), ("no_crack", 0.7)]
    verdicts = {src: ("crack-student 1.1.1-int8", right) for src in units}
    assert base_on_held_out(split, verdicts, base) == (1.0, 4 * len(split.val))
    verdicts = {src: ("crack-student 1.1.1-int8", wrong) for src in units}
    assert base_on_held_out(split, verdicts, base)[0] == 0.0
    verdicts = {src: ("crack-student 1.0.0-int8", right) for src in units}      # flagged by another model
    assert base_on_held_out(split, verdicts, base) is None


def test_update_state_folds_the_events_of_a_real_run(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "lab").mkdir()
    proc = subprocess.run([*FAKE, "update", "--base", str(default_model()), "--labelled", str(tmp_path / "lab"),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    state, other = UpdateState(), []
    for line in proc.stdout.splitlines():
        event, text = parse_output_line(line)
        if event is not None:
            state.apply(event)
        elif text:
            other.append(text)
    assert other == ["a library printed this to stdout"]
    assert state.outcome == "passed" and state.promoted and state.fraction() == 1.0
    assert set(state.stages.values()) == {"done"}
    assert [p[0] for p in state.curves["student"]] == [1, 2, 3] and state.curves["student"][-1][2] == 0.66
    rows = comparison_rows(gate_of(read_update_json(out)))
    assert ("golden", "MCC", 0.912, 0.918) in rows
    assert ("int8_vs_fp32", "agreement", None, 0.994) in rows
    assert parse_output_line('{"v": 1, "event": "stage"}')[1].startswith("not a valid update event")


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


# ---------------------------------------------------------------------------- the plan page

def test_plan_shows_what_will_be_used(qtbot, store, history, engine):
    d = make_dialog(qtbot, store, history, engine)
    f = {k: v.text() for k, v in d.plan_page.fields.items()}
    plan = d.plan
    assert plan.review.reviewed == 28 and plan.review.unsure == 4 and plan.review.unreviewed == 8
    assert plan.labelled_tiles == 24 * len(engine.inspect(store.load_frame(store.list(limit=1)[0])).tiles)
    assert f"{plan.labelled_tiles} tiles" in f["tiles"] and "8 unreviewed + 4 unsure" in f["unlabelled"]
    job = plan.job
    assert job.adapt == plan.labelled_tiles - plan.split.val_crack - plan.split.val_clean
    assert f["replay"].startswith(f"{job.replay_teachers} base patches for the teachers, {job.replay_student} for")
    # the labels here are the model's own verdicts: the base is perfect on the held-out part, the
    # gate cannot see a gain there, and the plan says so before Start (Start stays on)
    assert plan.base_held_out[0] == 1.0 and plan.base_already_high and d.plan_page.caution_label.isVisible()
    assert "MCC 1.000" in d.plan_page.caution_label.text() and "the base scores MCC 1.000" in f["validation"]
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
        assert dialog.plan_page.missing_label.isVisible()
        assert "label at least 3 more frames with a crack tile" in dialog.plan_page.missing_label.text()
        assert "0 crack" in dialog.plan_page.fields["validation"].text()
        assert not dialog.start_button.isEnabled()
        dialog.start()
        assert dialog.pages.currentIndex() == 0 and dialog.state is None
    finally:
        store.close()


def test_the_base_is_the_devices_model_when_this_laptop_has_it_else_the_laptops_with_the_reason(
        store, history, engine, paired, agent, tmp_path):
    """The dialog's base model follows the device: the same model as the laptop's; a version only
    the device has (no weights here: the laptop's model, and the note says why); that version
    once the laptop's history holds it; a device that does not answer."""
    sys.path.insert(0, str(REPO / "tests"))
    from fake_update import write_candidates

    pairing, pairings = paired
    m = engine.manifest
    plan = make_plan(store, m, default_model(), pairing=pairing, history=history)
    assert (plan.base.version, plan.base.where, plan.base.note) == (m.version, "test-agent", "")
    assert plan.device == "test-agent"

    (tmp_path / "candidates").mkdir()
    made = write_candidates(default_model(), tmp_path / "candidates", NEW_VERSION)
    deploy_to_device(pairing, pairings.signing_key(), made["int8"])
    plan = make_plan(store, m, default_model(), pairing=pairing, history=history)
    assert plan.base.version == m.version and plan.base.path == default_model()
    assert f"runs crack-student {NEW_VERSION}-int8, which this laptop does not have" in plan.base.note

    history.add(ModelVersion(m.name, NEW_VERSION, m.version, "2026-12-03T00:00:00+00:00", int8=made["int8"],
                             fp32=made["fp32"], checkpoint=made["checkpoint"]))
    plan = make_plan(store, m, default_model(), pairing=pairing, history=history)
    assert (plan.base.version, plan.base.where, plan.base.note) == (f"{NEW_VERSION}-int8", "test-agent", "")
    assert plan.base.path == Path(made["int8"])

    agent.stop()
    plan = make_plan(store, m, default_model(), pairing=pairing, history=history)
    assert plan.base.version == m.version and plan.base.where == "this laptop"
    assert plan.base.note.startswith("test-agent did not answer")



def _finished_update(folder: Path, took: float, labelled: int, unlabelled: int, *, resumed=()) -> str:
    import json

    folder.mkdir(parents=True)
    record = {"data": {"site": {"labelled": {"patches": labelled}, "unlabelled": {"patches": unlabelled}}},
              "recipe": {"student": {"epochs": 3}, "teachers": {"epochs": 4}}, "resumed": list(resumed),
              "timings_s": {"read": 0.25 * took, "distil": 0.75 * took}}
    (folder / "update.json").write_text(json.dumps(record))
    return str(folder / "update.json")


def test_the_estimate_learns_this_machine_from_its_last_update(tmp_path):
    from inspector.update.plan import estimate_seconds, machine_factor

    h = ModelHistory(tmp_path / "data")
    assert machine_factor(h)[0] == 1.0 and "first update" in machine_factor(h)[1]
    reference = estimate_seconds(200, 400)

    def add(version, took, **kw):
        h.add(ModelVersion("crack-student", version, "1.1.1", "2026-12-06T00:00:00Z", int8=str(tmp_path / f"{version}.pkg"),
                           update_json=_finished_update(tmp_path / version, took, 200, 400, **kw)))

    add("1.2.0", 2 * reference)
    factor, basis = machine_factor(h)
    assert factor == pytest.approx(2.0) and "1.2.0" in basis
    assert estimate_seconds(100, 50, factor=factor) == pytest.approx(2 * estimate_seconds(100, 50))
    add("1.3.0", 0.5 * reference, resumed=["adapt_teachers"])     # skipped stages: says nothing of the machine
    add("1.4.0", 40 * reference)                                  # a laptop asleep mid-run: outside the range
    assert machine_factor(h)[0] == pytest.approx(2.0)
    add("1.5.0", 0.8 * reference)
    assert machine_factor(h)[0] == pytest.approx(0.8)              # the newest usable run counts
    Path(tmp_path / "1.5.0" / "update.json").unlink()              # an update folder the user deleted
    assert machine_factor(h)[0] == pytest.approx(2.0)
