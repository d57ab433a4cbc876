"""Training: the loop (seeds, resume, early stopping), the distillation losses, the teacher-output
cache and whole runs from a configuration to an evaluated checkpoint.
Imports ``distill.export`` (a run ends with its packages), ``distill.models``, ``distill.data``,
``distill.metrics`` and ``distill.config``; never ``distill.update`` or the CLI.
"""
