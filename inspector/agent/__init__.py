"""The device agent (runs on the Jetson): camera → inference → stream, model versions, pairing.

numpy, OpenCV, onnxruntime, cryptography, zeroconf and the standard library only. Modules:
``identity`` (agent id, TLS certificate, pairing, paired clients) and ``throttle`` (pairing
attempts); ``runtime`` (the inference thread), ``service`` (the model in service: hot swap,
probation, auto-rollback) and ``stream`` (result checks, encoding, per-client newest-frame
slots); ``repository`` (verified, signed model versions stored on the device: upload, activate,
rollback) over ``repository_state`` (its folders, ``state.json`` and the repairs at opening);
``server`` (the HTTP(S) API of :mod:`inspector.link.protocol`) with ``handler`` (one request:
checks, auth, bodies, endpoints) and ``connections`` (slots, deadlines, 503); ``discovery``
(mDNS); ``main`` (the command line).
Nothing is imported here, so ``import inspector.agent.discovery`` stays light for the app.
"""
