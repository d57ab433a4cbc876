"""Numeric paths beyond this machine's own CPU: onnxruntime's kernels for another CPU, under qemu.

``run(path, onnx_bytes, images)`` runs a model on uint8 images along one of :data:`FOREIGN` and
returns ``(probs, cam, info)``. Each call starts ``runner.py`` (numpy + onnxruntime only) under
an emulator, so it is slow (seconds for a few dozen patches), exact in what it computes, and
meaningless for speed.

* ``x86-avx2``: ``qemu-x86_64-static -cpu Haswell-v4`` runs this venv's Python with a CPU that
  has AVX2 and FMA but no AVX-512, VNNI or AMX, so onnxruntime's MLAS picks its AVX2 kernels:
  those of an AMD EPYC (Zen 2/3) or an Intel Xeon before Cascade Lake. It reproduces what such
  a machine computes to the last bit (the shipped 1.1.0 INT8 package: max |Δp| 1.098e-3 and
  max |Δcam| 1.327e-2 against its references, as measured natively on an AMD EPYC).
* ``x86-sse``: ``-cpu Nehalem``: SSE4.1/4.2 only, MLAS's oldest x86 kernels.
* ``arm64``: ``qemu-aarch64-static`` in the arm64 root made by ``arm64_root.sh`` (onnxruntime
  1.19.2's NEON kernels; 1.32 segfaults on import under qemu 7.2).

``available(path)`` says whether the emulator (and root) are installed here.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "runner.py"
ARM64_ROOT = Path(os.environ.get("ARM64_ROOT", "/var/cache/crack-inspector/arm64-root"))
X86_CPUS = {"x86-avx2": "Haswell-v4", "x86-sse": "Nehalem"}
FOREIGN = (*X86_CPUS, "arm64")
TIMEOUT_S = 900


def _command(path: str) -> list[str]:
    if path in X86_CPUS:
        return ["qemu-x86_64-static", "-cpu", X86_CPUS[path], sys.executable]
    if path == "arm64":
        return [str(HERE / "arm64_python.sh")]
    raise ValueError(f"numeric path must be one of {FOREIGN}, got {path!r}")


def available(path: str) -> str | None:
    """None when ``path`` can run here, else why not."""
    if path in X86_CPUS:
        if shutil.which("qemu-x86_64-static") is None:
            return "qemu-x86_64-static is not installed (apt-get install qemu-user-static)"
        return None
    if path == "arm64":
        if shutil.which("qemu-aarch64-static") is None:
            return "qemu-aarch64-static is not installed (apt-get install qemu-user-static)"
        if not (HERE / "arm64_python.sh").is_file() or not (ARM64_ROOT / "usr/bin/python3.11").exists():
            return f"no arm64 root at {ARM64_ROOT} (bash scripts/numeric_paths/arm64_root.sh builds it)"
        return None
    raise ValueError(f"numeric path must be one of {FOREIGN}, got {path!r}")


def run(path: str, onnx_bytes: bytes, images: np.ndarray, *, graph_optimization: str = "all"):
    """``(probs, cam, info)`` of the model on ``images`` along ``path``."""
    why = available(path)
    if why:
        raise RuntimeError(f"numeric path {path} is not available: {why}")
    with tempfile.TemporaryDirectory(prefix="numeric-path-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, model=np.frombuffer(onnx_bytes, np.uint8), image=np.ascontiguousarray(images, np.uint8),
                 graph_optimization=np.array(graph_optimization))
        proc = subprocess.run([*_command(path), str(RUNNER), str(src), str(dst)], capture_output=True, text=True,
                              timeout=TIMEOUT_S)
        if proc.returncode != 0:
            tail = "\n".join(line for line in proc.stderr.splitlines() if "TCG doesn't support" not in line)[-2000:]
            raise RuntimeError(f"numeric path {path} failed (exit {proc.returncode}): {tail}")
        out = np.load(dst, allow_pickle=False)
        info = json.loads(str(out["info"]))
        info["path"] = path
        if path in X86_CPUS:
            info["emulated_cpu"] = X86_CPUS[path]
        return out["probs"], out["cam"], info
