"""``distill update``: the engine of the field loop (docs/design/update.md).

A day's reviewed flags become a candidate student: the shipped teachers learn the new site
from the inspector's labels, the student is distilled from the adapted ensemble on every frame
of the site plus a replay of the base data, the decision threshold is recalibrated if that
helps, FP32 and INT8 packages are exported with the parent's tiling, and a gate on the frozen
golden set and the site's held-out frames decides whether the candidate may be pushed.

Import-light: the entry points are :func:`distill.update.pipeline.run_update` (with an
:class:`distill.update.config.UpdateConfig`) and ``distill update`` (``distill/cli.py``);
importing this package loads no torch.

Imports every room below it (training, export, models, data) and inspector's plain-Python update
and edge modules (the plan's site split, the model history, the package format); never Qt.
"""
