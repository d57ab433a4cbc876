"""Data layer of the distillation engine.

Reading crack datasets into a flat list of :class:`~distill.data.samples.Sample`
records, checking image files, cutting labelled patches from mask-annotated
frames, leakage-free splits, augmentation, and the PyTorch dataset.

Modules (import them directly; this package imports nothing heavy so that
``import distill.data`` never pulls in torch):

- ``samples``: the ``Sample`` record, label names, content hashes.
- ``imageio``: robust image decoding (``load_rgb``) and the bad-file report.
- ``patches``: the crack / no-crack patch rule for mask-annotated frames.
- ``layouts``: dataset folder layouts (folder per class, SDNET2018, masks).
- ``splits``: source-grouped splits, label subsampling, CSV manifests.
- ``augment``: reproducible, cacheable augmentation parameters.
- ``torch_dataset``: ``PatchDataset`` (the only module that imports torch).
"""
