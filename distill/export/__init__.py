"""From a trained network to what the app runs: the ONNX graph with its in-graph Grad-CAM, INT8
quantization, reference images, model packages (student and teachers), and the way back from a
package to weights.
Imports ``distill.models``, ``distill.data``, ``distill.metrics`` and inspector's edge contract
(``inspector.edge``: the package format is the app's); never training or the update.
"""
