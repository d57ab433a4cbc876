"""Training: the loop (seeds, resume, early stopping), the distillation losses, the teacher-output
cache and whole runs from a configuration to an evaluated checkpoint.
"""
