"""Batch norms that keep their running statistics while the weights around them train.

Fine-tuning on a few hundred site images would drag the statistics measured on the base data
towards one small batch; keeping them (eval mode) while the weights learn is the usual remedy.
"""
from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def freeze_batch_norms(model: nn.Module, keep_training: Iterable[nn.Module] = ()) -> None:
    """Every batch norm of ``model`` outside the modules ``keep_training`` stays in eval mode.

    ``model.train()`` is wrapped, not called once: ``fit()`` calls it every epoch, and the
    frozen statistics must not move then either.
    """
    inside = {id(m) for k in keep_training for m in k.modules()}
    frozen = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inside]
    plain_train = model.train

    def train(mode: bool = True):
        plain_train(mode)
        for m in frozen:
            m.eval()
        return model

    model.train = train
