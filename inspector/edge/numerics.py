"""Does this runtime compute this model correctly? The reference check, per precision and provider.

Two questions hide behind "is this the model we shipped?", and they are checked apart:

* **Identity**: is it the same model? ``model_sha256`` and the ed25519 signature
  (:mod:`inspector.edge.package`, :mod:`inspector.link.signing`). Bit-exact, machine-independent.
* **Numerics** (this module): does *this* onnxruntime, on *this* CPU or accelerator, compute
  that model as it was computed when the package was made? INT8 kernels round differently on
  AVX2, AVX-512 VNNI, AMX, ARM and TensorRT, so the answer is a comparison within bounds, never
  bit equality. The bounds come from measured spreads between correct numeric paths and are
  set far below the smallest difference a wrong model shows (``docs/design/edge-models.md``,
  "The reference check", and ``docs/benchmarks/reference_margin.md`` hold the measurements).

A :class:`Rule` is chosen by the model's precision and the provider that runs it
(:func:`rule_for`); :func:`measure` compares a run on the package's reference images with the
shipped outputs; :func:`verify` raises :class:`NumericsError` naming each failed bound with its
number. Every verification is logged with what it measured, so a field failure can be read.

Numeric paths this project can reach without special hardware (:data:`NUMERIC_PATHS`):
``optimised`` (onnxruntime's fused QLinearConv kernels, the default), ``unfused`` (graph
optimisations off: DequantizeLinear → float Conv → QuantizeLinear) and ``emulated-tensorrt``
(a CPU stand-in for an accelerator's INT8 engine: every requantization dithered by up to half a
quantization step, i.e. any rounding of the value, and the float part rounded to float16;
checked with the accelerator rule). ``scripts/numeric_paths/`` adds AVX2 (qemu) and ARM (qemu).

numpy, onnx and onnxruntime only: the Jetson agent imports this.
"""
from __future__ import annotations

import functools
import logging
import platform
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
from inspector.errors import InspectorError

log = logging.getLogger("inspector.edge.numerics")

CPU = "CPUExecutionProvider"
OPTIMISED, UNFUSED, EMULATED_TENSORRT = "optimised", "unfused", "emulated-tensorrt"
NUMERIC_PATHS = (OPTIMISED, UNFUSED, EMULATED_TENSORRT)


# --------------------------------------------------------------------------- the rules


@dataclass(frozen=True)
class Rule:
    """Bounds a correct run must meet on every reference image.

    ``verdicts``: the predicted class (argmax) equals the reference's on every image (reference
    images are chosen at least :data:`MIN_VERDICT_MARGIN` from the decision boundary, so no
    correct path flips one). ``probs_atol``: max |Δp| over images and classes. ``cam_corr_min``:
    Pearson correlation of all heat-map values (every image, class and cell) with the
    reference's. ``cam_peak_max``: the largest difference of one map's peak, as a fraction of
    the strongest reference map (heat-maps are not normalised; a frame's tiles are scaled together).
    """

    name: str
    probs_atol: float
    cam_corr_min: float
    cam_peak_max: float
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Bounds: the largest spread measured between correct numeric paths of the shipped packages
# (docs/benchmarks/reference_margin.md: 48 reference images each, onnxruntime 1.32.0), times a
# margin of 3-10; the other models measured there (another seed, another version, swapped
# labels, the teachers for a student) differ by 9-700x these bounds. Change them only with a
# new measurement.
RULES: dict[str, Rule] = {
    "cpu-fp32": Rule(
        "cpu-fp32", probs_atol=1e-4, cam_corr_min=0.99999, cam_peak_max=1e-4,
        why="FP32 on a CPU: paths differ only in float summation order (unfused, AVX2, ARM: "
            "max |Δp| <= 1.1e-6, peak <= 5.4e-7)"),
    "cpu-int8": Rule(
        "cpu-int8", probs_atol=5e-3, cam_corr_min=0.999, cam_peak_max=0.01,
        why="INT8 on a CPU: with 7-bit weights every fused kernel (AMX, VNNI, AVX2, ARM) "
            "accumulates exactly (|Δp| <= 3e-8); the unfused QDQ path rounds its float "
            "convolutions before requantizing (max |Δp| 1.3e-3, peak 1.6e-3)"),
    "accelerator-fp32": Rule(
        "accelerator-fp32", probs_atol=5e-3, cam_corr_min=0.9999, cam_peak_max=0.01,
        why="FP32 on TensorRT/CUDA, which may run layers in float16: emulated by rounding every "
            "convolution's output to float16 (max |Δp| 1.2e-3, peak 1.7e-3)"),
    "accelerator-int8": Rule(
        "accelerator-int8", probs_atol=0.04, cam_corr_min=0.99, cam_peak_max=0.03,
        why="INT8 on TensorRT/CUDA, which builds its own engine from the QDQ scales: emulated by "
            "moving every requantized value to either neighbouring step, float parts in float16 "
            "(5 seeds: max |Δp| 1.4e-2, r >= 0.99992, peak 9.8e-3)"),
}
# A reference image's crack probability must be this far from 0.5 so that no correct path
# (the loosest bound is 0.04) can flip its verdict.
MIN_VERDICT_MARGIN = 0.1


def is_accelerator(provider: str) -> bool:
    return provider != CPU


def rule_for(quantization_type: str, provider: str = CPU) -> Rule:
    """The rule for a model of ``quantization_type`` (``fp32``/``int8-qdq``) run by ``provider``
    (an onnxruntime execution provider or :data:`EMULATED_TENSORRT`)."""
    precision = "int8" if quantization_type.startswith("int8") else "fp32"
    where = "accelerator" if provider == EMULATED_TENSORRT or is_accelerator(provider) else "cpu"
    return RULES[f"{where}-{precision}"]


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Measured:
    """How a run on the reference images differs from the shipped outputs."""

    n_images: int
    verdict_mismatches: int
    probs_max_abs: float
    cam_corr: float
    cam_peak: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.n_images} images: verdicts differ on {self.verdict_mismatches}, max |Δp| "
                f"{self.probs_max_abs:.3g}, heat-map correlation {self.cam_corr:.6f}, peak difference "
                f"{self.cam_peak:.3g}")


def measure(ref_probs: np.ndarray, probs: np.ndarray, ref_cam: np.ndarray | None = None,
            cam: np.ndarray | None = None) -> Measured:
    """Compare a run (``probs`` N×C, ``cam`` N×C×h×w) with the reference's; shapes must match."""
    ref_probs, probs = np.asarray(ref_probs, np.float64), np.asarray(probs, np.float64)
    if ref_probs.shape != probs.shape:
        raise ValueError(f"probs {probs.shape} against reference {ref_probs.shape}")
    mismatches = int(np.sum(ref_probs.argmax(1) != probs.argmax(1)))
    p_err = float(np.max(np.abs(ref_probs - probs))) if probs.size else 0.0
    corr, peak = 1.0, 0.0
    if ref_cam is not None and cam is not None:
        ref_cam, cam = np.asarray(ref_cam, np.float64), np.asarray(cam, np.float64)
        if ref_cam.shape != cam.shape:
            raise ValueError(f"cam {cam.shape} against reference {ref_cam.shape}")
        corr = _pearson(ref_cam.ravel(), cam.ravel())
        flat_ref = ref_cam.reshape(*ref_cam.shape[:2], -1).max(-1)
        flat = cam.reshape(*cam.shape[:2], -1).max(-1)
        scale = float(flat_ref.max()) if flat_ref.size else 0.0
        peak = float(np.max(np.abs(flat - flat_ref)) / scale) if scale > 0 else float(np.max(np.abs(flat)))
    if not np.isfinite(p_err):
        p_err = float("inf")
    return Measured(int(len(probs)), mismatches, p_err, corr, peak)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if den == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float((a * b).sum() / den)


def failures(m: Measured, rule: Rule) -> list[str]:
    """The bounds of ``rule`` that ``m`` breaks, each with its number; empty when it passes."""
    out = []
    if m.verdict_mismatches:
        out.append(f"verdicts differ on {m.verdict_mismatches} of {m.n_images} reference images (must be 0)")
    if not m.probs_max_abs <= rule.probs_atol:
        out.append(f"max |Δp| = {m.probs_max_abs:.3g} > {rule.probs_atol:g}")
    if not m.cam_corr >= rule.cam_corr_min:
        out.append(f"heat-map correlation {m.cam_corr:.6f} < {rule.cam_corr_min:g}")
    if not m.cam_peak <= rule.cam_peak_max:
        out.append(f"heat-map peak difference {m.cam_peak:.3g} > {rule.cam_peak_max:g}")
    return out


@dataclass(frozen=True)
class Verification:
    """One reference check: the rule, what it measured, where it ran."""

    rule: Rule
    measured: Measured
    provider: str
    isa: str
    onnxruntime: str

    @property
    def passed(self) -> bool:
        return not failures(self.measured, self.rule)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.name, "passed": self.passed, "provider": self.provider, "isa": self.isa,
                "onnxruntime": self.onnxruntime, **self.measured.to_dict()}

    def summary(self) -> str:
        return (f"rule {self.rule.name} on {self.provider} ({self.isa}, onnxruntime {self.onnxruntime}): "
                f"{'passed' if self.passed else 'FAILED'}; {self.measured}")


class NumericsError(InspectorError, ValueError):
    """The model does not compute its reference outputs within its rule on this runtime."""

    def __init__(self, message: str, verification: Verification):
        super().__init__(message)
        self.verification = verification


def verify(quantization_type: str, reference: Mapping[str, np.ndarray], probs: np.ndarray,
           cam: np.ndarray | None, *, provider: str = CPU, model: str = "the model") -> Verification:
    """Check a run on ``reference["image"]`` against the shipped outputs with the rule for
    ``quantization_type`` on ``provider``; log the measurement; raise :class:`NumericsError`
    naming every broken bound (a wrong model, a swapped label order or a broken provider)."""
    import onnxruntime as ort

    m = measure(reference["probs"], probs, reference.get("cam"), cam)
    rule = rule_for(quantization_type, provider)
    v = Verification(rule, m, provider, int8_isa(), ort.__version__)
    broken = failures(m, rule)
    log.info("reference check of %s: %s", model, v.summary())
    if broken:
        raise NumericsError(
            f"reference: {model} does not reproduce its reference outputs under rule {rule.name} "
            f"({provider}, {v.isa}): {'; '.join(broken)} (a wrong model, wrong label order or broken provider)", v)
    return v


# --------------------------------------------------------------------------- the machine


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform says: benchmark rows name it."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _cpu_flags() -> set[str]:
    flags: set[str] = set()
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


@functools.lru_cache(maxsize=1)
def int8_isa() -> str:
    """The CPU's best integer dot-product instructions, which decide INT8 speed (and, before the
    7-bit weights, its numbers): ``AMX``, ``AVX-512 VNNI``, ``AVX-VNNI``, ``AVX2``, ``NEON dot``,
    ``NEON``, or the machine name when none is known."""
    flags, machine = _cpu_flags(), platform.machine().lower()
    for flag, name in (("amx_int8", "AMX"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"),
                       ("avx2", "AVX2"), ("asimddp", "NEON dot"), ("asimd", "NEON")):
        if flag in flags:
            return name
    if machine in ("aarch64", "arm64"):
        return "NEON"
    return machine or "unknown"


# --------------------------------------------------------------------------- reachable numeric paths


def emulated_tensorrt_graph(onnx_bytes: bytes, seed: float = 7.0) -> bytes:
    """The model as an accelerator that builds its own engine might compute it, for the CPU.

    Every QuantizeLinear gets its input dithered by U(-0.5, 0.5) of its scale first, so each
    quantized value may land on either neighbouring step (a different rounding point or mode
    moves it by at most one), and every float tensor a Conv, Gemm or MatMul produces, and the
    ``features`` boundary, is rounded through float16 (TensorRT runs non-quantized layers in
    float16 when allowed). A stand-in with documented noise, not TensorRT itself.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(onnx_bytes)
    nodes = []
    for k, node in enumerate(model.graph.node):
        if node.op_type == "QuantizeLinear":
            x, scale = node.input[0], node.input[1]
            noise, step, dithered = f"_dither{k}_u", f"_dither{k}_step", f"_dither{k}_x"
            nodes += [helper.make_node("RandomUniformLike", [x], [noise], low=-0.5, high=0.5,
                                       dtype=TensorProto.FLOAT, seed=float(seed + k)),
                      helper.make_node("Mul", [noise, scale], [step]),
                      helper.make_node("Add", [x, step], [dithered])]
            node.input[0] = dithered
        nodes.append(node)
        if node.op_type in ("Conv", "Gemm", "MatMul") or "features" in node.output:
            # the producer writes OUT__raw; OUT, what consumers and graph outputs read, is rounded
            for i, out in enumerate(list(node.output)):
                node.output[i] = f"{out}__raw"
                nodes += [helper.make_node("Cast", [f"{out}__raw"], [f"{out}__fp16"], to=TensorProto.FLOAT16),
                          helper.make_node("Cast", [f"{out}__fp16"], [out], to=TensorProto.FLOAT)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model.SerializeToString()


def session(onnx_bytes: bytes, path: str = OPTIMISED, *, threads: int = 1, providers: list | None = None,
            seed: float = 7.0):
    """An onnxruntime session computing ``onnx_bytes`` along numeric ``path`` (on the CPU for the
    unfused and emulated paths; ``seed``: the emulated path's dither)."""
    import onnxruntime as ort

    if path not in NUMERIC_PATHS:
        raise ValueError(f"numeric path must be one of {NUMERIC_PATHS}, got {path!r}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if path == OPTIMISED:
        return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=providers or [CPU])
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if path == EMULATED_TENSORRT:
        onnx_bytes = emulated_tensorrt_graph(onnx_bytes, seed=seed)
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=[CPU])
