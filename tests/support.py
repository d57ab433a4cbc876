"""Helpers shared by several test files (imported as ``from support import ...``).

torch and the app are imported inside the helpers that need them, so a test module that uses
only the others does not load torch.
"""
import json
import os
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def read_manifest(path: Path) -> dict:
    """A package's manifest.json as stored (no validation: for tests that inspect or break it)."""
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("manifest.json"))


def _shipped() -> tuple[Path, str, str, Path]:
    """The app's default model package: its path, id (``name-version``), version and the path
    of its FP32 parent, so tests follow whatever version ships."""
    from inspector.paths import default_model

    path = default_model()
    m = read_manifest(path)
    return path, f"{m['name']}-{m['version']}", m["version"], path.with_name(f"{m['name']}-{m['parent_version']}.crackpkg")


SHIPPED, SHIPPED_ID, SHIPPED_VERSION, SHIPPED_PARENT = _shipped()


def calibrated(model, size: int, batch: int = 8):
    """``model`` in eval mode with batch-norm statistics measured on one random batch.

    A fresh network's default statistics (mean 0, variance 1) shrink the activations of
    MobileNet/EfficientNet to ~1e-9 at the head, so every input would give the same logits and
    output comparisons would prove nothing; measured statistics keep them input-dependent.
    """
    import torch
    from torch import nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(torch.rand(batch, 3, size, size))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine more threads only contend (10x slower).
    Autouse in every test module that imports it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def engine():
    """The shipped model on one thread, shared by the tests of a module."""
    from inspector.edge.engine import InferenceEngine
    from inspector.paths import default_model

    return InferenceEngine(default_model(), threads=1)


def sample_video_results(engine, n: int, step: int) -> list:
    """``n`` frames of the shipped sample video (every ``step``-th), RGB, with ``engine``'s result."""
    import cv2

    from inspector.paths import sample_video

    cap = cv2.VideoCapture(str(sample_video()))
    out, i = [], 0
    while len(out) < n:
        ok, bgr = cap.read()
        if not ok:
            break
        if i % step == 0:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            out.append((rgb, engine.inspect(rgb)))
        i += 1
    cap.release()
    assert len(out) == n, f"the sample video has fewer than {n * step} frames"
    return out


@pytest.fixture
def store(tmp_path):
    """An empty flag store in ``tmp_path / "flags"``, closed after the test."""
    from inspector.store.database import FlagStore

    with FlagStore(tmp_path / "flags") as s:
        yield s


def run_and_kill(cmd: list[str], delay: float, *, lines: int = 1) -> subprocess.CompletedProcess:
    """Start ``cmd`` (a child script of the crash tests; the repository on PYTHONPATH and as the
    working folder), read its first line and, if that is ``ready``, ``lines - 1`` more, sleep
    ``delay`` s and SIGKILL it. Returns its stdout up to the last whole line (the lines read
    first included; the kill may cut the last line anywhere, even inside a number, when the
    child writes print's pieces one by one, as it does with PYTHONUNBUFFERED=1), its stderr and
    its return code (``-SIGKILL`` when the kill landed); the child never outlives the call."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        head = proc.stdout.readline()
        if head == "ready\n":
            for _ in range(lines - 1):
                head += proc.stdout.readline()
            time.sleep(delay)
        proc.kill()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = head + out
    return subprocess.CompletedProcess(cmd, proc.returncode, out[: out.rfind("\n") + 1], err)
