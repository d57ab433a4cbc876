"""The model packages the edge tests are made of: a REAL small ONNX graph that follows the contract
of ``docs/design/edge-models.md``, built with ``onnx.helper`` (no dependency on
``distill/export/graph.py``), real patches to run it on, its manifest, and helpers that rewrite
a package's members to break it. Used by test_package.py and test_engine.py.

The graph is a hand-made dark-thin-line detector (oriented "centre darker than both sides"
kernels, stride-8 pooling to ``features``, GAP + Gemm head, in-graph Grad-CAM). It is a fixture,
not a crack model: it also fires on formwork joints and other dark lines.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

from inspector.edge.manifest import FORMAT

DATA = Path(os.environ["CRACK_DATA_DIR"])
S = 64  # fixture input size (stride-8 features: 8×8)
LABELS = ("no_crack", "crack")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


# --------------------------------------------------------------------------- fixture model


def _line_kernels(n_orient: int = 4, length: int = 9, offset: int = 3, size: int = 11) -> np.ndarray:
    """Oriented thin-dark-line kernels: mean of two parallel strokes ±offset minus the centre stroke."""
    c = size // 2
    out = []
    for i in range(n_orient):
        th = np.pi * i / n_orient
        d = np.array([np.cos(th), np.sin(th)])
        nrm = np.array([-d[1], d[0]])

        def stroke(shift: float) -> np.ndarray:
            img = np.zeros((size * 8, size * 8), np.float32)  # draw at 8× and area-average: anti-aliased
            p0 = (np.array([c, c]) + nrm * shift - d * length / 2 + 0.5) * 8
            p1 = (np.array([c, c]) + nrm * shift + d * length / 2 + 0.5) * 8
            cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), 1.0, 8)
            k = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            return k / k.sum()

        out.append(0.5 * (stroke(offset) + stroke(-offset)) - stroke(0))
    return np.stack(out)[:, None].astype(np.float32)


def build_fixture_onnx(size: int = S, num_classes: int = 2, *, crack_index: int = 1, batch: int | str = "N",
                       class_dim: int | str | None = None, input_dtype: int = TP.UINT8,
                       outputs: tuple[str, ...] = ("logits", "probs", "cam"),
                       thr: float = 0.06, gain: float = 600.0, bias: float = -2.0) -> bytes:
    """The contract graph: image uint8 N×S×S×3 → (x/255-mean)/std → NCHW → grey → oriented
    line kernels → max over orientations → 4 thresholds → ReLU → stride-8 average (``features``,
    N×4×S/8×S/8) → GAP → Gemm → ``logits``/``probs``; ``cam`` = ReLU(Σ_k w_ck/Z · A_k).

    ``class_dim`` overrides the C stated in the output shapes (a symbolic name hides C from the
    static check); ``batch`` an int fixes N; the other knobs make contract-breaking variants.
    """
    c = num_classes
    inits = [nh.from_array(np.array(255.0, np.float32), "c255"),
             nh.from_array(np.array(MEAN, np.float32).reshape(1, 1, 1, 3), "mean"),
             nh.from_array(np.array(STD, np.float32).reshape(1, 1, 1, 3), "std"),
             nh.from_array(np.full((1, 3, 1, 1), 1 / 3, np.float32), "w_grey")]
    nodes = [oh.make_node("Cast", ["image"], ["img_f"], to=TP.FLOAT),
             oh.make_node("Div", ["img_f", "c255"], ["unit"]),
             oh.make_node("Sub", ["unit", "mean"], ["centred"]),
             oh.make_node("Div", ["centred", "std"], ["normed"]),
             oh.make_node("Transpose", ["normed"], ["x"], perm=[0, 3, 1, 2]),
             oh.make_node("Conv", ["x", "w_grey"], ["grey"])]
    w_line = _line_kernels()
    k = 4
    inits += [nh.from_array(w_line, "w_line"),
              nh.from_array(np.ones((k, 1, 1, 1), np.float32), "w_thr"),
              nh.from_array(-np.array([1, 1.5, 2, 3], np.float32) * thr / STD[0], "b_thr"),
              nh.from_array(np.full((k, 1, 8, 8), 1 / 64, np.float32), "w_pool")]
    pad = w_line.shape[-1] // 2
    nodes += [oh.make_node("Conv", ["grey", "w_line"], ["orient"], pads=[pad] * 4),
              oh.make_node("ReduceMax", ["orient"], ["line_max"], axes=[1], keepdims=1),
              oh.make_node("Conv", ["line_max", "w_thr", "b_thr"], ["line_pre"]),
              oh.make_node("Relu", ["line_pre"], ["line"]),
              oh.make_node("Conv", ["line", "w_pool"], ["features_pre"], strides=[8, 8], group=k),
              oh.make_node("Relu", ["features_pre"], ["features"])]
    w = np.zeros((c, k), np.float32)
    b = np.zeros((c,), np.float32)
    w[crack_index, :] = gain / k
    b[crack_index] = bias
    h = size // 8
    inits += [nh.from_array(w, "w_head"), nh.from_array(b, "b_head"),
              nh.from_array(np.array(1.0 / (h * h), np.float32), "inv_z")]
    nodes += [oh.make_node("GlobalAveragePool", ["features"], ["gap"]),
              oh.make_node("Flatten", ["gap"], ["embedding"]),
              oh.make_node("Gemm", ["embedding", "w_head", "b_head"], ["logits"], transB=1),
              oh.make_node("Softmax", ["logits"], ["probs"], axis=1),
              oh.make_node("Einsum", ["w_head", "features"], ["cam_sum"], equation="ck,nkhw->nchw"),
              oh.make_node("Mul", ["cam_sum", "inv_z"], ["cam_scaled"]),
              oh.make_node("Relu", ["cam_scaled"], ["cam"])]
    if input_dtype != TP.UINT8:  # variant: a float input (breaks the contract)
        nodes[0] = oh.make_node("Cast", ["image"], ["img_f"], to=TP.FLOAT)
    cd = c if class_dim is None else class_dim
    shapes = {"logits": [batch, cd], "probs": [batch, cd], "cam": [batch, cd, h, h]}
    graph = oh.make_graph(nodes, "dark_line_fixture",
                          [oh.make_tensor_value_info("image", input_dtype, [batch, size, size, 3])],
                          [oh.make_tensor_value_info(name, TP.FLOAT, shapes[name]) for name in outputs], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], producer_name="tests.fixture")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def real_patches(n_crack: int = 2, n_no_crack: int = 2, size: int = S) -> np.ndarray:
    """Real Özgenel patches (227×227) resized to size×size, uint8 RGB, crack ones first."""
    root = DATA / "ozgenel_ccic_subset"
    files = sorted((root / "crack").glob("*.jpg"))[:n_crack] + sorted((root / "no_crack").glob("*.jpg"))[:n_no_crack]
    return np.stack([cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), (size, size),
                                interpolation=cv2.INTER_AREA) for f in files])


def run_model(onnx_bytes: bytes, images: np.ndarray) -> dict[str, np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"image": images})))


def make_reference(onnx_bytes: bytes, images: np.ndarray) -> dict[str, np.ndarray]:
    out = run_model(onnx_bytes, images)
    return {"image": images, "probs": out["probs"], "cam": out["cam"]}


def fixture_manifest(**overrides) -> dict:
    d = {
        "format": FORMAT,
        "name": "dark-line-fixture",
        "version": "0.1.0",
        "parent_version": None,
        "architecture": "dark_line_fixture",
        "input": {"size": S, "layout": "NHWC", "dtype": "uint8", "color": "RGB"},
        "preprocessing": {"mean": list(MEAN), "std": list(STD), "folded": True},
        "labels": list(LABELS),
        "outputs": ["logits", "probs", "cam"],
        "metrics": {"ozgenel_test": {"mcc": 0.5, "accuracy": 0.8, "roc_auc": None, "confusion": [[3, 1], [1, 3]],
                                     "n": 8, "per_surface": {}, "label_names": list(LABELS), "threshold": None}},
        "training_data": [{"name": "ozgenel_ccic_subset", "licence": "CC BY 4.0"}],
        "model_sha256": "0" * 64,
        "created": "2026-11-21T14:03:00Z",
        "quantization": {"type": "fp32", "per_channel": False, "calibration": None, "float_nodes": []},
        "reference": {"file": "reference.npz", "atol": 1e-4},
        "signature": None,
    }
    d.update(overrides)
    return d


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def rewrite(path: Path, **changes: bytes | None) -> Path:
    """Rewrite zip members in place: ``name=bytes`` replaces/adds, ``name=None`` drops
    (member names with dots are passed via ``**{"model.onnx": ...}``)."""
    current = members(path)
    for name, data in changes.items():
        if data is None:
            current.pop(name, None)
        else:
            current[name] = data
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in current.items():
            zf.writestr(name, data)
    return path


def manifest_of(path: Path) -> dict:
    return json.loads(members(path)["manifest.json"])


def with_manifest(path: Path, mutate) -> Path:
    d = manifest_of(path)
    mutate(d)
    return rewrite(path, **{"manifest.json": json.dumps(d).encode()})


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
