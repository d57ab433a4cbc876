"""The edge model: the model package contract (the manifest and the checks of its fields, the
ONNX contract and the reference check, the ``.crackpkg`` file with its signed payload), the
reference check per machine (numerics), the inference engine and its engine cache, and what a
package does on this machine (check). Runs on a Jetson: onnxruntime, OpenCV and numpy, nothing
from the store, the device link or Qt.
"""
