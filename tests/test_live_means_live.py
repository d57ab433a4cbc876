""""Live on DEVICE" means frames computed by the new model and passed by the agent's check.

The agent counts the frames of the model in service from the swap (its FPS window too), so the
old model's frames never vouch for the new one; the app's ``wait_until_live`` waits for those,
and a device whose camera gives no frames is reported as activated, not live.
"""
from __future__ import annotations

import time

import pytest

from inspector.link import protocol
from inspector.update.deploy import NotLiveError, wait_until_live
from inspector.update.plan import ModelUpdateError
from test_agent_runtime import make_runtime, model_ids  # noqa: F401 - the fixture

SHA = "ab" * 32


def test_the_status_counts_only_the_new_models_frames_after_a_swap(make_runtime):  # noqa: F811
    rt, _ = make_runtime(["good-1", "good-2"], "good-1", probation_frames=3)
    with rt.subscribe() as sub:
        model_ids(sub, 8)
        before = rt.status()
        assert before["model"]["id"] == "good-1" and before["model_frames"] >= 8 and before["model_checked"]
        rt.activate("good-2")
        after = rt.status()
        assert after["model"]["id"] == "good-2"
        assert after["model_frames"] < before["model_frames"]          # counted afresh from the swap
        deadline = time.monotonic() + 10
        while not rt.status()["model_checked"] and time.monotonic() < deadline:
            time.sleep(0.05)
        st = rt.status()
        assert st["model_checked"] and st["model_frames"] >= 3 and st["fps"] > 0
        protocol.Status(agent_id="a" * 16, agent_name="x", camera=st["camera"], model=st["model"],
                        provider=st["provider"], fps=st["fps"], clients=0, events=[], uptime_s=1.0,
                        model_frames=st["model_frames"], model_checked=st["model_checked"]).validate()


class FakeClient:
    """``status()`` answers from a list of scripted states, the last one forever."""

    def __init__(self, *states: dict):
        self.states = list(states)

    def status(self) -> protocol.Status:
        s = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return protocol.Status(agent_id="a" * 16, agent_name="bridge-cam", camera=s.get("camera", {
            "source": "cam", "state": "live", "message": "", "fps": 30.0}), model=s.get("model"),
            provider="CPUExecutionProvider", fps=s.get("fps", 0.0), clients=1, events=[], uptime_s=9.0,
            model_frames=s.get("frames", 0), model_checked=s.get("checked", False))


NEW = {"name": "crack-student", "version": "1.2.0-int8", "sha256": SHA, "id": "crack-student-1.2.0-int8"}


def test_the_old_models_fps_does_not_make_the_new_one_live():
    # before: status.fps > 0 from the old model's window satisfied it at once
    client = FakeClient({"model": NEW, "fps": 24.0, "frames": 0, "checked": False})
    with pytest.raises(ModelUpdateError, match="did not report crack-student 1.2.0-int8 live on checked frames"):
        wait_until_live(client, "crack-student", "1.2.0-int8", SHA, timeout=0.3, poll=0.05)


def test_live_after_frames_of_the_new_model_passed_the_check():
    client = FakeClient({"model": NEW, "fps": 24.0, "frames": 2, "checked": False},
                        {"model": NEW, "fps": 24.0, "frames": 7, "checked": True})
    st = wait_until_live(client, "crack-student", "1.2.0-int8", SHA, timeout=5, poll=0.01)
    assert st.model_frames == 7 and st.model_checked


@pytest.mark.parametrize("state", ["reconnecting", "ended", "failed"])
def test_a_camera_without_frames_is_activated_not_live(state):
    # before: any camera state but live/connecting counted as live with no frames
    client = FakeClient({"model": NEW, "camera": {"source": "cam", "state": state, "message": "no signal",
                                                  "fps": 0.0}})
    with pytest.raises(NotLiveError, match=f"active on bridge-cam, but its camera is {state}.*not live"):
        wait_until_live(client, "crack-student", "1.2.0-int8", SHA, timeout=5, poll=0.01)
