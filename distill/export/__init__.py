"""From a trained network to what the app runs: the ONNX graph with its in-graph Grad-CAM, INT8
quantization, reference images, model packages (student and teachers), and the way back from a
package to weights.
"""
