"""The device agent (runs on the Jetson): camera → inference → stream, model versions, pairing.

numpy, OpenCV, onnxruntime, cryptography, zeroconf and the standard library only. Modules:
``identity`` (agent id, TLS certificate, pairing, paired clients), ``runtime`` (inference
thread, hot model swap with auto-rollback, per-client newest-frame slots), ``repository``
(verified, signed model versions stored on the device: upload, activate, rollback), ``server``
(the HTTP(S) API of :mod:`inspector.link.protocol`), ``discovery`` (mDNS), ``main`` (the command line).
Nothing is imported here, so ``import inspector.agent.discovery`` stays light for the app.
"""
