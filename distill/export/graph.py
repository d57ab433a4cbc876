"""Export a Classifier to the ONNX contract of ``docs/design/edge-models.md``, Grad-CAM included.

The exported graph takes ``image`` (uint8 N×S×S×3, RGB) and gives ``logits``, ``probs`` and
``cam`` (N×C×h×w: the Grad-CAM of every class at feature-map resolution, ReLU'd, not
normalised); the last convolutional map is the named intermediate tensor ``features``, the
output of an Identity node of that name, so quantization can find the boundary between the
backbone and the CAM/head part.

Grad-CAM (Selvaraju et al. 2017) is ``L_c = ReLU(Σ_k α_ck A_k)`` with
``α_ck = (1/Z) Σ_ij ∂y_c/∂A_kij``. With global average pooling, ``∂y_c/∂A_kij = g_ck / Z``
where ``g = ∂y/∂e`` is the Jacobian of the head at the pooled embedding ``e``; so the graph
only needs ``g``, built analytically from the head's layers (no backward pass):

* a chain of Linear layers (ResNet, DenseNet, EfficientNet-B*/Lite, MobileNetV2; Dropout is
  the identity at inference): ``g = W_L ··· W_1``, a constant, and the CAM is one 1×1
  convolution of the feature map;
* Linear → activation → Linear (MobileNetV3: Hardswish): ``g = W2 · diag(act'(W1 e + b1)) · W1``,
  per image, and the CAM a batched matrix product. The derivatives are PyTorch's own
  (``hardswish'`` is 0 below −3, ``z/3 + 1/2`` on [−3, 3], 1 above 3), so the graph agrees
  with autograd everywhere, including the kinks.

A head that is not global pooling plus such a chain (VGG flattens a 7×7 map) raises
:class:`ExportError`: its CAM would not be exact.

The exported graph is cleaned for TensorRT and for INT8: constant subgraphs are folded (the
TorchScript exporter writes fixed paddings as shape arithmetic) and zero Pads are folded into
the convolutions that read them (EfficientNet-Lite's TensorFlow "SAME" padding). The result
has no Shape, Constant, Loop or data-dependent op; the batch axis ``N`` is dynamic.

:func:`~distill.export.gradcam.gradcam_reference` runs pytorch-grad-cam's ``GradCAM`` on the
float model, the oracle the tests and the benchmark compare the graph's ``cam`` with; the two
graph passes are in :mod:`distill.export.onnx_passes`.
"""
from __future__ import annotations

import copy
import io
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill.export.onnx_passes import fold_constants, fuse_pads_into_convs
from distill.models.checkpoint import atomic_write
from distill.models.registry import Classifier
from distill.errors import DistillError

INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "probs", "cam")
FEATURES_NAME = "features"
DEFAULT_OPSET = 17

# Tolerances of the self-check (ONNX Runtime against PyTorch, float32 both).
PROBS_ATOL = 1e-4
LOGITS_RTOL = 1e-4  # of max(1, largest |logit|)
CAM_RTOL = 1e-3  # of max(1e-6, largest cam value): cams are unnormalised, their scale varies

# Activations allowed between the Linear layers of a head, with their derivative as autograd
# computes it (aten's *_backward kernels), so the analytic gradient equals the true one.
_ACTIVATIONS = {
    nn.Hardswish: "hardswish",
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
}
_FUNCTIONS = {"hardswish": F.hardswish, "relu": F.relu, "relu6": F.relu6}
_ACTIVATIONS_NAMES = tuple(t.__name__ for t in _ACTIVATIONS)
_IDENTITIES = (nn.Dropout, nn.Identity)


class ExportError(DistillError, ValueError):
    """The model cannot be exported faithfully, or the exported graph disagrees with PyTorch."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how closely ONNX Runtime reproduces PyTorch."""

    path: str
    arch: str
    input_size: int
    label_names: list[str]
    opset: int
    feature_shape: list[int]  # K, h, w
    cam_method: str  # "linear" (constant α) or "analytic-mlp" (α per image)
    checked: bool
    n_check_images: int = 0
    probs_max_abs_diff: float | None = None
    logits_max_abs_diff: float | None = None
    cam_max_abs_diff: float | None = None
    cam_max_rel_diff: float | None = None  # cam_max_abs_diff / largest cam value
    batch1_max_abs_diff: float | None = None  # ORT batch of 1 against the same image in the batch
    float_path_max_abs_diff: float | None = None  # folded uint8 graph against model(image / 255), probs

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# The graph as a PyTorch module


def _head_layers(model: Classifier) -> list[tuple[str, nn.Module]]:
    """The head as ("linear", Linear) / (activation name, module) steps, or ExportError."""
    arch = model.meta.arch

    def flatten(m: nn.Module) -> list[nn.Module]:
        if isinstance(m, nn.Sequential):
            return [x for child in m for x in flatten(child)]
        return [m]

    steps: list[tuple[str, nn.Module]] = []
    for m in flatten(model.spec.head(model.net)):
        if isinstance(m, nn.Linear):
            steps.append(("linear", m))
        elif type(m) in _ACTIVATIONS:
            steps.append((_ACTIVATIONS[type(m)], m))
        elif isinstance(m, _IDENTITIES):
            continue  # identity at inference
        else:
            raise ExportError(
                f"Grad-CAM is not supported for {arch}: its head contains {type(m).__name__}; the graph "
                f"builds the gradient of heads made of Linear, Dropout and "
                f"{'/'.join(sorted(_ACTIVATIONS_NAMES))} layers only"
            )
    if not steps or steps[-1][0] != "linear":
        raise ExportError(f"Grad-CAM is not supported for {arch}: its head does not end with a Linear layer")
    return steps



def _derivative(kind: str, z: torch.Tensor) -> torch.Tensor:
    if kind == "hardswish":
        return torch.where(z < -3.0, 0.0, torch.where(z <= 3.0, z / 3.0 + 0.5, 1.0))
    if kind == "relu":
        return (z > 0).to(z.dtype)
    if kind == "relu6":
        return ((z > 0) & (z < 6)).to(z.dtype)
    raise AssertionError(kind)


class EdgeGraph(nn.Module):
    """uint8 NHWC image -> (logits, probs, cam, features): the module that is exported.

    Public so the tests and the benchmark can run exactly what is exported in PyTorch.
    """

    def __init__(self, model: Classifier):
        super().__init__()
        model = copy.deepcopy(model).eval()
        self.model = model
        meta = model.meta
        mean = torch.tensor(meta.mean, dtype=torch.float64)
        std = torch.tensor(meta.std, dtype=torch.float64)
        # (image / 255 - mean) / std as one multiply-add.
        self.register_buffer("scale", (1.0 / (255.0 * std)).float().view(1, 3, 1, 1))
        self.register_buffer("shift", (-mean / std).float().view(1, 3, 1, 1))
        self.size = int(meta.input_size)
        with torch.no_grad():
            fmap = model.spec.features(model.net, torch.zeros(1, 3, self.size, self.size))
        if fmap.dim() != 4:
            raise ExportError(f"{meta.arch}: the feature map has shape {tuple(fmap.shape)}, not N×K×h×w")
        _, self.k, self.h, self.w = (int(v) for v in fmap.shape)
        self._check_gap(model)
        self.steps = _head_layers(model)
        self.static_alpha = all(kind == "linear" for kind, _ in self.steps)
        self._check_head(model)
        self.num_classes = int(self.steps[-1][1].out_features)
        if self.num_classes != meta.num_classes:
            raise ExportError(f"{meta.arch}: the head has {self.num_classes} outputs for {meta.num_classes} labels")
        # Inference mode throughout: a fresh Module is in training mode, and the exporter restores
        # the mode it found, recursively (dropout and batch statistics would come back).
        self.eval()

    def _check_gap(self, model: Classifier) -> None:
        fm = torch.rand(2, self.k, self.h, self.w, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            emb = model.embed(fm)
        if tuple(emb.shape) != (2, self.k) or not torch.allclose(emb, fm.mean(dim=(2, 3)), atol=1e-6):
            raise ExportError(
                f"Grad-CAM is not supported for {model.meta.arch}: its head does not pool the feature map "
                f"globally (embedding {tuple(emb.shape[1:])} from a {self.k}×{self.h}×{self.w} map), so the "
                f"graph cannot build its gradient exactly"
            )

    def _check_head(self, model: Classifier) -> None:
        """The parsed steps must compute the head itself (nothing hidden in a forward())."""
        e = torch.randn(3, self.k, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want = model.head(e)
            got = e
            for _, m in self.steps:
                got = m(got)
        if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
            raise ExportError(f"Grad-CAM is not supported for {model.meta.arch}: its head is not the plain "
                              f"chain of its layers")

    def alpha(self, emb: torch.Tensor) -> torch.Tensor:
        """Grad-CAM weights: C×K (constant) or N×C×K."""
        pre: list[torch.Tensor] = []
        if not self.static_alpha:
            h = emb
            for kind, m in self.steps:
                if kind == "linear":
                    h = m(h)
                else:
                    # Functional, never the module: heads use inplace=True activations, which
                    # would overwrite the pre-activation kept for the derivative.
                    pre.append(h)
                    h = _FUNCTIONS[kind](h)
        g = None
        for kind, m in reversed(self.steps):
            if kind == "linear":
                g = m.weight if g is None else g @ m.weight
            else:
                d = _derivative(kind, pre.pop())  # N×H
                g = (g if g.dim() == 3 else g.unsqueeze(0)) * d.unsqueeze(1)
        return g / float(self.h * self.w)

    def cam(self, fmap: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        a = self.alpha(emb)
        if a.dim() == 2:
            out = F.conv2d(fmap, a[:, :, None, None])
        else:
            out = torch.matmul(a, fmap.reshape(-1, self.k, self.h * self.w))
            out = out.reshape(-1, self.num_classes, self.h, self.w)
        return torch.relu(out)

    def forward(self, image: torch.Tensor):
        x = image.permute(0, 3, 1, 2).to(torch.float32) * self.scale + self.shift
        fmap = self.model.spec.features(self.model.net, x)
        emb = self.model.embed(fmap)
        logits = self.model.head(emb)
        probs = torch.softmax(logits, dim=1)
        return logits, probs, self.cam(fmap, emb), fmap


# --------------------------------------------------------------------------------------------
# Export


def export_onnx(
    model: Classifier,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    check_images: np.ndarray | None = None,
) -> ExportReport:
    """Write ``model`` as the contract's ONNX graph to ``path`` (atomically).

    ``check=True`` (the default) runs the ONNX checker and then ONNX Runtime on
    ``check_images`` (uint8 N×S×S×3 real images, required) and compares ``logits``, ``probs``
    and ``cam`` with PyTorch; a mismatch raises :class:`ExportError` with the numbers and
    nothing is written.
    """
    import onnx

    path = Path(path)
    size = int(model.meta.input_size)
    if check:
        if check_images is None:
            raise ExportError("check=True needs check_images: a few real uint8 N×S×S×3 images to compare "
                              "ONNX Runtime with PyTorch on (or pass check=False)")
        check_images = _as_image_batch(check_images, size, "check_images")
    graph = EdgeGraph(model)
    proto = _to_onnx(graph, opset)
    onnx.checker.check_model(proto, full_check=True)

    report = ExportReport(
        path=str(path), arch=model.meta.arch, input_size=size, label_names=list(model.meta.label_names),
        opset=int(opset), feature_shape=[graph.k, graph.h, graph.w],
        cam_method="linear" if graph.static_alpha else "analytic-mlp", checked=bool(check),
    )
    data = proto.SerializeToString()
    if check:
        _check(graph, data, check_images, report)
    atomic_write(path, lambda f: f.write(data))
    return report


def _as_image_batch(images, size: int, name: str) -> np.ndarray:
    a = np.asarray(images)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[1:] != (size, size, 3) or a.shape[0] == 0:
        raise ExportError(f"{name} must be a non-empty uint8 array N×{size}×{size}×3 (RGB), got "
                          f"{a.dtype} {a.shape}")
    return np.ascontiguousarray(a)


def _to_onnx(graph: EdgeGraph, opset: int):
    import onnx
    from onnx import helper

    names = [*OUTPUT_NAMES, FEATURES_NAME]
    buf = io.BytesIO()
    dummy = torch.zeros(1, graph.size, graph.size, 3, dtype=torch.uint8)
    with warnings.catch_warnings():
        # The legacy (TorchScript) exporter: the torch.export one needs onnxscript. Tracing warns
        # about shapes turned into constants, which is what we want (S is fixed, N is dynamic).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph, (dummy,), buf, dynamo=False, input_names=[INPUT_NAME], output_names=names,
            dynamic_axes={n: {0: "N"} for n in [INPUT_NAME, *names]}, opset_version=opset,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buf.getvalue())
    fold_constants(proto)
    fuse_pads_into_convs(proto)
    g = proto.graph
    # `features` becomes an intermediate tensor made by an Identity node of that name.
    producer = next(n for n in g.node if FEATURES_NAME in n.output)
    raw = "backbone_output"
    producer.output[list(producer.output).index(FEATURES_NAME)] = raw
    # Its consumers keep reading `features`, now the Identity's output.
    position = list(g.node).index(producer) + 1
    g.node.insert(position, helper.make_node("Identity", [raw], [FEATURES_NAME], name=FEATURES_NAME))
    kept = [o for o in g.output if o.name != FEATURES_NAME]
    del g.output[:]
    g.output.extend(kept)
    meta = graph.model.meta
    info = {
        "arch": meta.arch, "input_size": meta.input_size, "label_names": list(meta.label_names),
        "mean": list(meta.mean), "std": list(meta.std), "layout": "NHWC", "dtype": "uint8",
        "features": FEATURES_NAME, "feature_shape": [graph.k, graph.h, graph.w],
    }
    helper.set_model_props(proto, {"crack.model": json.dumps(info)})
    proto.doc_string = (f"{meta.arch}: uint8 NHWC RGB image -> logits, probs, Grad-CAM of every class "
                        f"(docs/design/edge-models.md)")
    return onnx.shape_inference.infer_shapes(proto, strict_mode=True)


def ort_session(model, threads: int | None = 1):
    """An ONNX Runtime CPU session (``model`` a path or serialized bytes); ``threads`` intra-op."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    src = str(model) if isinstance(model, (str, os.PathLike)) else model
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


def _check(graph: EdgeGraph, data: bytes, images: np.ndarray, report: ExportReport) -> None:
    sess = ort_session(data)
    logits, probs, cam = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
    first = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: images[:1]})
    with torch.no_grad():
        t_logits, t_probs, t_cam, _ = (v.numpy() for v in graph(torch.from_numpy(images)))
        x01 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        f_probs = torch.softmax(graph.model(x01), dim=1).numpy()
    shapes = {"logits": (len(images), graph.num_classes), "probs": (len(images), graph.num_classes),
              "cam": (len(images), graph.num_classes, graph.h, graph.w)}
    for name, value in zip(OUTPUT_NAMES, (logits, probs, cam)):
        if value.shape != shapes[name] or value.dtype != np.float32:
            raise ExportError(f"ONNX output {name} is {value.dtype} {value.shape}, expected float32 {shapes[name]}")
    report.n_check_images = int(len(images))
    report.probs_max_abs_diff = float(np.abs(probs - t_probs).max())
    report.logits_max_abs_diff = float(np.abs(logits - t_logits).max())
    report.cam_max_abs_diff = float(np.abs(cam - t_cam).max())
    cam_scale = max(1e-6, float(np.abs(t_cam).max()))
    report.cam_max_rel_diff = report.cam_max_abs_diff / cam_scale
    report.batch1_max_abs_diff = float(max(np.abs(a - b[:1]).max() for a, b in zip(first, (logits, probs, cam))))
    report.float_path_max_abs_diff = float(np.abs(t_probs - f_probs).max())
    logit_tol = LOGITS_RTOL * max(1.0, float(np.abs(t_logits).max()))
    failures = [
        f"probs differ by {report.probs_max_abs_diff:.3g} (> {PROBS_ATOL})" if report.probs_max_abs_diff > PROBS_ATOL else "",
        f"logits differ by {report.logits_max_abs_diff:.3g} (> {logit_tol:.3g})" if report.logits_max_abs_diff > logit_tol else "",
        f"cam differs by {report.cam_max_abs_diff:.3g} ({report.cam_max_rel_diff:.3g} of its largest value "
        f"{cam_scale:.3g}, > {CAM_RTOL})" if report.cam_max_rel_diff > CAM_RTOL else "",
        f"a batch of 1 differs from the same image in a batch by {report.batch1_max_abs_diff:.3g}"
        if report.batch1_max_abs_diff > max(PROBS_ATOL, CAM_RTOL * cam_scale, logit_tol) else "",
        f"the folded uint8 normalisation differs from model(image / 255) by {report.float_path_max_abs_diff:.3g} "
        f"in probs" if report.float_path_max_abs_diff > PROBS_ATOL else "",
    ]
    failures = [f for f in failures if f]
    if failures:
        raise ExportError(f"{graph.model.meta.arch}: ONNX Runtime disagrees with PyTorch on "
                          f"{len(images)} check image(s): " + "; ".join(failures))
