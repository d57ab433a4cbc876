"""Two passes over an exported ONNX graph that TensorRT and INT8 quantization need: constant
subgraphs folded (the TorchScript exporter writes fixed paddings as shape arithmetic) and zero Pads
folded into the convolutions that read them (EfficientNet-Lite's TensorFlow "SAME" padding).
Both edit the ``onnx.ModelProto`` in place; :func:`distill.export.graph.export_onnx` runs them."""
from __future__ import annotations

import numpy as np

def fold_constants(proto) -> None:
    """Evaluate every node whose inputs are all constants and store its outputs as initializers.

    The TorchScript exporter writes the padding of ``SamePadConv2d`` (fixed for a fixed input
    size) as a chain of Constant, ConstantOfShape, Concat, Reshape, Slice, Transpose and Cast
    nodes; folded, each Pad reads a constant, which TensorRT wants and which keeps ONNX Runtime
    from rewriting (and warning about) the graph at every session start.
    """
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    g = proto.graph
    known = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    made: set[str] = set()
    kept = []
    for node in g.node:
        constant = node.op_type == "Constant" or (
            len(node.input) > 0 and all(i == "" or i in known for i in node.input)
            and node.op_type not in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                                     "Multinomial", "Bernoulli", "Dropout")
        )
        if not constant:
            kept.append(node)
            continue
        feeds = {i: known[i] for i in node.input if i}
        for name, value in zip(node.output, ReferenceEvaluator(node).run(None, feeds)):
            known[name] = np.asarray(value)
            made.add(name)
    used = {i for n in kept for i in n.input} | {o.name for o in g.output}
    initializers = [t for t in g.initializer if t.name in used]
    initializers += [numpy_helper.from_array(known[name], name) for name in sorted(made & used)]
    del g.node[:]
    g.node.extend(kept)
    del g.initializer[:]
    g.initializer.extend(initializers)


def fuse_pads_into_convs(proto) -> None:
    """Fold a zero Pad of the spatial axes into the Conv that reads it (Conv pads may be asymmetric).

    ``SamePadConv2d`` (EfficientNet-Lite) pads before every strided or large-kernel convolution.
    A separate Pad costs a copy in float and, in the INT8 graph, a dequantize/quantize pair
    around it that keeps ONNX Runtime from fusing the convolution into an integer kernel.
    """
    from onnx import helper, numpy_helper

    g = proto.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    removed = []
    for pad in [n for n in g.node if n.op_type == "Pad"]:
        attrs = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
        mode = attrs.get("mode", b"constant")
        users = consumers.get(pad.output[0], [])
        if mode not in (b"constant", "constant") or pad.output[0] in outputs or len(users) != 1:
            continue
        conv = users[0]
        if conv.op_type != "Conv" or conv.input[0] != pad.output[0] or len(pad.input) < 2 or pad.input[1] not in consts:
            continue
        if len(pad.input) > 2 and pad.input[2] and (pad.input[2] not in consts or np.any(consts[pad.input[2]] != 0)):
            continue  # a non-zero fill value
        if len(pad.input) > 3 and pad.input[3]:
            continue  # explicit axes: keep it simple
        pads = [int(v) for v in consts[pad.input[1]]]
        if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or any(v < 0 for v in pads):
            continue
        conv_attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        if conv_attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        old = list(conv_attrs.get("pads", [0, 0, 0, 0]))
        new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend(kept + [helper.make_attribute("pads", new)])
        conv.input[0] = pad.input[0]
        removed.append(pad)
    for pad in removed:
        g.node.remove(pad)
    used = {i for n in g.node for i in n.input}
    kept_init = [t for t in g.initializer if t.name in used or t.name in outputs]
    del g.initializer[:]
    g.initializer.extend(kept_init)
