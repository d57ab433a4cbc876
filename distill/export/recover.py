"""Recover a student's PyTorch weights from its FP32 model package (the ONNX initializers).

The exporter (``distill/export/graph.py``) folds every batch norm into the convolution before it and
folds the input normalisation into a ``scale``/``shift`` pair, so the package holds, per
convolution, ``W_f`` and ``b_f`` with ``conv_f(x) = BN(conv(x))``. The original batch-norm
statistics are gone; the recovered network computes the same function in evaluation mode and
behaves sensibly in training mode:

* ``conv.weight = W_f / c`` with ``c`` per output channel chosen so that the weights have the
  standard deviation of He initialisation, ``sqrt(2 / fan_in)``. A convolution followed by a
  batch norm may have any scale; folding leaves the deep layers' weights 4–6× smaller than
  that (ResNet-18's layer4: std 5e-3), and an optimiser such as Adam, whose first steps move
  every weight by about the learning rate, then changes them by 6 % per step and wrecks the
  model within a few steps (measured: AdamW at 3e-4, golden MCC 1.0 → 0.0 in 4 steps). At He
  scale the same steps are about 1.5 %, as in the original training;
* the batch norm after it gets statistics re-measured on real patches (``m``, ``v``: mean and
  variance per channel of ``conv(x)`` over ``calibration``) and the affine part that cancels
  them: ``γ = c · sqrt(v + ε)``, ``β = b_f + c · m``, so ``BN(conv(x)) = c · (conv(x) − m) +
  b_f + c · m = conv_f(x)`` in evaluation mode, while in training mode a batch of the same kind
  of data is normalised with statistics close to the running ones (fine-tuning does not start
  by rescaling every activation, as it would with ``m = 0, v = 1``).

Which batch norm follows which convolution is found by tracing one forward pass (the batch
norm's input is the convolution's output), which convolution node holds which weights by the
ONNX node names the exporter writes (``/layer1/layer1.0/conv1/Conv`` → ``layer1.0.conv1``).
Heads are taken from initializers named after the module (``model.net.fc.weight``).

:func:`verify_against_package` re-exports the recovered model and compares its outputs with the
package's reference outputs (the check the shipped checkpoint passed: ≤ 1e-5).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from distill.models.errors import ModelError
from distill.models.registry import Classifier, ModelMeta, build_model

_PREFIX = "model.net."


class RecoveryError(ModelError):
    """The package's graph cannot be mapped back onto its architecture; the message says where."""


def _module_path(node_name: str) -> str:
    """``/layer2/layer2.0/downsample/downsample.0/Conv`` → ``layer2.0.downsample.0``."""
    parts = [p for p in node_name.strip("/").split("/")[:-1] if p]
    path: list[str] = []
    for comp in parts:
        if path and comp.startswith(path[-1] + "."):
            path[-1] = comp
        else:
            path.append(comp)
    return ".".join(path)


def _conv_bn_pairs(model: Classifier) -> dict[str, str]:
    """``{conv module name: batch-norm module name}`` for every conv whose output feeds a BN."""
    names = {m: n for n, m in model.net.named_modules()}
    outputs: dict[int, str] = {}
    pairs: dict[str, str] = {}
    hooks = []
    for module, name in names.items():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(lambda m, i, o: outputs.__setitem__(id(o), names[m])))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            def pre(m, inputs):
                conv = outputs.get(id(inputs[0]))
                if conv is not None:
                    pairs[conv] = names[m]
            hooks.append(module.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, model.meta.input_size, model.meta.input_size))
    finally:
        for h in hooks:
            h.remove()
    return pairs


def _initializers(proto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def _folded_convs(proto, model: Classifier) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    consts = _initializers(proto)
    convs = {n for n, m in model.net.named_modules() if isinstance(m, nn.Conv2d)}
    found = {}
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        path = _module_path(node.name)
        if path not in convs:
            continue  # the Grad-CAM 1×1 convolution built from the head
        weight = consts.get(node.input[1])
        bias = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if weight is None:
            raise RecoveryError(f"model.onnx node {node.name}: its weight {node.input[1]!r} is not an initializer")
        found[path] = (weight, bias)
    missing = sorted(convs - set(found))
    if missing:
        raise RecoveryError(f"model.onnx has no Conv node for {missing[:4]} (node names do not match the "
                            f"{model.meta.arch} modules)")
    return found


def _meta_of(manifest) -> ModelMeta:
    return ModelMeta(arch=manifest.architecture, label_names=tuple(manifest.labels), input_size=manifest.input.size,
                     mean=tuple(manifest.preprocessing.mean), std=tuple(manifest.preprocessing.std),
                     init=f"recovered from {manifest.name}-{manifest.version}.crackpkg",
                     extra={"tiling": manifest.tiling.to_dict()} if manifest.tiling is not None else {})


def _check_normalisation(consts: dict, meta: ModelMeta) -> None:
    mean, std = np.array(meta.mean, np.float64), np.array(meta.std, np.float64)
    want_scale, want_shift = 1.0 / (255.0 * std), -mean / std
    got_scale, got_shift = consts.get("scale"), consts.get("shift")
    if got_scale is None or got_shift is None:
        raise RecoveryError("model.onnx has no 'scale'/'shift' initializers: not a distill.export.graph graph")
    if not (np.allclose(got_scale.ravel(), want_scale, rtol=1e-6) and np.allclose(got_shift.ravel(), want_shift, rtol=1e-6)):
        raise RecoveryError("preprocessing: the graph's folded normalisation does not match the manifest's mean/std")


def recover_classifier(package, calibration: np.ndarray) -> Classifier:
    """The package's network as a :class:`Classifier` (see the module docstring).

    ``package``: a loaded FP32 ``ModelPackage``; ``calibration``: uint8 N×S×S×3 real patches
    of its training data, to re-measure the batch-norm statistics.
    """
    import onnx

    m = package.manifest
    if m.quantization.type != "fp32":
        raise RecoveryError(f"quantization.type: weights are recovered from the FP32 package, not {m.quantization.type}")
    proto = onnx.load_from_string(package.onnx_bytes)
    meta = _meta_of(m)
    consts = _initializers(proto)
    _check_normalisation(consts, meta)
    model = build_model(meta.arch, label_names=meta.label_names, input_size=meta.input_size)
    model.meta = meta
    pairs = _conv_bn_pairs(model)
    folded = _folded_convs(proto, model)
    modules = dict(model.net.named_modules())
    with torch.no_grad():
        for conv_name, (w, b) in folded.items():
            conv = modules[conv_name]
            if tuple(conv.weight.shape) != w.shape:
                raise RecoveryError(f"{conv_name}: model.onnx weight {w.shape} != {tuple(conv.weight.shape)}")
            bias = torch.from_numpy(np.array(b)) if b is not None else torch.zeros(w.shape[0])
            bn_name = pairs.get(conv_name)
            weight = torch.from_numpy(np.array(w)).double()
            scale = torch.ones(w.shape[0], dtype=torch.float64)
            if bn_name is not None:   # He scale (see the module docstring); the batch norm takes c
                he = float(np.sqrt(2.0 / weight[0].numel()))
                scale = weight.flatten(1).std(dim=1).clamp_min(1e-12) / he
            conv.weight.copy_((weight / scale.view(-1, *([1] * (weight.dim() - 1)))).float())
            if bn_name is None:
                if conv.bias is None:
                    raise RecoveryError(f"{conv_name}: a folded bias but neither a conv bias nor a batch norm to hold it")
                conv.bias.copy_(bias)
                continue
            if conv.bias is not None:
                conv.bias.zero_()
            bn = modules[bn_name]
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.weight.copy_((scale * np.sqrt(1.0 + bn.eps)).float())
            bn.bias.copy_(bias)
        _load_head(model, consts)
    _remeasure_bn(model, pairs, modules, calibration)
    return model.eval()


def _load_head(model: Classifier, consts: dict) -> None:
    head = {k[len(_PREFIX):]: v for k, v in consts.items() if k.startswith(_PREFIX)}
    own = model.net.state_dict()
    for key, value in head.items():
        if key not in own or tuple(own[key].shape) != value.shape:
            raise RecoveryError(f"model.onnx initializer {_PREFIX}{key} does not fit {model.meta.arch}")
        own[key].copy_(torch.from_numpy(np.array(value)))


def _remeasure_bn(model: Classifier, pairs: dict[str, str], modules: dict, calibration: np.ndarray) -> None:
    """Statistics of every conv output on ``calibration``, then the affine part that cancels them."""
    images = torch.from_numpy(np.ascontiguousarray(calibration)).permute(0, 3, 1, 2).float() / 255.0
    sums: dict[str, list] = {bn: [0.0, 0.0, 0] for bn in pairs.values()}
    hooks = []
    for bn_name in pairs.values():
        def pre(m, inputs, key=bn_name):
            y = inputs[0].double()
            acc = sums[key]
            acc[0] = acc[0] + y.sum(dim=(0, 2, 3))
            acc[1] = acc[1] + (y * y).sum(dim=(0, 2, 3))
            acc[2] += y.shape[0] * y.shape[2] * y.shape[3]
        hooks.append(modules[bn_name].register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            for start in range(0, len(images), 64):
                model.eval()(images[start:start + 64])
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for bn_name, (s, s2, n) in sums.items():
            bn = modules[bn_name]
            mean = s / n
            var = (s2 / n - mean * mean).clamp_min(0.0)
            bias = bn.bias.double().clone()                              # b_f, set above
            scale = bn.weight.double() / float(np.sqrt(1.0 + bn.eps))    # c, set above
            bn.running_mean.copy_(mean.float())
            bn.running_var.copy_(var.float())
            bn.weight.copy_((scale * torch.sqrt(var + bn.eps)).float())
            bn.bias.copy_((bias + scale * mean).float())


def verify_against_package(model: Classifier, package, tmp_dir) -> dict:
    """Re-export ``model`` and run it on the package's reference images: max |Δ| of probs and cam."""
    from pathlib import Path

    from distill.export.package import onnx_session, run_onnx
    from distill.export.graph import export_onnx

    path = Path(tmp_dir) / "recovered.onnx"
    images = package.reference["image"]
    export_onnx(model, path, check_images=images)
    got = run_onnx(onnx_session(path), images, outputs=("probs", "cam"))
    path.unlink(missing_ok=True)
    out = {"probs_max_abs_diff": float(np.abs(got["probs"] - package.reference["probs"]).max())}
    if "cam" in package.reference:
        out["cam_max_abs_diff"] = float(np.abs(got["cam"] - package.reference["cam"]).max())
    return out
