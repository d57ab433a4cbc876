"""The desktop window and the ``inspector`` command: the only package that imports PySide6.

Everything here paints and forwards user input; the work (capture, inference, flagging,
storage) happens in :mod:`inspector.live.loop` and below, on their own threads.
"""
