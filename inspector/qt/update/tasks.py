"""The update room's work off the GUI thread: what the update dialog and the model history hand to
the job runner (:func:`inspector.qt.jobs.run`): export the store, read a run's result, register
the candidate in the model history, push it to the device, load a package into an engine.

Plain functions on plain objects (no widget), so both dialogs import them and neither imports
the other for them.
"""
from __future__ import annotations

from pathlib import Path

from inspector.qt.startup import default_threads
from inspector.update.deploy import deploy_to_device
from inspector.update.history import ModelHistory, ModelVersion
from inspector.update.job import read_update_json
from inspector.update.plan import BaseModel, read_manifest


def default_make_engine(path):
    """An InferenceEngine on ``path`` with the app's thread count (called on a job thread)."""
    from inspector.edge.engine import InferenceEngine

    return InferenceEngine(path, threads=default_threads())


def export_store(store, folder: Path):
    """The reviewed flags (and the unreviewed ones, for the teachers) as the job's data set."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    return store.export_dataset(folder, include_unreviewed=True)


def read_result(result: dict) -> dict | None:
    """The run's update.json (its record) named by the job's ``result`` event, if it is one."""
    path = Path(result["update_json"])
    return read_update_json(path.parent) if path.name == "update.json" else None


def register_candidate(history: ModelHistory, base: BaseModel, candidate: dict, result: dict,
                       gate: dict | None) -> None:
    """The candidate of a finished run in the model history, with its parent, gate and metrics."""
    int8 = candidate.get("int8")
    m = read_manifest(int8) if int8 else {}
    history.add(ModelVersion(name=m.get("name", base.name), version=str(candidate.get("version", "")),
                             parent=base.version, created=m.get("created", ""), int8=int8,
                             fp32=candidate.get("fp32"), checkpoint=candidate.get("checkpoint"),
                             update_json=result.get("update_json"), gate_passed=bool(gate and gate.get("passed")),
                             metrics=(gate or {}).get("metrics") or {}))


def push_to_device(pairings, pairing, package, history: ModelHistory, label: str, progress):
    """Sign, push and activate ``package`` on the paired device, wait until it runs, record it."""
    info, status = deploy_to_device(pairing, pairings.signing_key(), package, progress=progress)
    history.record_event("device", f"{label} live on {pairing.agent_name}", device=pairing.agent_name,
                         version=info.version)
    return info, status
