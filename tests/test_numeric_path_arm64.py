"""The shipped INT8 student computes the same numbers on onnxruntime's ARM (aarch64, NEON) kernels.

Runs ``scripts/numeric_paths/runner.py`` in the arm64 root under ``qemu-aarch64-static``
(``scripts/numeric_paths/arm64_python.sh``) on the package's reference images and compares with the
package's ``reference.npz``. Only on request, ``pytest -m arm64``; the root is built beforehand by
``scripts/numeric_paths/arm64_root.sh`` (~30 s, 361 MB): without it the test skips.
One runner call takes ~2.7 s of CPU to import onnxruntime under qemu plus ~0.25 s per image:
4.7 s of CPU on 1.1.0-int8's 8 reference images, 11 s on 1.1.1-int8's 48; wall time up to 4x that
on a busy machine.
"""
import io
import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from support import REPO

SCRIPTS = REPO / "scripts" / "numeric_paths"
ROOT = Path(os.environ.get("ARM64_ROOT", "/var/cache/crack-inspector/arm64-root"))
STAMP = ROOT / ".crack-inspector-arm64-root"  # written by arm64_root.sh when the root works


def newest_int8_student() -> Path:
    found = []
    for path in (REPO / "models").glob("crack-student-*-int8.crackpkg"):
        m = re.fullmatch(r"crack-student-(\d+(?:\.\d+)*)-int8\.crackpkg", path.name)
        if m:
            found.append((tuple(int(part) for part in m.group(1).split(".")), path))
    assert found, "no models/crack-student-*-int8.crackpkg"
    return max(found)[1]


@pytest.mark.arm64
def test_int8_student_on_arm64_matches_reference(tmp_path):
    if not STAMP.is_file():
        pytest.skip(f"no arm64 root in {ROOT}: build it with scripts/numeric_paths/arm64_root.sh")
    if shutil.which("qemu-aarch64-static") is None:
        pytest.skip("qemu-aarch64-static not found (apt-get install qemu-user-static)")
    pkg = newest_int8_student()
    with zipfile.ZipFile(pkg) as z:
        model = z.read("model.onnx")
        ref = np.load(io.BytesIO(z.read("reference.npz")))
        ref = {k: ref[k] for k in ("image", "probs", "cam")}
    src, dst = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(src, model=np.frombuffer(model, np.uint8), image=ref["image"])

    proc = subprocess.run(["bash", str(SCRIPTS / "arm64_python.sh"), str(SCRIPTS / "runner.py"), str(src), str(dst)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"runner under qemu-aarch64 failed ({proc.returncode}):\n{proc.stderr[-3000:]}"

    out = np.load(dst, allow_pickle=False)
    info = json.loads(str(out["info"]))
    assert info["machine"] == "aarch64", info
    probs = out["probs"]
    assert probs.shape == ref["probs"].shape
    np.testing.assert_array_equal(probs.argmax(axis=1), ref["probs"].argmax(axis=1),
                                  err_msg=f"{pkg.name}: the class differs on ARM ({info})")
    delta = float(np.abs(probs - ref["probs"]).max())
    assert delta < 1e-3, f"{pkg.name}: max |Δprobs| {delta:.3g} on ARM ({info})"
