"""The networks: teachers and students by name (``registry``), EfficientNet-Lite, the teacher
ensemble and checkpoints that carry their metadata. Imports ``distill.data`` only.
"""
