"""The inspection application and the device agent. Never imports torch.

One sub-package per room of the loop, each importing only the rooms below it (import-linter
contracts in ``pyproject.toml``): ``capture`` (frames) and ``edge`` (the model package and its
engine) and ``store`` (the flag store) at the bottom; ``live`` (inference → flags); ``review`` and
``report``; ``link`` (the device protocol and client); ``update`` (a model update seen from the
app); ``qt`` on top, the only package that imports PySide6. ``agent`` is the device side: capture,
edge and the link's protocol, nothing else. ``errors`` (:class:`~inspector.errors.InspectorError`,
the root of every error raised on purpose), ``fsio`` (durable writes) and ``paths`` (shipped files)
serve them all. Nothing is imported here: ``import inspector.agent`` loads no widget and no store.
"""
