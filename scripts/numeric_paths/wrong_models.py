"""Wrong models that a reference check must refuse, made from a right one by graph surgery.

Each takes the ONNX bytes of a package's model and returns the bytes of a model that honours the
same contract (input ``image``, outputs ``logits``/``probs``/``cam``) but computes something else:

* :func:`perturb_layer`: one convolution's weights disturbed by ``rel`` of their spread
  (FP32: ``w += rel · std(w) · N(0, 1)``; INT8: the int8 weights moved by the same amount in
  quantization steps, clipped) -- the smallest kind of wrong: a bit flip, a bad merge, a
  half-finished fine-tune;
* :func:`swap_labels`: the class order reversed on every output (a head trained with the
  labels the other way round);
* :func:`corrupt_initializer`: ``n`` bytes of one weight initializer overwritten (storage or
  transfer damage, with the hash recomputed by whoever repackaged it). The hash refuses any
  such change; the reference check sees it only where it moves the outputs: 64 bytes of the
  largest layer's 2.4 MB move p by 5e-4, below every rule (``docs/benchmarks/reference_margin.md``).

Used by ``tests/test_numerics.py`` and ``benchmarks/reference_margin.py``.
"""
from __future__ import annotations

import numpy as np


def _load(onnx_bytes: bytes):
    import onnx

    return onnx.load_from_string(onnx_bytes)


def conv_weights(model) -> list[str]:
    """Names of the weight initializers of every Conv, in graph order (through a
    DequantizeLinear in QDQ graphs)."""
    inits = {t.name for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        w = node.input[1]
        if w in inits:
            names.append(w)
        elif w in producers and producers[w].op_type == "DequantizeLinear" and producers[w].input[0] in inits:
            names.append(producers[w].input[0])
    return names


def perturb_layer(onnx_bytes: bytes, rel: float, layer: int = -2, seed: int = 0) -> bytes:
    """One Conv's weights disturbed by ``rel`` of their standard deviation (see the module doc);
    ``layer`` indexes :func:`conv_weights` (default: the second-to-last convolution)."""
    from onnx import numpy_helper

    model = _load(onnx_bytes)
    name = conv_weights(model)[layer]
    init = next(t for t in model.graph.initializer if t.name == name)
    w = numpy_helper.to_array(init)
    rng = np.random.default_rng(seed)
    noise = rel * float(np.std(w.astype(np.float64))) * rng.standard_normal(w.shape)
    if w.dtype.kind == "f":
        new = (w + noise).astype(w.dtype)
    else:
        info = np.iinfo(w.dtype)
        new = np.clip(np.round(w.astype(np.float64) + noise), info.min, info.max).astype(w.dtype)
    init.CopyFrom(numpy_helper.from_array(new, name))
    return model.SerializeToString()


def swap_labels(onnx_bytes: bytes) -> bytes:
    """The same network with its class order reversed on ``logits``, ``probs`` and ``cam``."""
    from onnx import helper, numpy_helper

    model = _load(onnx_bytes)
    graph = model.graph
    order = "_swap_order"
    graph.initializer.append(numpy_helper.from_array(np.array([1, 0], np.int64), order))
    for out in graph.output:
        if out.name not in ("logits", "probs", "cam"):
            continue
        raw = f"{out.name}__unswapped"
        for node in graph.node:
            node.output[:] = [raw if o == out.name else o for o in node.output]
            node.input[:] = [raw if i == out.name else i for i in node.input]
        graph.node.append(helper.make_node("Gather", [raw, order], [out.name], axis=1))
    return model.SerializeToString()


def corrupt_initializer(onnx_bytes: bytes, n: int = 64, seed: int = 0, layer: int | None = None) -> bytes:
    """``n`` random bytes of one initializer overwritten with random values: the weights of the
    ``layer``-th convolution (:func:`conv_weights`), or by default the largest initializer."""
    model = _load(onnx_bytes)
    if layer is None:
        init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    else:
        name = conv_weights(model)[layer]
        init = next(t for t in model.graph.initializer if t.name == name)
    raw = bytearray(init.raw_data)
    rng = np.random.default_rng(seed)
    for pos in rng.choice(len(raw), size=min(n, len(raw)), replace=False):
        raw[int(pos)] = int(rng.integers(0, 256))
    init.raw_data = bytes(raw)
    return model.SerializeToString()
