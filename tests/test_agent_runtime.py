"""The agent's runtime in process: hot model swaps, probation and auto-rollback, newest-only
stream slots. Real FrameGrabber on the sample video; fake engines (healthy, NaN, raising, not
loading) and an in-memory repository with the ModelRepository API, so every failure is exact
and the file runs in a few seconds."""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from inspector.link import framing
from inspector.agent.repository_state import RepositoryError
from inspector.agent.runtime import AgentRuntime
from inspector.edge.reuse import ReusePolicy
from inspector.agent.stream import check_result
from inspector.edge.engine import FrameResult, TileResult
from inspector.paths import sample_video
from inspector.link.protocol import ApiError, ModelInfo, ModelList
from inspector.capture.sources import FrameGrabber, parse_source


def info(model_id: str) -> ModelInfo:
    return ModelInfo(id=model_id, name=model_id.rsplit("-", 1)[0], version=model_id.rsplit("-", 1)[1],
                     sha256=f"{abs(hash(model_id)):064d}"[:64], size=1, labels=["no_crack", "crack"], input_size=96,
                     quantization="int8-qdq", signed_by=None, stored="2026-01-01T00:00:00Z")


class FakeRepository:
    """The ModelRepository calls the runtime makes, in memory. Model ids say how the engine
    behaves: ``good-*``, ``nan-*`` (NaN probabilities), ``boom-*`` (inspect raises),
    ``noload-*`` (the engine cannot be made)."""

    def __init__(self, ids: list[str], active: str):
        self.models = {i: info(i) for i in ids}
        self.active_id: str | None = active
        self.previous: list[str] = []
        self.failed: dict[str, str] = {}
        self.events: list[dict] = []
        self.lock = threading.Lock()

    def list(self) -> ModelList:
        return ModelList(active=self.active_id, previous=list(self.previous),
                         models=[m.to_dict() for m in self.models.values()])

    def active(self) -> ModelInfo | None:
        return self.models[self.active_id] if self.active_id else None

    def active_path(self) -> Path | None:
        return Path(self.active_id) if self.active_id else None

    def activate(self, model_id: str) -> ModelList:
        if model_id not in self.models:
            raise RepositoryError(404, "unknown_model", model_id)
        if model_id != self.active_id:
            self.previous = [self.active_id] + [p for p in self.previous if p not in (model_id, self.active_id)]
            self.active_id = model_id
        return self.list()

    def rollback(self) -> ModelList:
        if not self.previous:
            raise RepositoryError(409, "no_previous", "nothing to roll back to")
        self.active_id, self.previous = self.previous[0], self.previous[1:]
        return self.list()

    def mark_failed(self, model_id: str, reason: str) -> ModelList:
        self.failed[model_id] = reason
        if self.active_id == model_id:
            for i, p in enumerate(self.previous):
                if p not in self.failed:
                    self.active_id, self.previous = p, self.previous[i + 1:]
                    break
        return self.list()


class FakeEngine:
    providers = ["CPUExecutionProvider"]

    def __init__(self, path: Path):
        self.kind = path.name.split("-")[0]
        if self.kind == "noload":
            raise ValueError("reference outputs differ")

    def inspect(self, rgb: np.ndarray) -> FrameResult:
        if self.kind == "boom":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        h, w = rgb.shape[:2]
        p = np.array([np.nan, np.nan] if self.kind == "nan" else [0.25, 0.75], np.float32)
        heat = np.full((h, w), 0.5, np.float32)
        tile = TileResult(box=(0, 0, w, h), probs=p, crack_prob=float(p[1]), cam=np.zeros((3, 3), np.float32))
        return FrameResult(tiles=[tile], heatmap=heat, crack_prob_max=float(p[1]), timings={"infer": 1.0})


@pytest.fixture
def make_runtime():
    made: list[AgentRuntime] = []

    def make(ids: list[str], active: str, **kw) -> tuple[AgentRuntime, FakeRepository]:
        repo = FakeRepository(ids, active)
        grabber = FrameGrabber(parse_source(sample_video()), loop=True, realtime=True)
        kw.setdefault("engine_factory", FakeEngine)
        rt = AgentRuntime(repo, grabber, probation_timeout=10.0, **kw)
        made.append(rt)
        rt.start(wait_model=True)
        return rt, repo

    yield make
    for rt in made:
        rt.stop()


def model_ids(sub, n: int, timeout: float = 10.0) -> list[str]:
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        blob = sub.next(timeout=1.0)
        if blob is not None:
            out.append(framing.read_frame(io.BytesIO(blob))[0].model_id)
    return out


def test_activate_swaps_without_stopping_the_stream(make_runtime):
    rt, repo = make_runtime(["good-1", "good-2"], "good-1")
    with rt.subscribe() as sub:
        assert model_ids(sub, 2) == ["good-1", "good-1"]
        listing = rt.activate("good-2")
        assert listing.active == "good-2" and rt.model.id == "good-2"
        ids = model_ids(sub, 3)
        assert ids[-1] == "good-2" and set(ids) <= {"good-1", "good-2"}
        assert rt.status()["model"]["id"] == "good-2" and rt.status()["clients"] == 1
        assert rt.rollback().active == "good-1"
        assert model_ids(sub, 3)[-1] == "good-1"
    assert rt.status()["clients"] == 0
    assert [e["kind"] for e in rt.events()].count("in-service") == 3


@pytest.mark.parametrize("bad, why", [("nan-2", "not finite"), ("boom-2", "illegal memory access"),
                                      ("noload-2", "does not load")])
def test_a_failing_model_is_rolled_back(make_runtime, bad, why):
    events: list[dict] = []
    rt, repo = make_runtime(["good-1", bad], "good-1", on_event=events.append)
    with rt.subscribe() as sub:
        model_ids(sub, 1)
        with pytest.raises(ApiError) as err:
            rt.activate(bad)
        assert err.value.status == 422 and err.value.code == "model_failed" and why in err.value.message
        assert repo.active_id == "good-1" and why in repo.failed[bad] and rt.model.id == "good-1"
        ids = model_ids(sub, 4)
        assert ids and set(ids) == {"good-1"}  # nothing from the failing model was ever published
    rollback = [e for e in events if e["kind"] == "auto-rollback"]
    assert len(rollback) == 1 and bad in rollback[0]["message"] and why in rollback[0]["message"]


def test_start_goes_back_past_a_failing_active_model(make_runtime):
    rt, repo = make_runtime(["good-1", "nan-2"], "good-1")
    rt.stop()
    repo.activate("nan-2")
    rt2 = AgentRuntime(repo, FrameGrabber(parse_source(sample_video())), engine_factory=FakeEngine)
    try:
        rt2.start(wait_model=True)
        assert rt2.model.id == "good-1" and "nan-2" in repo.failed
    finally:
        rt2.stop()


def test_slow_client_gets_only_the_newest_frame(make_runtime):
    rt, _ = make_runtime(["good-1"], "good-1")
    with rt.subscribe() as slow:
        first = framing.read_frame(io.BytesIO(slow.next(timeout=5)))[0].seq
        time.sleep(0.5)  # ~15 results published meanwhile
        t0 = time.monotonic()
        second = framing.read_frame(io.BytesIO(slow.next(timeout=5)))[0].seq
        assert time.monotonic() - t0 < 0.05 and second > first + 5  # the newest, at once
        assert slow.next(timeout=0) is None  # and no backlog behind it


def test_stop_wakes_waiting_clients(make_runtime):
    rt, _ = make_runtime(["good-1"], "good-1")
    sub = rt.subscribe()
    sub.next(timeout=5)
    threading.Timer(0.2, rt.stop).start()
    t0 = time.monotonic()
    while sub.next(timeout=5) is not None:
        pass
    assert sub.closed and time.monotonic() - t0 < 3


def test_check_result():
    eng = FakeEngine(Path("good-1"))
    good = eng.inspect(np.zeros((8, 10, 3), np.uint8))
    assert check_result(good, 8, 10, 2, full=True) is None
    assert "shape" in check_result(good, 9, 10, 2, full=False)
    assert "(3,)" in check_result(good, 8, 10, 3, full=False)
    good.heatmap[0, 0] = np.inf
    assert check_result(good, 8, 10, 2, full=False) is None and "non-finite" in check_result(good, 8, 10, 2, full=True)


def test_the_agent_reuses_tiles_and_says_how_many_it_inferred(make_runtime):
    """The shipped model on the agent (the sample video: pans and a hold): tiles carried over are
    marked on the wire and the status reports the share inferred; with reuse off, every tile."""
    from inspector.edge.engine import InferenceEngine
    from support import SHIPPED

    def real(_path):
        return InferenceEngine(SHIPPED, threads=1)

    for reuse, expect_stale in ((ReusePolicy(), True), (None, False)):
        rt, _ = make_runtime(["good-1"], "good-1", engine_factory=real, reuse=reuse)
        with rt.subscribe() as sub:
            headers, deadline = [], time.monotonic() + 20.0
            while len(headers) < 30 and time.monotonic() < deadline:
                blob = sub.next(timeout=1.0)
                if blob is not None:
                    headers.append(framing.read_frame(io.BytesIO(blob))[0])
        assert len(headers) == 30
        stale = sum(not t["fresh"] for h in headers for t in h.tiles)
        share = rt.status()["tile_share"]
        if expect_stale:
            assert stale > 0 and 0.0 < share < 0.9
        else:
            assert stale == 0 and share == 1.0
        rt.stop()
