"""The desktop window and the ``inspector`` command: the only package that imports PySide6.

Everything here paints and forwards user input; the work (capture, inference, flagging,
storage) happens in the rooms below (:mod:`inspector.live.loop` and the rest), on their own
threads. The same rooms here: ``live``, ``review``, ``device`` and ``update`` views, under the
window (``window``) and the command (``main``, ``selftest``); beneath them what all rooms share:
``startup`` (what the command resolves before a window opens), ``jobs`` (the one runner of
background work), ``bridge`` (frames and heat-maps to images), ``theme``, ``banner``, ``flow``.
"""
