"""Activation without a long request, and the TensorRT engine cache of each model version.

No GPU here: the engine cache is tested as logic (the provider options built for a version's
folder, one folder per version, a cached engine kept for the same model and thrown away when the
model or the options change) and through a real CPU session that was *offered* TensorRT; the
asynchronous activation runs the runtime with fake engines whose load the test holds, so the
building phase lasts exactly as long as the test wants."""
from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from inspector.edge import engine_cache
from inspector.link import framing, openapi, protocol
from inspector.agent.repository import ModelRepository
from inspector.agent.repository_state import ENGINES_DIR
from inspector.agent.runtime import AgentRuntime
from inspector.edge.engine import CPU, InferenceEngine
from inspector.edge.contract import INPUT_NAME
from inspector.paths import default_model, sample_video
from inspector.link.protocol import ApiError
from inspector.capture.sources import FrameGrabber, parse_source
from test_agent_runtime import FakeEngine, FakeRepository

TRT = engine_cache.TENSORRT


# ---------------------------------------------------------------------------- the cache as logic

def test_tensorrt_options_for_a_version_folder(tmp_path):
    folder = tmp_path / "engines" / "ab12" / engine_cache.CACHE_DIR
    opts = engine_cache.tensorrt_options(folder, input_name="image", input_size=96, opt_batch=12, max_batch=12,
                                         int8=True)
    assert opts == {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(folder),
                    "trt_timing_cache_enable": "True", "trt_int8_enable": "True", "trt_fp16_enable": "False",
                    "trt_profile_min_shapes": "image:1x96x96x3", "trt_profile_opt_shapes": "image:12x96x96x3",
                    "trt_profile_max_shapes": "image:12x96x96x3"}
    assert all(isinstance(v, str) for v in opts.values())    # onnxruntime takes strings
    fp32 = engine_cache.tensorrt_options(folder, input_name="image", input_size=224, opt_batch=4, max_batch=8,
                                         int8=False)
    assert fp32["trt_int8_enable"] == "False" and fp32["trt_profile_max_shapes"] == "image:8x224x224x3"
    for opt, mx in ((0, 4), (5, 4)):
        with pytest.raises(ValueError, match="opt_batch"):
            engine_cache.tensorrt_options(folder, input_name="image", input_size=96, opt_batch=opt, max_batch=mx,
                                          int8=True)


def test_a_cached_engine_is_reused_for_the_same_model_and_dropped_when_it_changes(tmp_path):
    folder = tmp_path / "tensorrt"
    opts = engine_cache.tensorrt_options(folder, input_name="image", input_size=96, opt_batch=12, max_batch=12,
                                         int8=True)
    key = engine_cache.cache_key("a" * 64, "1.18.0", opts)
    assert "trt_engine_cache_path" not in key["options"]     # where, not what: moving the data folder keeps it
    assert engine_cache.prepare(folder, key) == "new"
    engine = folder / "TensorrtExecutionProvider_TRTKernel_graph_main_0_0_sm53.engine"
    engine.write_bytes(b"built for a")                        # what onnxruntime writes during the build
    assert engine_cache.prepare(folder, key) == "reused" and engine.read_bytes() == b"built for a"

    state = engine_cache.prepare(folder, engine_cache.cache_key("b" * 64, "1.18.0", opts))   # another model
    assert state == "invalidated: model_sha256 changed" and not engine.exists()
    engine.write_bytes(b"built for b")
    state = engine_cache.prepare(folder, engine_cache.cache_key("b" * 64, "1.19.2", opts))   # another onnxruntime
    assert state == "invalidated: onnxruntime changed" and not engine.exists()
    wider = {**opts, "trt_profile_max_shapes": "image:40x96x96x3"}                             # a bigger camera
    assert engine_cache.prepare(folder, engine_cache.cache_key("b" * 64, "1.19.2", wider)) == \
        "invalidated: options changed"
    (folder / engine_cache.KEY_FILE).write_text("{not json")
    engine.write_bytes(b"?")
    assert engine_cache.prepare(folder, key).startswith("invalidated: no readable") and not engine.exists()
    assert json.loads((folder / engine_cache.KEY_FILE).read_text()) == key


@pytest.fixture
def repo_with_two_versions(tmp_path):
    """The shipped model and a re-versioned copy (same graph), imported as local packages."""
    from device_link_support import variant

    root = tmp_path / "models"
    repo = ModelRepository(root)
    first = repo.import_local(default_model())
    second = repo.import_local(variant(tmp_path, "1.5.0-int8"))
    yield repo, first, second
    repo.close()


def test_engine_folders_are_per_version_and_orphans_are_removed(repo_with_two_versions):
    repo, first, second = repo_with_two_versions
    a, b = repo.engine_dir(repo.path_of(first.id)), repo.engine_dir(repo.path_of(second.id))
    assert a != b and a.parent == b.parent == repo.root / ENGINES_DIR
    assert a.name == repo.path_of(first.id).name.split(".")[0]      # the package's SHA-256: immutable
    for d in (a, b):
        (d / engine_cache.CACHE_DIR).mkdir(parents=True)
        (d / engine_cache.CACHE_DIR / "x.engine").write_bytes(b"e")
    orphan = repo.root / ENGINES_DIR / ("0" * 64)
    orphan.mkdir()
    root = repo.root
    repo.close()
    again = ModelRepository(root)
    try:
        assert not orphan.exists() and (a / engine_cache.CACHE_DIR / "x.engine").exists() and b.exists()
        assert any(orphan.name in r for r in again.recovered)
    finally:
        again.close()


def test_the_runtime_builds_each_versions_engine_into_its_own_folder(repo_with_two_versions, monkeypatch):
    """The agent's own factory, offered TensorRT: the cache of the start-up model and of an
    activated one land in their versions' folders, with a profile for the camera's 640×480."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CPU])
    repo, first, second = repo_with_two_versions
    rt = AgentRuntime(repo, FrameGrabber(parse_source(sample_video()), loop=True, realtime=True), threads=1)
    rt.start(wait_model=True)
    try:
        assert rt.activation().state == "live" and "TensorRT engine cache new" in rt.activation().message
        rt.activate(second.id)
        assert "TensorRT engine cache new" in rt.activation().message
        for model in (first, second):
            key = json.loads((repo.engine_dir(repo.path_of(model.id)) / engine_cache.CACHE_DIR
                              / engine_cache.KEY_FILE).read_text())
            assert key["options"]["trt_profile_opt_shapes"] == f"{INPUT_NAME}:12x96x96x3"
            assert key["model_sha256"] == model.sha256
        assert rt.rollback().active == first.id           # the engine is still loaded: nothing prepared
    finally:
        rt.stop()


def test_an_engine_offered_tensorrt_gets_the_cache_options(tmp_path, monkeypatch):
    """On this CPU build onnxruntime skips TensorRT with a warning; what matters is what it was
    asked: the TensorRT options with this version's folder, a profile for 640×480 frames (12
    tiles of 160 px) and the reference patches (run 12 at a time), the key written, and reused the second time."""
    asked: list = []
    real = ort.InferenceSession

    def spy(model, sess_options=None, providers=None, **kw):
        asked.append(providers)
        return real(model, sess_options=sess_options, providers=[p if isinstance(p, str) else p[0]
                                                                 for p in providers], **kw)

    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CPU])
    monkeypatch.setattr(ort, "InferenceSession", spy)
    cache = tmp_path / "engines" / "v1" / engine_cache.CACHE_DIR
    eng = InferenceEngine(default_model(), threads=1, trt_cache=cache, frame_size=(480, 640))
    assert eng.trt_cache_state == "new" and eng.providers == [CPU]
    (name, opts), rest = asked[0][0], asked[0][1:]
    assert name == TRT and rest == [CPU]
    assert opts["trt_engine_cache_path"] == str(cache) and opts["trt_int8_enable"] == "True"
    assert (opts["trt_profile_min_shapes"], opts["trt_profile_opt_shapes"], opts["trt_profile_max_shapes"]) == \
        (f"{INPUT_NAME}:1x96x96x3", f"{INPUT_NAME}:12x96x96x3", f"{INPUT_NAME}:12x96x96x3")
    key = json.loads((cache / engine_cache.KEY_FILE).read_text())
    assert key["model_sha256"] == eng.manifest.model_sha256 and key["onnxruntime"] == ort.__version__
    assert InferenceEngine(default_model(), threads=1, trt_cache=cache, frame_size=(480, 640)).trt_cache_state \
        == "reused"
    # a 1280×720 camera needs another profile (40 tiles): the engine is rebuilt, not reused
    assert InferenceEngine(default_model(), threads=1, trt_cache=cache, frame_size=(720, 1280)).trt_cache_state \
        == "invalidated: options changed"
    # without TensorRT in the list nothing is prepared
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    assert InferenceEngine(default_model(), threads=1, trt_cache=tmp_path / "none").trt_cache_state is None
    assert not (tmp_path / "none").exists()


# ---------------------------------------------------------------------------- asynchronous activation

class HeldEngine(FakeEngine):
    """``slow-*`` models take until the test releases them to load (a TensorRT build)."""

    release = threading.Event()
    loading = threading.Event()

    def __init__(self, path: Path):
        if path.name.startswith("slow"):
            HeldEngine.loading.set()
            assert HeldEngine.release.wait(30), "the test never released the load"
            path = Path("good" + path.name[len("slow"):])
        super().__init__(path)


@pytest.fixture
def runtime():
    HeldEngine.release.clear()
    HeldEngine.loading.clear()
    made = []

    def make(ids, active):
        repo = FakeRepository(ids, active)
        rt = AgentRuntime(repo, FrameGrabber(parse_source(sample_video()), loop=True, realtime=True),
                          engine_factory=HeldEngine, probation_timeout=10.0)
        made.append(rt)
        rt.start(wait_model=True)
        return rt, repo

    yield make
    HeldEngine.release.set()
    for rt in made:
        rt.stop()


def frame_models(sub, n: int) -> list[str]:
    out, deadline = [], time.monotonic() + 10
    while len(out) < n and time.monotonic() < deadline:
        blob = sub.next(timeout=1.0)
        if blob is not None:
            out.append(framing.read_frame(io.BytesIO(blob))[0].model_id)
    return out


def wait_state(rt, state: str, timeout: float = 15.0) -> protocol.Activation:
    deadline = time.monotonic() + timeout
    while True:
        act = rt.activation()
        if act is not None and act.state == state:
            return act
        assert time.monotonic() < deadline, f"activation never reached {state}: {act}"
        time.sleep(0.02)


def test_activation_returns_at_once_and_the_old_model_serves_until_the_swap(runtime):
    rt, repo = runtime(["good-1", "slow-2"], "good-1")
    assert rt.activation().model_id == "good-1" and rt.activation().state == "live"   # the start-up load
    with rt.subscribe() as sub:
        t0 = time.monotonic()
        act = rt.start_activation("slow-2")
        assert time.monotonic() - t0 < 1.0 and (act.model_id, act.state) == ("slow-2", "building")
        assert HeldEngine.loading.wait(5)
        status = rt.status()
        assert status["activation"]["state"] == "building" and status["model"]["id"] == "good-1"
        protocol.Activation.from_dict(status["activation"])                    # the protocol's shape
        assert set(frame_models(sub, 5)) == {"good-1"}                          # still streaming, the old one
        assert rt.start_activation("slow-2").state == "building"                # asking again: the same one
        with pytest.raises(ApiError) as busy:
            rt.start_activation("good-1")
        assert busy.value.status == 409 and busy.value.code == "busy" and "slow-2 building" in busy.value.message
        time.sleep(1.1)
        assert rt.activation().elapsed_s >= 1.0
        HeldEngine.release.set()
        live = wait_state(rt, "live")
        assert "slow-2 live on CPUExecutionProvider (loaded in" in live.message and rt.model.id == "slow-2"
        assert frame_models(sub, 3)[-1] == "slow-2"
    assert repo.active_id == "slow-2"


@pytest.mark.parametrize("bad, why", [("nan-2", "not finite"), ("noload-2", "does not load")])
def test_a_failing_activation_reports_failed_and_the_old_model_stays(runtime, bad, why):
    rt, repo = runtime(["good-1", bad], "good-1")
    with rt.subscribe() as sub:
        frame_models(sub, 1)
        assert rt.start_activation(bad).state == "building"
        failed = wait_state(rt, "failed")
        assert failed.model_id == bad and why in failed.message and "serving good-1" in failed.message
        assert rt.model.id == "good-1" and repo.active_id == "good-1" and bad in repo.failed
        assert set(frame_models(sub, 4)) == {"good-1"}
    with pytest.raises(Exception) as unknown:            # refused before anything starts
        rt.start_activation("nope-9")
    assert getattr(unknown.value, "status", None) == 404
    assert rt.activation().model_id == bad                # the record still tells what happened last


def test_the_client_polls_until_live_or_failed():
    """DeviceClient.wait_activation over a scripted sequence of statuses (no network)."""
    from inspector.link.client import DeviceClient
    from inspector.link.connection import DeviceError

    def status(act, model="good-1"):
        return protocol.Status(agent_id="a", agent_name="jetson", camera={}, model={"id": model}, provider="",
                               fps=1.0, clients=0, events=[], uptime_s=1.0,
                               activation=None if act is None else dict(
                                   model_id=act[0], state=act[1], since="t", started="t", elapsed_s=act[2],
                                   message=act[3]))

    class Scripted(DeviceClient):
        def __init__(self, answers):
            super().__init__("127.0.0.1", 1, tls=False)
            self.answers = list(answers)

        def status(self):
            answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            if isinstance(answer, Exception):
                raise answer
            return answer

    seen = []
    client = Scripted([status(("new-2", "building", 0.0, "loading")), DeviceError("cannot reach: busy"),
                       status(("new-2", "building", 90.0, "loading")),
                       status(("new-2", "verifying", 0.1, "swapped")),
                       status(("new-2", "live", 0.2, "new-2 live"), model="new-2")])
    assert client.wait_activation("new-2", poll=0.0, progress=seen.append).model["id"] == "new-2"
    assert [a.state for a in seen] == ["building", "verifying", "live"]      # progress at each change

    client = Scripted([status(("new-2", "failed", 0.0, "new-2 failed: does not load; serving good-1"))])
    with pytest.raises(DeviceError, match="does not load") as err:
        client.wait_activation("new-2", poll=0.0)
    assert err.value.api.status == 422 and err.value.api.code == "model_failed"

    client = Scripted([status(("new-2", "building", 5.0, "loading"))])
    with pytest.raises(DeviceError, match="not live within 0 s \\(building"):
        client.wait_activation("new-2", timeout=0.0, poll=0.0)

    restarted = Scripted([status(None, model="new-2")])                     # the agent restarted meanwhile
    assert restarted.wait_activation("new-2", poll=0.0).model["id"] == "new-2"
    with pytest.raises(DeviceError, match="gone"):
        Scripted([status(None)]).wait_activation("new-2", poll=0.0)


def test_status_and_openapi_carry_the_activation():
    spec = openapi.document()
    op = spec["paths"][f"{protocol.API}/models/activate"]["post"]
    assert op["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/Activation")
    assert "activation" not in spec["components"]["schemas"]["Status"]["required"]    # older agents omit it
    assert spec["components"]["schemas"]["ActivateRequest"]["properties"]["wait"] == {"type": "boolean"}
    assert protocol.ActivateRequest.from_json(b'{"id": "m-1"}').wait is True
    with pytest.raises(protocol.ProtocolError, match="wait"):
        protocol.ActivateRequest.from_json(b'{"id": "m-1", "wait": "no"}')
    with pytest.raises(protocol.ProtocolError, match="state"):
        protocol.Activation.from_dict(dict(model_id="m-1", state="cooking", since="", started="", elapsed_s=0,
                                           message=""))
    assert np.isfinite(protocol.ACTIVATION_TIMEOUT) and protocol.ACTIVATION_TIMEOUT >= 600
