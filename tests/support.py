"""Helpers shared by several test files (imported as ``from support import ...``)."""
import pytest
import torch
from torch import nn


def calibrated(model, size: int, batch: int = 8):
    """``model`` in eval mode with batch-norm statistics measured on one random batch.

    A fresh network's default statistics (mean 0, variance 1) shrink the activations of
    MobileNet/EfficientNet to ~1e-9 at the head, so every input would give the same logits and
    output comparisons would prove nothing; measured statistics keep them input-dependent.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(torch.rand(batch, 3, size, size))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine more threads only contend (10x slower).
    Autouse in every test module that imports it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
