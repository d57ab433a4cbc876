"""The root of every error the distillation engine raises on purpose.

``except DistillError`` catches anything ``distill`` refuses (a bad configuration, an unreadable
dataset, an export that does not match its network, an update that cannot go on) and nothing else.
Each error lives beside the code that raises it and keeps the built-in base it had before the tree
(``ValueError`` for bad input), so a caller that catches that keeps working. The tree:

* :class:`~distill.config.ConfigError`
* :class:`~distill.data.layouts.DatasetError`, :class:`~distill.data.imageio.BadImageError`
* :class:`~distill.models.errors.ModelError` → :class:`~distill.export.recover.RecoveryError`
* :class:`~distill.export.graph.ExportError`, :class:`~distill.export.quantize.QuantizeError`
* :class:`~distill.update.errors.UpdateError` → ``UpdateConfigError``, ``UpdateDataError``,
  ``BaseModelError``, ``UpdateCancelled``
"""

from __future__ import annotations


class DistillError(Exception):
    """Anything the distillation engine refuses, with a message for a person."""
