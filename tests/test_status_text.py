"""The device panel's fields say what is true, or that they wait (issue 22: "Model none, 0.0
inferred" for seconds while the device was starting its model)."""
from __future__ import annotations

from inspector.link import protocol as P
from inspector.qt.device.status_text import status_fields


def status(**kw) -> P.Status:
    base = dict(agent_id="a" * 16, agent_name="pier-3", camera={"source": "0", "state": "live", "fps": 30.0},
                model=None, provider="CPUExecutionProvider", fps=0.0, clients=1, events=[], uptime_s=2.0)
    return P.Status(**(base | kw))


def test_a_device_starting_its_model_says_so():
    f = status_fields(status(starting=True), "10.0.0.5:8443")
    assert f["model"][0] == "starting: loading and checking its model…"
    assert f["fps"][0] == "— (waiting for the model)"


def test_a_device_without_a_model_says_none_and_a_serving_one_its_rate_and_tile_share():
    assert status_fields(status(), None)["model"][0] == "none"
    f = status_fields(status(model={"id": "crack-student-1.1.1-int8", "name": "crack-student", "version": "1.1.1-int8",
                                    "sha256": "0" * 64}, fps=29.7, tile_share=0.06), None)
    assert f["model"][0].startswith("crack-student 1.1.1-int8") and f["fps"][0] == "29.7 inferred · 6 % tiles"


def test_the_wire_carries_starting_and_old_agents_mean_not_starting():
    s = status(starting=True)
    assert P.Status.from_dict(s.to_dict()).starting is True
    old = s.to_dict()
    del old["starting"], old["tile_share"]
    assert P.Status.from_dict(old).starting is False and P.Status.from_dict(old).tile_share is None
