"""The distillation engine: teachers, students, losses, training, export and the field update.

Rooms, each importing only those below it (import-linter contracts in ``pyproject.toml``):
``data`` (datasets, patches, splits, augmentation) → ``models`` (networks by name, the teacher
ensemble, checkpoints) → ``export`` (ONNX with in-graph Grad-CAM, INT8, model packages) →
``training`` (the loop, the losses, whole runs) → ``update`` (``distill update``, the field loop)
→ ``demo`` → ``cli``. ``metrics`` and ``config`` serve them; ``errors`` holds
:class:`~distill.errors.DistillError`, the root of every error raised on purpose.

Kept import-light on purpose: ``import distill`` loads nothing heavy; torch is imported by the
modules that need it, and only this package imports torch at all.
"""
