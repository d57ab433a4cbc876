"""Distillation losses behind one calling convention.

Every loss here is an :class:`torch.nn.Module` whose ``forward`` takes a single
:class:`StepOutputs` and returns a ``dict[str, Tensor]`` of scalar tensors.  The
key ``"loss"`` is the weighted total the optimizer minimises; the other keys are
its parts (``"ce"``, ``"kd"``, ``"hint"``, ``"rkd_distance"``, ``"rkd_angle"``)
so the training loop can log each one without knowing which loss it runs.  This
mirrors torchdistill's ``KDLoss`` and timm's distillation task: the trainer packs
whatever the student and teacher produced into one object, and the loss picks
what it needs, so swapping "KD" for "KD + FitNet" is a config change, not a code
change.

Part values are reported *unweighted* (e.g. ``"hint"`` is the raw MSE) while
``"loss"`` carries the weights, so logged parts stay comparable across runs that
use different weights.

Losses that own parameters (the FitNet adapter) are ordinary sub-modules: the
trainer must add ``loss_module.parameters()`` to the optimizer and move the loss
module to the student's device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LOSS_NAMES",
    "StepOutputs",
    "CrossEntropyLoss",
    "HintonKDLoss",
    "FitNetHintLoss",
    "RKDLoss",
    "CompositeLoss",
    "build_loss",
    "needs_teacher",
    "needs_features",
    "needs_embeddings",
]

#: Names accepted by :func:`build_loss`, in order of increasing cost.
LOSS_NAMES: tuple[str, ...] = ("ce", "kd", "kd+fitnet", "kd+rkd", "kd+fitnet+rkd")


@dataclass
class StepOutputs:
    """Everything one training step produced that any loss might need.

    Only ``student_logits`` and ``labels`` are always required; each loss checks
    for the optional fields it uses and raises :class:`ValueError` naming the
    missing one, so a mis-wired trainer fails on the first step instead of
    silently training without the teacher.
    """

    student_logits: Tensor  # N×C
    labels: Tensor  # N (int64)
    teacher_logits: Tensor | None = None  # N×C, the ensemble's, already averaged
    student_features: Tensor | None = None  # N×Cs×H×W hint-layer map (FitNet) or N×D
    teacher_features: Tensor | None = None  # N×Ct×H'×W' teacher hint map or N×D
    student_embedding: Tensor | None = None  # N×Ds pooled penultimate features (RKD)
    teacher_embedding: Tensor | None = None  # N×Dt (RKD)


# --------------------------------------------------------------------------- helpers


def _check_logits_and_labels(out: StepOutputs) -> None:
    logits, labels = out.student_logits, out.labels
    if logits.dim() != 2:
        raise ValueError(f"student_logits must be N×C, got shape {tuple(logits.shape)}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must be a length-N vector matching student_logits N={logits.shape[0]}, "
            f"got shape {tuple(labels.shape)}"
        )


def _check_weight(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _require(out: StepOutputs, field: str, loss_name: str) -> Tensor:
    value = getattr(out, field)
    if value is None:
        raise ValueError(f"{loss_name} needs StepOutputs.{field}, but it is None")
    return value


# --------------------------------------------------------------------------- losses


class CrossEntropyLoss(nn.Module):
    """Hard-label cross-entropy: the no-teacher baseline every KD run is compared to.

    ``CE(s, y) = -(1/N) Σ_i Σ_c q_ic · log softmax(s_i)_c`` with
    ``q_i = (1 − ε)·onehot(y_i) + ε/C`` (label smoothing ε, Szegedy et al. 2016).

    Returns ``{"loss", "ce"}`` (equal).
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        label_smoothing = float(label_smoothing)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = label_smoothing

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        _check_logits_and_labels(out)
        ce = F.cross_entropy(out.student_logits, out.labels, label_smoothing=self.label_smoothing)
        return {"loss": ce, "ce": ce}

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"


class HintonKDLoss(nn.Module):
    """Soft-target distillation of Hinton, Vinyals & Dean (2015),
    "Distilling the Knowledge in a Neural Network", arXiv:1503.02531.

    With student logits ``s``, teacher logits ``t``, labels ``y``, temperature
    ``T`` and mixing weight ``α``::

        kd   = T² · (1/N) Σ_i KL( softmax(t_i/T) ‖ softmax(s_i/T) )     ("batchmean")
        ce   = CE(s, y)
        loss = α · kd + (1 − α) · ce

    The ``T²`` factor keeps the soft-target gradients on the same scale as the
    hard-label ones when ``T`` changes (the paper's §2), so ``α`` keeps its
    meaning across temperatures.  The KL is computed from two ``log_softmax``
    calls (``log_target=True``) rather than ``softmax`` then ``log``, which would
    underflow to ``log 0`` for confident teachers at low ``T``.

    The teacher logits are detached: the teacher is frozen and must never receive
    gradients, even if the caller forgot ``torch.no_grad()``.

    Returns ``{"loss", "kd", "ce"}``; ``"kd"`` already includes ``T²`` but not ``α``.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9) -> None:
        super().__init__()
        temperature = float(temperature)
        alpha = float(alpha)
        if not (math.isfinite(temperature) and temperature > 0.0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        self.temperature = temperature
        self.alpha = alpha

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        _check_logits_and_labels(out)
        teacher = _require(out, "teacher_logits", type(self).__name__)
        student = out.student_logits
        if teacher.shape != student.shape:
            raise ValueError(
                f"teacher_logits shape {tuple(teacher.shape)} != student_logits shape "
                f"{tuple(student.shape)}; student and teacher must share the label space"
            )
        t = self.temperature
        log_p_student = F.log_softmax(student / t, dim=1)
        log_p_teacher = F.log_softmax(teacher.detach().to(student.dtype) / t, dim=1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        kd = kl * (t * t)
        ce = F.cross_entropy(student, out.labels)
        loss = self.alpha * kd + (1.0 - self.alpha) * ce
        return {"loss": loss, "kd": kd, "ce": ce}

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"


class FitNetHintLoss(nn.Module):
    """Hint-based training of Romero et al. (2015), "FitNets: Hints for Thin Deep
    Nets", ICLR, arXiv:1412.6550.

    The student's hint-layer map ``u`` (N×Cs×H×W) rarely has the teacher's width,
    so a learned regressor ``r`` — here a 1×1 convolution Cs → Ct, the paper's
    convolutional regressor — maps it into the teacher's space::

        hint = mean( (P(r(u)) − v)² )        loss = weight · hint

    where ``v`` is the teacher's hint map (N×Ct×H'×W') and ``P`` is adaptive
    average pooling to H'×W', applied only when the spatial sizes differ
    (e.g. the student's hint layer sits at a finer stride).  Pooling averages
    each H'×W' cell's region, which is the natural down-sampling of a feature
    map; if the student map is *smaller* than the teacher's, adaptive pooling
    repeats pixels (nearest-neighbour up-sampling).  The paper's ``½‖·‖²`` sum is
    replaced by a per-element mean so ``weight`` does not depend on map size.

    N×D inputs (pooled embeddings instead of maps) are accepted too: they are
    treated as N×D×1×1 maps, so the 1×1 convolution is a linear layer D_s → D_t.

    The adapter's parameters are what make the hint learnable; they live in this
    module, so the trainer must optimise ``loss.parameters()`` alongside the
    student's.  Teacher features are detached.

    Returns ``{"loss", "hint"}``; ``"hint"`` is the unweighted MSE.
    """

    def __init__(self, student_channels: int, teacher_channels: int, weight: float = 1.0) -> None:
        super().__init__()
        for name, value in (("student_channels", student_channels), ("teacher_channels", teacher_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.weight = _check_weight("weight", weight)
        self.adapter = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=True)

    @staticmethod
    def _as_map(x: Tensor, which: str) -> Tensor:
        if x.dim() == 2:
            return x[:, :, None, None]
        if x.dim() == 4:
            return x
        raise ValueError(f"{which} must be N×C×H×W or N×D, got shape {tuple(x.shape)}")

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        name = type(self).__name__
        student_raw = _require(out, "student_features", name)
        teacher_raw = _require(out, "teacher_features", name)
        if student_raw.dim() != teacher_raw.dim():
            raise ValueError(
                f"student_features {tuple(student_raw.shape)} and teacher_features "
                f"{tuple(teacher_raw.shape)} must both be maps (4-D) or both embeddings (2-D)"
            )
        student = self._as_map(student_raw, "student_features")
        teacher = self._as_map(teacher_raw, "teacher_features").detach()
        if student.shape[0] != teacher.shape[0]:
            raise ValueError(
                f"batch sizes differ: student_features N={student.shape[0]}, "
                f"teacher_features N={teacher.shape[0]}"
            )
        if student.shape[1] != self.student_channels:
            raise ValueError(
                f"student_features has {student.shape[1]} channels, adapter expects "
                f"student_channels={self.student_channels}"
            )
        if teacher.shape[1] != self.teacher_channels:
            raise ValueError(
                f"teacher_features has {teacher.shape[1]} channels, adapter expects "
                f"teacher_channels={self.teacher_channels}"
            )
        regressed = self.adapter(student)
        if regressed.shape[-2:] != teacher.shape[-2:]:
            regressed = F.adaptive_avg_pool2d(regressed, teacher.shape[-2:])
        hint = F.mse_loss(regressed, teacher.to(regressed.dtype))
        return {"loss": self.weight * hint, "hint": hint}

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


def _pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix with an exact zero diagonal and finite gradients.

    Computed from explicit differences rather than the ``‖a‖²+‖b‖²−2a·b`` Gram
    trick, which cancels catastrophically for nearby points; the clamp before
    ``sqrt`` keeps the gradient finite for duplicate embeddings.
    """
    squared = (e[:, None, :] - e[None, :, :]).pow(2).sum(dim=-1)
    distances = squared.clamp_min(eps).sqrt()
    off_diagonal = ~torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return torch.where(off_diagonal, distances, torch.zeros_like(distances))


def _distance_potential(e: Tensor, eps: float = 1e-12) -> Tensor:
    """ψ_D: off-diagonal pairwise distances divided by their mean (N(N−1) values)."""
    n = e.shape[0]
    d = _pairwise_distances(e, eps)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=e.device)
    values = d[off_diagonal]
    return values / values.mean().clamp_min(eps)


def _angle_potential(e: Tensor) -> Tensor:
    """ψ_A: cos∠(e_i − e_j, e_k − e_j) for all ordered triplets with i, j, k distinct.

    Triplets with a repeated index have no angle (a zero-length side, or the
    trivial cos = 1 for i = k) and would only dilute the mean, so they are
    excluded; N(N−1)(N−2) values remain.
    """
    n = e.shape[0]
    # diff[j, i] = e_i − e_j : vectors from the apex j to every other point.
    unit = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=-1)
    cos = torch.bmm(unit, unit.transpose(1, 2))  # cos[j, i, k]
    idx = torch.arange(n, device=e.device)
    j, i, k = torch.meshgrid(idx, idx, idx, indexing="ij")
    distinct = (i != j) & (k != j) & (i != k)
    return cos[distinct]


class RKDLoss(nn.Module):
    """Relational knowledge distillation of Park, Kim, Lu & Cho (2019),
    "Relational Knowledge Distillation", CVPR, arXiv:1904.05068.

    Instead of matching outputs, the student matches the *geometry* of the
    teacher's embedding space over the batch, which works when the student's
    and teacher's embedding widths differ (no adapter needed)::

        ψ_D(e_i, e_j)      = ‖e_i − e_j‖₂ / μ,   μ = mean of ‖e_a − e_b‖₂ over pairs a ≠ b
        ψ_A(e_i, e_j, e_k) = ⟨ (e_i − e_j)/‖e_i − e_j‖ , (e_k − e_j)/‖e_k − e_j‖ ⟩
        rkd_distance = mean over pairs i ≠ j      of  l_δ(ψ_D(t_i, t_j),      ψ_D(s_i, s_j))
        rkd_angle    = mean over distinct (i,j,k) of  l_δ(ψ_A(t_i, t_j, t_k), ψ_A(s_i, s_j, s_k))
        loss         = distance_weight · rkd_distance + angle_weight · rkd_angle

    with ``l_δ`` the Huber (smooth-L1, δ = 1) loss.  The mean normalisation makes
    ψ_D invariant to the scale of each embedding space; ψ_A is invariant to scale
    and translation by construction.  The default weights 25 / 50 are the paper's.

    Deviation from the reference code: it averages over all N² pairs and N³
    triplets including degenerate ones (which always contribute 0); averaging
    over the genuine pairs/triplets only removes a batch-size-dependent factor
    (e.g. (N−1)/N for distances) and makes small-batch values well defined.

    Uses ``student_embedding`` / ``teacher_embedding`` (flattened past dim 1 if
    they have more dims).  Teacher embeddings are detached.  A batch too small
    to have a pair (N < 2) or a triangle (N < 3) gives a zero for that part
    that is still attached to the graph, so the last, short batch of an epoch
    does not crash the trainer.

    Returns ``{"loss", "rkd_distance", "rkd_angle"}``; parts are unweighted.
    """

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        self.distance_weight = _check_weight("distance_weight", distance_weight)
        self.angle_weight = _check_weight("angle_weight", angle_weight)

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        name = type(self).__name__
        student = _require(out, "student_embedding", name)
        teacher = _require(out, "teacher_embedding", name).detach()
        if student.dim() < 2 or teacher.dim() < 2:
            raise ValueError(
                f"embeddings must be at least 2-D (N×D), got student {tuple(student.shape)}, "
                f"teacher {tuple(teacher.shape)}"
            )
        student = student.flatten(1)
        teacher = teacher.flatten(1).to(student.dtype)
        if student.shape[0] != teacher.shape[0]:
            raise ValueError(
                f"batch sizes differ: student_embedding N={student.shape[0]}, "
                f"teacher_embedding N={teacher.shape[0]}"
            )
        n = student.shape[0]
        # A zero that is still attached to the graph (``+ 0.0`` turns −0.0 into 0.0).
        zero = student.sum() * 0.0 + 0.0
        if n >= 2:
            distance = F.smooth_l1_loss(_distance_potential(student), _distance_potential(teacher))
        else:
            distance = zero
        if n >= 3:
            angle = F.smooth_l1_loss(_angle_potential(student), _angle_potential(teacher))
        else:
            angle = zero
        loss = self.distance_weight * distance + self.angle_weight * angle
        return {"loss": loss, "rkd_distance": distance, "rkd_angle": angle}

    def extra_repr(self) -> str:
        return f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}"


class CompositeLoss(nn.Module):
    """Weighted sum of several losses, e.g. "KD + FitNet" or "KD + RKD".

    ``terms`` maps a term name to ``(loss_module, weight)``::

        loss = Σ_name weight_name · term_name(out)["loss"]

    Each term's parts are merged into the result under their own names; a part
    name produced by more than one term (say two ``"ce"``) is reported as
    ``"<term>/<part>"`` for every term that produces it, so no value is silently
    overwritten.  Each term's unweighted total is also reported as
    ``"<term>/loss"``.  The terms are registered as sub-modules so their
    parameters (e.g. the FitNet adapter) reach the optimizer via ``parameters()``.
    """

    def __init__(self, terms: Mapping[str, tuple[nn.Module, float]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("CompositeLoss needs at least one term")
        self.terms = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        for name, term in terms.items():
            if not isinstance(term, tuple) or len(term) != 2:
                raise TypeError(f"term {name!r} must be a (module, weight) tuple, got {term!r}")
            module, weight = term
            if not isinstance(module, nn.Module):
                raise TypeError(f"term {name!r}: expected an nn.Module, got {type(module).__name__}")
            if "/" in name or "." in name:
                raise ValueError(f"term name {name!r} must not contain '/' or '.'")
            self.terms[name] = module
            self.weights[name] = _check_weight(f"weight of term {name!r}", weight)

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        results = {name: module(out) for name, module in self.terms.items()}
        producers: dict[str, int] = {}
        for parts in results.values():
            for part in parts:
                if part != "loss":
                    producers[part] = producers.get(part, 0) + 1

        total: Tensor | None = None
        merged: dict[str, Tensor] = {}
        for name, parts in results.items():
            if "loss" not in parts:
                raise KeyError(f"term {name!r} returned no 'loss' entry (got {sorted(parts)})")
            weighted = self.weights[name] * parts["loss"]
            total = weighted if total is None else total + weighted
            merged[f"{name}/loss"] = parts["loss"]
            for part, value in parts.items():
                if part == "loss":
                    continue
                key = part if producers[part] == 1 else f"{name}/{part}"
                merged[key] = value
        assert total is not None  # guaranteed by the non-empty check in __init__
        return {"loss": total, **merged}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}: weight={w}" for name, w in self.weights.items())


# --------------------------------------------------------------------------- factory


def _check_name(name: str) -> str:
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSS_NAMES)}")
    return name


def needs_teacher(name: str) -> bool:
    """Whether the loss needs ``teacher_logits`` (every loss but plain ``"ce"``)."""
    return _check_name(name) != "ce"


def needs_features(name: str) -> bool:
    """Whether the loss needs student/teacher hint-layer feature maps (FitNet)."""
    return "fitnet" in _check_name(name).split("+")


def needs_embeddings(name: str) -> bool:
    """Whether the loss needs student/teacher pooled embeddings (RKD)."""
    return "rkd" in _check_name(name).split("+")


def build_loss(
    name: str,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    hint_weight: float = 1.0,
    rkd_distance_weight: float = 25.0,
    rkd_angle_weight: float = 50.0,
    student_channels: int | None = None,
    teacher_channels: int | None = None,
) -> nn.Module:
    """Build the loss module for a config name from :data:`LOSS_NAMES`.

    ``"ce"`` and ``"kd"`` return the bare module; combined names return a
    :class:`CompositeLoss` with terms ``"kd"``, ``"fitnet"``, ``"rkd"`` (each of
    weight 1, the per-term weights living inside the term modules), so its
    output has the parts ``"kd"``, ``"ce"``, ``"hint"``, ``"rkd_distance"``,
    ``"rkd_angle"`` plus ``"<term>/loss"``.  FitNet names need
    ``student_channels`` and ``teacher_channels`` to size the adapter.
    """
    _check_name(name)
    if name == "ce":
        return CrossEntropyLoss()
    kd = HintonKDLoss(temperature=temperature, alpha=alpha)
    if name == "kd":
        return kd
    terms: dict[str, tuple[nn.Module, float]] = {"kd": (kd, 1.0)}
    if needs_features(name):
        if student_channels is None or teacher_channels is None:
            raise ValueError(
                f"loss {name!r} needs student_channels and teacher_channels for the FitNet adapter"
            )
        terms["fitnet"] = (FitNetHintLoss(student_channels, teacher_channels, weight=hint_weight), 1.0)
    if needs_embeddings(name):
        terms["rkd"] = (
            RKDLoss(distance_weight=rkd_distance_weight, angle_weight=rkd_angle_weight),
            1.0,
        )
    return CompositeLoss(terms)
