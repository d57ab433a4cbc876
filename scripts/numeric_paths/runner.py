"""Run one ONNX model on images under whatever interpreter runs this file; numpy + onnxruntime only.

    python runner.py IN.npz OUT.npz

``IN.npz``: ``model`` (the ONNX bytes as a uint8 array) and ``image`` (uint8 N×S×S×3), optionally
``graph_optimization`` (0-d string: ``all`` or ``disabled``). ``OUT.npz``: ``probs``, ``cam``,
``logits`` and ``info`` (0-d JSON string: onnxruntime version, machine, graph optimisation level).
The CPU the kernels were chosen for is the caller's to record: under qemu-user ``/proc/cpuinfo``
shows the host's flags, not the emulated CPU's.

This is the far end of a foreign numeric path (``scripts/numeric_paths/paths.py``): the same file
runs under ``qemu-x86_64-static -cpu Haswell-v4`` (onnxruntime's AVX2 kernels), under
``qemu-aarch64-static`` in an arm64 root (its NEON kernels) or natively. It must not import the
project: the arm64 root has only numpy and onnxruntime.
"""
from __future__ import annotations

import json
import platform
import sys

import numpy as np
import onnxruntime as ort



def main(argv: list[str]) -> int:
    src, dst = argv
    data = np.load(src, allow_pickle=False)
    model = data["model"].tobytes()
    image = np.ascontiguousarray(data["image"])
    level = str(data["graph_optimization"]) if "graph_optimization" in data else "all"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if level == "disabled"
                                      else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    sess = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    logits, probs, cam = sess.run(["logits", "probs", "cam"], {"image": image})
    info = {"onnxruntime": ort.__version__, "machine": platform.machine(), "graph_optimization": level}
    np.savez(dst, logits=logits, probs=probs, cam=cam, info=np.array(json.dumps(info)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
