"""Shared by the update-room tests (tests/test_update_*.py, test_demo): the fake job in place of
``distill update``, a flag store of real reviewed frames, the dialog as the window makes it, and a
real device agent on loopback paired with this app.

``tests/fake_update.py`` takes the same arguments as ``distill update`` and writes real events
(made with inspector.update.protocol), a real update.json and real candidate packages (the
shipped ones re-written under version :data:`NEW_VERSION`); ``FAKE_UPDATE_MODE`` picks its run
("pass", "fail", "hold").
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from agent_support import Agent
from inspector.edge.engine import InferenceEngine
from inspector.link.client import DeviceClient
from inspector.link.pairing import PairingStore, client_name
from inspector.paths import default_model, sample_video
from inspector.qt.update.view import UpdateDialog
from inspector.store.database import FlagStore, ModelRef
from inspector.update.history import ModelHistory
from support import sample_video_results

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

