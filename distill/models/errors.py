"""The networks' error: below the registry, the weight files and the checkpoints, which all raise it."""
from __future__ import annotations

from distill.errors import DistillError


class ModelError(DistillError, ValueError):
    """An unknown architecture or a checkpoint that does not fit."""
