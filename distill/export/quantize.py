"""INT8 quantization of an exported model (QDQ, static, calibrated on real images) and its cost.

:func:`quantize_int8` turns the FP32 graph of :mod:`distill.export.graph` into a QuantizeLinear /
DequantizeLinear (QDQ) graph with ONNX Runtime's static quantizer: the format ONNX Runtime's
CPU kernels and TensorRT both consume. Choices, following ONNX Runtime's guidance for CPUs:

* weights ``QInt8`` (symmetric), per output channel by default; activations ``QUInt8``
  (asymmetric: post-ReLU maps use the whole range);
* ``reduce_range`` (weights in 7 bits, [-64, 64]) by default. On x86 CPUs without VNNI,
  onnxruntime's u8s8 kernels multiply with ``vpmaddubsw``, which adds two u8×s8 products into
  a **saturating** int16: 2 · 255 · 127 overflows it, 2 · 255 · 64 = 32,640 does not. With full
  8-bit weights the shipped student computed different numbers on AVX2 than on VNNI, AMX or
  ARM (max |Δp| 1.1e-3, a heat-map cell off by 1.3e-2); with 7-bit weights every CPU path
  accumulates exactly. TensorRT takes the same symmetric INT8 weights. Its cost in accuracy is
  measured in the model card;
* the calibration data are real images (uint8 N×S×S×3), never noise: an empty set, or one
  whose neighbouring pixels are uncorrelated the way random data are, is refused;
* ``keep_cam_float=True`` leaves every node from the ``features`` tensor on (the head, the
  softmax and the Grad-CAM weights and sum) in float, so the heat-map is computed from the
  backbone's (dequantized) output with float weights. The backbone's last layer is still
  quantized, so ``features`` itself carries 8-bit precision;
* ``quant_pre_process`` runs symbolic and ONNX shape inference but not its graph optimizer:
  that would remove the Identity node named ``features`` (the contract's boundary), and the
  exporter has already folded batch norms into the convolutions.

:func:`compare_models` measures what quantization costs and buys on real images: MCC of both,
top-1 agreement, agreement of the "crack" heat-maps, file sizes and latency.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from distill.export.gradcam import cam_to_image, pearson
from distill.export.graph import FEATURES_NAME, INPUT_NAME, OUTPUT_NAMES, ort_session
from distill.metrics import mcc
from distill.errors import DistillError

METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_BATCH = 8
# ONNX Runtime's entropy calibrator defaults to 128 histogram bins for 128 quantized bins, which
# leaves it one candidate threshold: the full range, i.e. min-max. 512 bins give it 193
# candidates; TensorRT's 2048 take ONNX Runtime's pure-Python search over a minute per model.
_CALIBRATOR_OPTIONS = {"minmax": {}, "entropy": {"num_bins": 512, "num_quantized_bins": 128}, "percentile": {}}
# Heat-maps are not normalised; a consumer scales a frame's tiles together, so a map whose peak is
# below this fraction of the strongest one in the set is invisible and its shape is noise.
CAM_VISIBLE = 0.05
# Adjacent pixels of photographs correlate strongly (crack patches ~0.8-0.99); uniform noise ~0.
MIN_NEIGHBOUR_CORRELATION = 0.3


class QuantizeError(DistillError, ValueError):
    """Quantization refused (bad calibration data, a graph without the contract's tensors)."""


@dataclass
class QuantizeInfo:
    """What :func:`quantize_int8` did; :meth:`manifest_entry` is the package's ``quantization``."""

    path: str
    fp32_path: str
    method: str
    per_channel: bool
    keep_cam_float: bool
    weight_type: str
    activation_type: str
    reduce_range: bool
    n_calibration: int
    calibration: str  # human-readable description of the calibration data
    float_nodes: list[str]  # nodes deliberately left in float (the CAM/head part)
    n_quantize_nodes: int
    n_dequantize_nodes: int
    fp32_bytes: int
    int8_bytes: int

    def manifest_entry(self) -> dict:
        weights = "7-bit weights (reduce_range)" if self.reduce_range else "8-bit weights"
        return {"type": "int8-qdq", "per_channel": self.per_channel, "calibration": f"{self.calibration}; {weights}",
                "float_nodes": list(self.float_nodes)}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class QuantReport:
    """FP32 against INT8 on the same real images (see :func:`compare_models`)."""

    n_images: int
    label_names: list[str]
    fp32_mcc: float
    int8_mcc: float
    fp32_accuracy: float
    int8_accuracy: float
    top1_agreement: float
    probs_max_abs_diff: float
    cam_class: str
    # Heat-maps of cam_class, FP32 against INT8: Pearson per image at input resolution over the
    # images whose FP32 map is visible (peak >= CAM_VISIBLE of the strongest FP32 map).
    cam_corr_mean: float
    cam_corr_min: float
    cam_n_scored: int  # images averaged
    cam_visibility_mismatch: int  # images where exactly one of the two maps is visible
    cam_corr_pred_mean: float  # the same for the class FP32 predicts
    fp32_bytes: int
    int8_bytes: int
    size_ratio: float  # fp32_bytes / int8_bytes
    threads: int | None  # intra-op threads of the latency sessions (None: ONNX Runtime's default)
    runs: int
    tile_batch: int
    latency_ms: dict = field(default_factory=dict)  # {"fp32": {"batch1": ms, "tile": ms}, "int8": {...}}
    speedup_batch1: float = 0.0  # fp32 latency / int8 latency
    speedup_tile: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Quantization


class _ImageReader:
    """ONNX Runtime CalibrationDataReader over a uint8 image array, in small batches."""

    def __init__(self, images: np.ndarray, batch: int = CALIBRATION_BATCH):
        self.images, self.batch, self.pos = images, batch, 0

    def get_next(self):
        if self.pos >= len(self.images):
            return None
        chunk = self.images[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return {INPUT_NAME: chunk}

    def rewind(self):
        self.pos = 0

    def __len__(self):
        return len(self.images)


def _model_input_size(proto) -> int:
    inp = next((i for i in proto.graph.input if i.name == INPUT_NAME), None)
    if inp is None:
        raise QuantizeError(f"the model has no input named {INPUT_NAME!r}: not a distill.export.graph graph")
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != dims[2] or dims[1] <= 0 or dims[3] != 3:
        raise QuantizeError(f"input {INPUT_NAME!r} has shape {dims}, expected N×S×S×3")
    return int(dims[1])


def check_calibration_images(images, size: int) -> np.ndarray:
    """The calibration set as a uint8 N×S×S×3 array, or QuantizeError saying what is wrong."""
    a = np.asarray(images)
    if a.size == 0 or a.ndim == 0 or len(a) == 0:
        raise QuantizeError("refusing to quantize without calibration images: pass real images of the "
                            "deployment domain (a few dozen crack and no-crack patches)")
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[1:] != (size, size, 3):
        raise QuantizeError(f"calibration images must be uint8 N×{size}×{size}×3 (RGB), got {a.dtype} {a.shape}")
    corr = _neighbour_correlation(a)
    if np.median(corr) < MIN_NEIGHBOUR_CORRELATION:
        raise QuantizeError(
            f"the calibration images look like noise (median correlation of neighbouring pixels "
            f"{np.median(corr):.2f} < {MIN_NEIGHBOUR_CORRELATION}); calibrate on real images"
        )
    return np.ascontiguousarray(a)


def _neighbour_correlation(images: np.ndarray) -> np.ndarray:
    g = images.astype(np.float64).mean(axis=3)
    a, b = g[:, :, :-1].reshape(len(g), -1), g[:, :, 1:].reshape(len(g), -1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), 0.0)


def downstream_nodes(proto, tensor: str) -> list[str]:
    """Names of the node producing ``tensor`` and of every node that depends on it."""
    producers = [n for n in proto.graph.node if tensor in n.output]
    seen_tensors, names, frontier = {tensor}, [n.name for n in producers], [tensor]
    while frontier:
        t = frontier.pop()
        for n in proto.graph.node:
            if t in n.input and n.name not in names:
                names.append(n.name)
                for o in n.output:
                    if o not in seen_tensors:
                        seen_tensors.add(o)
                        frontier.append(o)
    return names


def quantize_int8(
    fp32_onnx: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration: np.ndarray,
    *,
    per_channel: bool = True,
    keep_cam_float: bool = True,
    method: str = "minmax",
    calibration_note: str | None = None,
    threads: int | None = None,
    reduce_range: bool = True,
) -> QuantizeInfo:
    """Quantize the exported FP32 graph to INT8 QDQ, calibrated on ``calibration`` (real images).

    ``method``: activation ranges from min/max, entropy (the KL-optimal threshold, TensorRT's
    method; slow: ~10 s for a small model) or a percentile (99.999) of the calibration
    activations. ``calibration_note`` describes the images for the manifest.
    ``threads`` limits ONNX Runtime's intra-op threads while calibrating (None: its default).
    ``reduce_range``: 7-bit weights, exact on every CPU path (see the module doc); False gives
    8-bit weights, which saturate on AVX2-only CPUs.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod, QuantFormat, QuantType, create_calibrator, quant_pre_process, quantize_static,
        save_tensors_data,
    )

    if method not in METHODS:
        raise QuantizeError(f"method must be one of {METHODS}, got {method!r}")
    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    proto = onnx.load(str(fp32_onnx))
    size = _model_input_size(proto)
    images = check_calibration_images(calibration, size)
    if not any(FEATURES_NAME in n.output for n in proto.graph.node):
        raise QuantizeError(f"{fp32_onnx} has no {FEATURES_NAME!r} tensor: not a distill.export.graph graph")
    exclude = downstream_nodes(proto, FEATURES_NAME) if keep_cam_float else []
    calib_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile}[method]

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="distill-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_onnx), str(pre), skip_optimization=True)
        # Calibrate here rather than inside quantize_static, whose session cannot be told how many
        # threads to use; quantize_static then reads the ranges from the cache file.
        calibrator = create_calibrator(pre, None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=calib_method, extra_options=_CALIBRATOR_OPTIONS[method])
        if threads:
            calibrator.infer_session = ort_session(calibrator.augmented_model_path, threads=threads)
        calibrator.collect_data(_ImageReader(images))
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(calibrator.compute_data(), cache)
        del calibrator
        tmp_out = Path(tmp) / "int8.onnx"
        quantize_static(
            str(pre), str(tmp_out), None, quant_format=QuantFormat.QDQ, per_channel=per_channel,
            reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude, calibrate_method=calib_method, calibration_cache_path=str(cache),
        )
        q = onnx.load(str(tmp_out))
        _drop_unused_initializers(q)
        onnx.checker.check_model(q)
        onnx.save(q, str(tmp_out))
        _copy(tmp_out, out_path)

    ops = Counter(n.op_type for n in q.graph.node)
    present = {n.name for n in q.graph.node}
    note = calibration_note or f"{len(images)} real images, {size}x{size}"
    return QuantizeInfo(
        path=str(out_path), fp32_path=str(fp32_onnx), method=method, per_channel=bool(per_channel),
        keep_cam_float=bool(keep_cam_float), weight_type="QInt8", activation_type="QUInt8", reduce_range=bool(reduce_range),
        n_calibration=int(len(images)), calibration=f"{note}; {method} calibration",
        float_nodes=[n for n in exclude if n in present],
        n_quantize_nodes=ops.get("QuantizeLinear", 0), n_dequantize_nodes=ops.get("DequantizeLinear", 0),
        fp32_bytes=fp32_onnx.stat().st_size, int8_bytes=out_path.stat().st_size,
    )


def _drop_unused_initializers(proto) -> None:
    """Remove constants no node reads (ONNX Runtime warns about each at every session start)."""
    used = {name for n in proto.graph.node for name in n.input} | {o.name for o in proto.graph.output}
    kept = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)


def _copy(src: Path, dst: Path) -> None:
    """Copy to a temporary name beside ``dst``, then rename: never a half file at ``dst``."""
    import shutil

    from inspector.fsio import write_atomic

    with open(src, "rb") as fin:
        write_atomic(dst, lambda f: shutil.copyfileobj(fin, f))


# --------------------------------------------------------------------------------------------
# Comparison


def _label_names(path: Path, num_classes: int) -> list[str]:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    try:
        names = list(json.loads(props["crack.model"])["label_names"])
    except (KeyError, ValueError, TypeError):
        names = []
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def _run(sess, images: np.ndarray, batch: int = 32):
    outs = [sess.run(list(OUTPUT_NAMES), {INPUT_NAME: images[i:i + batch]}) for i in range(0, len(images), batch)]
    return [np.concatenate([o[k] for o in outs]) for k in range(len(OUTPUT_NAMES))]


def _latency_ms(sess, batch: np.ndarray, runs: int) -> float:
    sess.run(None, {INPUT_NAME: batch})  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {INPUT_NAME: batch})
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


def _cam_agreement(cam_a: np.ndarray, cam_b: np.ndarray, size: int) -> tuple[float, float, int, int]:
    """Pearson of ``cam_a`` and ``cam_b`` maps over the images where ``cam_a``'s map is visible.

    Returns mean, min, how many images were scored and on how many exactly one map is visible.
    Maps are compared at input resolution after :func:`cam_to_image`, like the Grad-CAM oracle.
    """
    scale = float(cam_a.max())
    if scale <= 0:
        return float("nan"), float("nan"), 0, int((cam_b.reshape(len(cam_b), -1).max(1) > 0).sum())
    visible_a = cam_a.reshape(len(cam_a), -1).max(1) >= CAM_VISIBLE * scale
    visible_b = cam_b.reshape(len(cam_b), -1).max(1) >= CAM_VISIBLE * scale
    img_a, img_b = cam_to_image(cam_a, size), cam_to_image(cam_b, size)
    rs = []
    for i in np.flatnonzero(visible_a):
        r = pearson(img_a[i], img_b[i])
        rs.append(0.0 if np.isnan(r) else r)
    return float(np.mean(rs)), float(np.min(rs)), len(rs), int((visible_a != visible_b).sum())


def int8_drift(fp32_onnx: str | os.PathLike, int8_onnx: str | os.PathLike, images: np.ndarray, *,
               cam_class: str = "crack", threads: int | None = None) -> dict:
    """How far the INT8 graph drifts from its FP32 parent on ``images`` (uint8 N×S×S×3, real;
    no labels needed): top-1 agreement, the largest probability difference and the agreement
    of the ``cam_class`` heat-maps (``cam_corr_mean``/``min`` as in :class:`QuantReport`).
    What the update gate checks (``distill/update/gate.py``)."""
    images = np.ascontiguousarray(np.asarray(images))
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty uint8 N×S×S×3 array, got {images.dtype} {images.shape}")
    (l32, p32, c32), (l8, p8, c8) = (_run(ort_session(p, threads), images) for p in (fp32_onnx, int8_onnx))
    names = _label_names(Path(fp32_onnx), p32.shape[1])
    if cam_class not in names:
        raise ValueError(f"cam_class {cam_class!r} is not one of the model's labels {names}")
    c = names.index(cam_class)
    corr_mean, corr_min, n_scored, mismatch = _cam_agreement(c32[:, c], c8[:, c], images.shape[1])
    return {"n_images": int(len(images)), "top1_agreement": float((p32.argmax(1) == p8.argmax(1)).mean()),
            "probs_max_abs_diff": float(np.abs(p32 - p8).max()), "cam_class": cam_class,
            "cam_corr_mean": corr_mean, "cam_corr_min": corr_min, "cam_n_scored": n_scored,
            "cam_visibility_mismatch": mismatch}


def compare_models(
    fp32_onnx: str | os.PathLike,
    int8_onnx: str | os.PathLike,
    images: np.ndarray,
    labels,
    *,
    tile_batch: int = 12,
    runs: int = 7,
    threads: int | None = None,
    cam_class: str = "crack",
) -> QuantReport:
    """Score both graphs on ``images`` (uint8 N×S×S×3, real) with integer ``labels``.

    Latency is the median of ``runs`` timed runs (after one warm-up) at batch 1 and at
    ``tile_batch`` (the tiles of one frame), each graph in its own session with ``threads``
    intra-op threads. Timings are measurements, machine- and load-dependent.
    """
    fp32_onnx, int8_onnx = Path(fp32_onnx), Path(int8_onnx)
    images = np.ascontiguousarray(np.asarray(images))
    labels = np.asarray(labels, dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty uint8 N×S×S×3 array, got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"{labels.shape[0] if labels.ndim else 0} labels for {len(images)} images")
    size = images.shape[1]
    sessions = {"fp32": ort_session(fp32_onnx, threads), "int8": ort_session(int8_onnx, threads)}
    (l32, p32, c32), (l8, p8, c8) = (_run(sessions[k], images) for k in ("fp32", "int8"))
    num_classes = p32.shape[1]
    names = _label_names(fp32_onnx, num_classes)
    if cam_class not in names:
        raise ValueError(f"cam_class {cam_class!r} is not one of the model's labels {names}")
    c = names.index(cam_class)
    pred32, pred8 = p32.argmax(1), p8.argmax(1)
    corr_mean, corr_min, n_scored, mismatch = _cam_agreement(c32[:, c], c8[:, c], size)
    idx = np.arange(len(images))
    pred_mean, _, _, _ = _cam_agreement(c32[idx, pred32], c8[idx, pred32], size)

    tile = images[np.arange(tile_batch) % len(images)]
    latency = {k: {"batch1": _latency_ms(s, images[:1], runs), "tile": _latency_ms(s, tile, runs)}
               for k, s in sessions.items()}
    b32, b8 = fp32_onnx.stat().st_size, int8_onnx.stat().st_size
    return QuantReport(
        n_images=int(len(images)), label_names=names,
        fp32_mcc=mcc(labels, pred32, num_classes), int8_mcc=mcc(labels, pred8, num_classes),
        fp32_accuracy=float((pred32 == labels).mean()), int8_accuracy=float((pred8 == labels).mean()),
        top1_agreement=float((pred32 == pred8).mean()), probs_max_abs_diff=float(np.abs(p32 - p8).max()),
        cam_class=cam_class, cam_corr_mean=corr_mean, cam_corr_min=corr_min, cam_n_scored=n_scored,
        cam_visibility_mismatch=mismatch, cam_corr_pred_mean=pred_mean,
        fp32_bytes=b32, int8_bytes=b8, size_ratio=b32 / b8, threads=threads, runs=int(runs),
        tile_batch=int(tile_batch), latency_ms=latency,
        speedup_batch1=latency["fp32"]["batch1"] / latency["int8"]["batch1"],
        speedup_tile=latency["fp32"]["tile"] / latency["int8"]["tile"],
    )
