"""The agent checks a model on the numeric path it will run, with that path's rule.

A real agent on loopback runs the shipped INT8 student on the emulated accelerator (dithered
requantization, float16 float parts: ``--numeric-path emulated-tensorrt``) and accepts it under
the accelerator rule, saying so in its status; a wrong model is refused at upload, and a model
whose check fails on the device's provider is refused before it is activated.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import pytest

from agent_support import Agent, pair_token, stopped_cleanly, wait_status
from inspector.link import protocol
from inspector.agent.runtime import AgentRuntime
from inspector.edge.engine import InferenceEngine
from inspector.edge.package import load_package, write_package
from inspector.paths import default_model, sample_video
from inspector.link.protocol import API
from inspector.link.signing import SigningKey
from inspector.capture.sources import FrameGrabber, parse_source

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "numeric_paths"))
import wrong_models  # noqa: E402
from test_agent_runtime import FakeRepository  # noqa: E402


def wrong_package(dst: Path, version: str, key: SigningKey | None = None) -> Path:
    """The shipped student with its first convolution perturbed (0.3x its weights' spread),
    under a consistent manifest: right hash, optionally signed, only its numbers are wrong."""
    p = load_package(default_model(), verify_reference=False)
    manifest = p.manifest.to_dict()
    manifest.update(version=version, signature=None)
    onnx_bytes = wrong_models.perturb_layer(p.onnx_bytes, rel=0.3, layer=0)
    if key is not None:
        manifest["model_sha256"] = hashlib.sha256(onnx_bytes).hexdigest()
        manifest = key.sign_manifest(manifest)
    return write_package(dst, manifest, onnx_bytes, p.reference, verify=False)


@pytest.fixture(scope="module")
def emulated_agent(tmp_path_factory):
    a = Agent(tmp_path_factory.mktemp("agent") / "data", "--numeric-path", "emulated-tensorrt", tls=False)
    yield a
    stopped_cleanly(a)


def test_the_agent_accepts_the_model_on_the_emulated_accelerator_and_says_how(emulated_agent):
    token = pair_token(emulated_agent)
    st = wait_status(emulated_agent, token, lambda s: s.model is not None and s.verification is not None)
    v = st.verification
    assert v["rule"] == "accelerator-int8" and v["passed"] is True and v["verdict_mismatches"] == 0
    assert 0 < v["probs_max_abs"] <= 0.04 and v["n_images"] >= 32   # really another numeric path
    assert st.isa and v["isa"] == st.isa and v["onnxruntime"]
    assert "reference check of crack-student" in emulated_agent.log() and "rule accelerator-int8" in emulated_agent.log()


def test_a_wrong_model_is_refused_at_upload_with_the_rule_and_its_numbers(emulated_agent, tmp_path):
    key = SigningKey.generate()
    token = pair_token(emulated_agent, key=key.public_b64())
    bad = wrong_package(tmp_path / "wrong.crackpkg", "1.6.0-int8", key)
    status, _, body = emulated_agent.request("POST", f"{API}/models", bad.read_bytes(), token=token,
                                             headers={"Content-Type": protocol.PACKAGE_CONTENT_TYPE})
    assert status == 422, body
    err = json.loads(body)["error"]
    assert err["code"] == "invalid_package" and "under rule cpu-int8" in err["message"]
    assert "verdicts differ on" in err["message"] and "max |Δp| = " in err["message"]
    status, _, body = emulated_agent.request("GET", f"{API}/models", token=token)
    assert "1.6.0-int8" not in body.decode()


def test_a_model_failing_its_check_on_the_device_is_never_activated(tmp_path):
    """The device's provider computes the model out of bounds (here: a wrong model behind a
    repository that holds it): the activation fails before the swap, naming the rule and the
    numbers, and the model in service stays."""
    good, bad = default_model(), wrong_package(tmp_path / "bad-2.crackpkg", "1.6.0-int8")
    paths = {"good-1": good, "bad-2": bad}
    repo = FakeRepository(list(paths), "good-1")
    repo.active_path = lambda: paths[repo.active_id]
    rt = AgentRuntime(repo, FrameGrabber(parse_source(sample_video()), loop=True, realtime=True),
                      engine_factory=lambda path: InferenceEngine(path, threads=1, numeric_path="emulated-tensorrt"),
                      probation_timeout=10.0)
    rt.start(wait_model=True)
    try:
        assert rt.model.id == "good-1"
        rt.start_activation("bad-2")
        deadline = time.monotonic() + 60
        while rt.activation().state not in ("failed", "live") and time.monotonic() < deadline:
            time.sleep(0.05)
        act = rt.activation()
        assert act.state == "failed", act
        assert "refused by its reference check on this device, never activated" in act.message
        assert "under rule accelerator-int8" in act.message and "max |Δp| = " in act.message
        assert rt.model.id == "good-1" and "bad-2" in repo.failed
        assert rt.status()["verification"]["rule"] == "accelerator-int8"
    finally:
        rt.stop()
