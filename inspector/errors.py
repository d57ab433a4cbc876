"""The root of every error the application and the device agent raise on purpose.

``except InspectorError`` catches anything inspector refuses (a bad package, a store it cannot
write, a device that said no) and nothing else: a bug (``TypeError``, ``KeyError``) still escapes.
Each error lives beside the code that raises it and keeps the built-in base it had before the tree
(``ValueError`` for bad input, ``RuntimeError`` for a state it cannot act in, ``OSError`` for the
network), so a caller that catches those keeps working. The tree, one name per class:

* :class:`~inspector.capture.sources.SourceError`
* :class:`~inspector.edge.fields.PackageError` → :class:`~inspector.edge.contract.ReferenceCheckError`;
  :class:`~inspector.edge.numerics.NumericsError`
* :class:`~inspector.live.loop.LiveError`
* :class:`~inspector.store.schema.StoreError`, :class:`~inspector.store.heat_png.HeatPngError`
* :class:`~inspector.report.content.ReportError`
* :class:`~inspector.link.protocol.ProtocolError`, :class:`~inspector.link.protocol.ApiError`,
  :class:`~inspector.link.signing.SigningError`, :class:`~inspector.link.connection.DeviceError` →
  :class:`~inspector.link.connection.FingerprintMismatch`, :class:`~inspector.link.demo.DemoError`
* :class:`~inspector.update.plan.ModelUpdateError` → :class:`~inspector.update.deploy.NotLiveError`;
  :class:`~inspector.update.protocol.UpdateProtocolError`, :class:`~inspector.update.history.HistoryError`,
  :class:`~inspector.update.history.OverrideError`
* the agent's: ``AgentConfigError``, ``StartError``, ``DiscoveryError``, ``IdentityError``,
  ``RepositoryError``, ``TooManyAttempts``
* the Qt layer's: ``StartupError``, ``JobCancelled``
"""

from __future__ import annotations


class InspectorError(Exception):
    """Anything the inspector application or the device agent refuses, with a message for a person."""
