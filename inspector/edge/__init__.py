"""The edge model: the model package contract (manifest, signature, reference outputs), the
reference check per machine (numerics), the inference engine and its engine cache, and what a
package does on this machine (check). Runs on a Jetson: onnxruntime, OpenCV and numpy, nothing
from the store, the device link or Qt.
"""
