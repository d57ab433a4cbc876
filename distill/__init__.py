"""The distillation engine: teachers, students, losses, training and evaluation.

Kept import-light on purpose: ``import distill`` loads nothing heavy; torch is imported by the
modules that need it (models, train, ...), and only this package imports torch at all.
"""
