"""What a model must do to be the model its manifest describes: the ONNX contract of its graph
(``docs/design/edge-models.md``) and the reference check, a run on the shipped reference images
compared with the shipped outputs under the rule of :mod:`inspector.edge.numerics`.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from inspector.edge import numerics
from inspector.edge.fields import PackageError, field_error
from inspector.edge.manifest import Manifest

INPUT_NAME = "image"


def _dims(value_info: Any) -> list[int | str | None]:
    """Static dims as int, symbolic ones as their name, unknown as None."""
    out: list[int | str | None] = []
    for dim in value_info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            out.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            out.append(dim.dim_param)
        else:
            out.append(None)
    return out


def check_model_contract(model: Any, manifest: Manifest) -> None:
    """Check an ``onnx.ModelProto`` against the ONNX contract and ``manifest``.

    One graph input ``image`` uint8 [N, S, S, 3] with N dynamic and S = ``input.size``;
    ``logits``/``probs`` float32 [N, C], ``cam`` float32 [N, C, h, w] with C = number of
    labels wherever the graph states C statically (the reference run checks it again);
    every name of ``manifest.outputs`` is a graph output.
    """
    from onnx import TensorProto

    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    names = [i.name for i in inputs]
    if names != [INPUT_NAME]:
        raise field_error("model.onnx inputs", f"must be exactly [{INPUT_NAME!r}], got {names}")
    inp = inputs[0]
    if inp.type.tensor_type.elem_type != TensorProto.UINT8:
        got = TensorProto.DataType.Name(inp.type.tensor_type.elem_type)
        raise field_error("model.onnx input 'image'", f"dtype must be uint8 (manifest input.dtype), got {got}")
    dims = _dims(inp)
    size = manifest.input.size
    if len(dims) != 4:
        raise field_error("model.onnx input 'image'", f"must be rank 4 (N×S×S×3, NHWC), got shape {dims}")
    if isinstance(dims[0], int):
        raise field_error("model.onnx input 'image'", f"batch dimension must be dynamic (the engine batches tiles), "
                                                f"got fixed N={dims[0]}")
    if dims[1:] != [size, size, 3]:
        raise field_error("model.onnx input 'image'", f"shape must be [N, {size}, {size}, 3] (manifest input.size="
                                                f"{size}, NHWC RGB), got {dims}")

    outputs = {o.name: o for o in graph.output}
    for name in manifest.outputs:
        if name not in outputs:
            raise field_error("manifest outputs", f"{name!r} is not an output of model.onnx (outputs: {sorted(outputs)})")
    n_labels = len(manifest.labels)
    for name, rank in (("logits", 2), ("probs", 2), ("cam", 4)):
        out = outputs[name]
        if out.type.tensor_type.elem_type != TensorProto.FLOAT:
            got = TensorProto.DataType.Name(out.type.tensor_type.elem_type)
            raise field_error(f"model.onnx output {name!r}", f"dtype must be float32, got {got}")
        odims = _dims(out)
        if odims and len(odims) != rank:
            raise field_error(f"model.onnx output {name!r}", f"must be rank {rank}, got shape {odims}")
        if odims and isinstance(odims[1], int) and odims[1] != n_labels:
            raise field_error(f"model.onnx output {name!r}",
                        f"has {odims[1]} classes but the manifest has {n_labels} labels {list(manifest.labels)} "
                        f"(label list and model disagree)")


def check_reference_arrays(reference: Mapping[str, np.ndarray], manifest: Manifest) -> None:
    size, n_labels = manifest.input.size, len(manifest.labels)
    for key in ("image", "probs"):
        if key not in reference:
            raise field_error(f"reference {key!r}", f"missing (need image, probs; got {sorted(reference)})")
    image = np.asarray(reference["image"])
    if image.dtype != np.uint8 or image.ndim != 4 or image.shape[1:] != (size, size, 3) or image.shape[0] < 1:
        raise field_error("reference 'image'", f"must be uint8 N×{size}×{size}×3 with N >= 1, got {image.dtype} {image.shape}")
    probs = np.asarray(reference["probs"])
    if probs.dtype.kind != "f" or probs.shape != (image.shape[0], n_labels):
        raise field_error("reference 'probs'", f"must be float {image.shape[0]}×{n_labels} (one row per image, one column "
                                         f"per label), got {probs.dtype} {probs.shape}")
    if "cam" in reference:
        cam = np.asarray(reference["cam"])
        if cam.dtype.kind != "f" or cam.ndim != 4 or cam.shape[:2] != (image.shape[0], n_labels):
            raise field_error("reference 'cam'", f"must be float {image.shape[0]}×{n_labels}×h×w, got {cam.dtype} {cam.shape}")


class ReferenceCheckError(PackageError):
    """The model does not reproduce its reference outputs within its rule on this runtime;
    ``verification`` holds the rule and what was measured."""

    def __init__(self, message: str, verification: numerics.Verification):
        super().__init__(message)
        self.verification = verification


def verify_reference_outputs(manifest: Manifest, reference: Mapping[str, np.ndarray], probs: np.ndarray,
                             cam: np.ndarray | None, *, provider: str = numerics.CPU) -> numerics.Verification:
    """Check a run on ``reference["image"]`` against the shipped outputs with the rule for the
    model's precision on ``provider`` (:mod:`inspector.edge.numerics`); return what was measured, or
    raise :class:`ReferenceCheckError` naming every broken bound with its number."""
    n_labels = len(manifest.labels)
    want = np.asarray(reference["probs"], dtype=np.float32)
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != n_labels:
        raise field_error("labels", f"the model's probs has {probs.shape[-1] if probs.ndim else '?'} classes but the "
                              f"manifest has {n_labels} labels {list(manifest.labels)}")
    if probs.shape != want.shape:
        raise field_error("reference", f"model produced probs {probs.shape}, reference holds {want.shape}")
    if cam is not None and "cam" in reference and np.shape(cam) != np.shape(reference["cam"]):
        raise field_error("reference", f"model produced cam {np.shape(cam)}, reference holds {np.shape(reference['cam'])}")
    try:
        return numerics.verify(manifest.quantization.type, reference, probs, cam if "cam" in reference else None,
                               provider=provider, model=f"{manifest.name} {manifest.version}")
    except numerics.NumericsError as exc:
        raise ReferenceCheckError(str(exc), exc.verification) from None
