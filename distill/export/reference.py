"""The reference images a package ships, chosen so that its reference check can tell models apart.

A package's ``reference.npz`` holds real patches and this model's outputs on them; a device
re-runs them to check that its runtime computes the model correctly
(:mod:`inspector.edge.numerics`). Eight confident patches, as before, cannot tell a model from its
sibling: on a patch the model is sure of, every crack model says p ≈ 1. So the set mixes

* confident crack and confident clean patches (the heat-map's shape is checked on both), and
* patches **near the decision boundary** (crack probability between 0.1 and 0.4, or 0.6 and
  0.9): there a different model, another seed, one perturbed layer or another version moves
  the probability by tenths, while a correct numeric path moves it by thousandths
  (``docs/benchmarks/reference_margin.md``). None closer than
  :data:`inspector.edge.numerics.MIN_VERDICT_MARGIN` to 0.5, so no correct path flips a verdict.

Patches are chosen by the FP32 model from a pool of real training patches (redistributable
data only: they ship inside the package), deterministically.
"""
from __future__ import annotations

import platform

import numpy as np

from inspector.edge.numerics import MIN_VERDICT_MARGIN, int8_isa

N_CONFIDENT = 12   # per class
N_NEAR = 24        # near the boundary, split between both sides when the pool allows
NEAR_BAND = 0.4    # |p - 0.5| <= this counts as near (p in [0.1, 0.9])


def select(crack_probs: np.ndarray, *, n_confident: int = N_CONFIDENT, n_near: int = N_NEAR) -> np.ndarray:
    """Indices into the pool: ``n_confident`` most confident per class, then up to ``n_near``
    closest to the boundary (but at least ``MIN_VERDICT_MARGIN`` from it), alternating sides.
    When the pool has fewer near patches the set is simply smaller there."""
    p = np.asarray(crack_probs, np.float64)
    margin = np.abs(p - 0.5)
    order = np.argsort(-margin, kind="stable")
    crack = [int(i) for i in order if p[i] > 0.5][:n_confident]
    clean = [int(i) for i in order if p[i] < 0.5][:n_confident]
    taken = set(crack) | set(clean)
    eligible = [int(i) for i in np.argsort(margin, kind="stable")
                if MIN_VERDICT_MARGIN <= margin[i] <= NEAR_BAND and int(i) not in taken]
    above = [i for i in eligible if p[i] > 0.5]
    below = [i for i in eligible if p[i] < 0.5]
    near: list[int] = []
    while len(near) < n_near and (above or below):
        for side in (above, below):
            if side and len(near) < n_near:
                near.append(side.pop(0))
    return np.array(sorted(crack + clean + near), dtype=np.int64)


def provenance(session=None) -> dict:
    """Where reference outputs are computed: onnxruntime version, provider, the CPU's integer
    ISA, machine, graph optimisation (the package's ``reference.provenance``)."""
    import onnxruntime as ort

    provider = session.get_providers()[0] if session is not None else "CPUExecutionProvider"
    return {"onnxruntime": ort.__version__, "provider": provider, "isa": int8_isa(),
            "machine": platform.machine(), "graph_optimization": "all"}
