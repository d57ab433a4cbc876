"""Capture: where frames come from. Video sources (camera, file, stream) and the thread that hands
out only the newest frame, with its rate. Imports numpy, OpenCV and inspector's base modules
(errors, fsio, paths) only: no model, store or Qt.
"""
