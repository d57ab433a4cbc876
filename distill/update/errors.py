"""The exceptions of ``distill update``: one root, one subclass per way a run can end early.

The command maps them to the final event and exit status (``inspector/update/protocol.py``):
:class:`UpdateCancelled` → ``cancelled`` (3), every other :class:`UpdateError` → ``error`` (1).
Messages name the option, file or field at fault.
"""
from __future__ import annotations
from distill.errors import DistillError


class UpdateError(DistillError):
    """A model update that cannot go on; ``stage`` is where it stopped (or None)."""

    def __init__(self, message: str, stage: str | None = None):
        super().__init__(message)
        self.stage = stage


class UpdateConfigError(UpdateError):
    """An option that does not fit (the message names it)."""


class UpdateDataError(UpdateError):
    """The site data, the golden set or the replay set cannot be used as given."""


class BaseModelError(UpdateError):
    """The base package, its FP32 parent or its PyTorch weights are missing or do not match."""


class UpdateCancelled(UpdateError):
    """SIGTERM/SIGINT (or a caller's cancel) stopped the run between two batches."""
