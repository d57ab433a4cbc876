"""Tests for distill.training.losses.

Expected values come from hand arithmetic with :mod:`math` in this file, or from
``tests/fixtures/losses_expected.json`` (plain numpy, see its ``_comment`` and
``_generator``) — never from the torch functions the implementation uses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from distill.training.losses import (
    LOSS_NAMES,
    CompositeLoss,
    CrossEntropyLoss,
    FitNetHintLoss,
    HintonKDLoss,
    RKDLoss,
    StepOutputs,
    build_loss,
    needs_embeddings,
    needs_features,
    needs_teacher,
)

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "losses_expected.json").read_text())
DT = torch.float64


def t(values, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=DT, requires_grad=requires_grad)


def labels(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


# ---------------------------------------------------------------- pure-python references


def softmax(row: list[float]) -> list[float]:
    m = max(row)
    exps = [math.exp(v - m) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    """KL(p ‖ q) = Σ p log(p / q)."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


# ---------------------------------------------------------------------- cross-entropy


def test_ce_matches_hand_value():
    # Row 0: logits (1, 2), label 1 -> -log(e² / (e + e²)) = log(1 + e⁻¹)
    # Row 1: logits (3, 0), label 0 -> log(1 + e⁻³)
    out = StepOutputs(student_logits=t([[1.0, 2.0], [3.0, 0.0]]), labels=labels([1, 0]))
    res = CrossEntropyLoss()(out)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-3))) / 2
    assert expected == pytest.approx(0.18092451954598243, abs=1e-15)
    assert set(res) == {"loss", "ce"}
    assert res["ce"].item() == pytest.approx(expected, abs=1e-12)
    assert res["loss"].item() == pytest.approx(expected, abs=1e-12)


def test_ce_label_smoothing_matches_hand_value():
    eps = 0.2
    logits = [[1.0, 2.0], [3.0, 0.0]]
    ys = [1, 0]
    expected = 0.0
    for row, y in zip(logits, ys):
        p = softmax(row)
        q = [eps / 2 + (1 - eps) * (c == y) for c in range(2)]  # smoothed target
        expected -= sum(qc * math.log(pc) for qc, pc in zip(q, p))
    expected /= 2
    res = CrossEntropyLoss(label_smoothing=eps)(StepOutputs(t(logits), labels(ys)))
    assert res["loss"].item() == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------- Hinton KD


def test_kd_matches_hand_value_at_t1():
    # Teacher (ln 3, 0) -> p_t = (3/4, 1/4); student (0, 0) -> p_s = (1/2, 1/2).
    # KL = 3/4·ln(3/2) + 1/4·ln(1/2)
    kl_expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl_expected == pytest.approx(0.1308121, abs=1e-7)
    out = StepOutputs(t([[0.0, 0.0]]), labels([0]), teacher_logits=t([[math.log(3.0), 0.0]]))
    res = HintonKDLoss(temperature=1.0, alpha=0.5)(out)
    ce_expected = math.log(2.0)
    assert set(res) == {"loss", "kd", "ce"}
    assert res["kd"].item() == pytest.approx(kl_expected, abs=1e-12)
    assert res["ce"].item() == pytest.approx(ce_expected, abs=1e-12)
    assert res["loss"].item() == pytest.approx(0.5 * kl_expected + 0.5 * ce_expected, abs=1e-12)


def test_kd_temperature_gives_t_squared_scaling():
    student = [[0.0, 0.0]]
    teacher = [[math.log(3.0), 0.0]]
    out = StepOutputs(t(student), labels([0]), teacher_logits=t(teacher))
    kd1 = HintonKDLoss(temperature=1.0, alpha=1.0)(out)["kd"].item()
    kd2 = HintonKDLoss(temperature=2.0, alpha=1.0)(out)["kd"].item()
    # At T = 2 the teacher is (ln√3, 0) -> p_t = (√3/(1+√3), 1/(1+√3)); student stays uniform.
    r3 = math.sqrt(3.0)
    p_t2 = [r3 / (1 + r3), 1 / (1 + r3)]
    kl_t2 = p_t2[0] * math.log(2 * p_t2[0]) + p_t2[1] * math.log(2 * p_t2[1])
    assert kl_t2 == pytest.approx(0.0363408, abs=1e-7)
    assert kd1 == pytest.approx(kl(softmax(teacher[0]), softmax(student[0])), abs=1e-12)
    assert kd2 == pytest.approx(4.0 * kl_t2, abs=1e-12)  # the T² = 4 factor


def test_kd_batchmean_on_2x2_by_hand():
    s = [[1.0, 2.0], [0.5, -0.5]]
    tch = [[2.0, 0.0], [0.0, 1.0]]
    temperature = 3.0
    kl_sum = sum(
        kl(softmax([v / temperature for v in tr]), softmax([v / temperature for v in sr]))
        for sr, tr in zip(s, tch)
    )
    expected_kd = temperature**2 * kl_sum / 2  # batchmean: divide by N, not N·C
    out = StepOutputs(t(s), labels([1, 0]), teacher_logits=t(tch))
    res = HintonKDLoss(temperature=temperature, alpha=0.9)(out)
    assert res["kd"].item() == pytest.approx(expected_kd, abs=1e-12)


@pytest.mark.parametrize("case", FIXTURE["kd_cases"], ids=lambda c: f"T{c['temperature']}-a{c['alpha']}")
def test_kd_matches_numpy_fixture(case):
    out = StepOutputs(
        t(case["student_logits"]), labels(case["labels"]), teacher_logits=t(case["teacher_logits"])
    )
    res = HintonKDLoss(temperature=case["temperature"], alpha=case["alpha"])(out)
    for key in ("loss", "kd", "ce"):
        assert res[key].item() == pytest.approx(case[key], rel=1e-10, abs=1e-12)


def test_kd_alpha_zero_equals_ce():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(6, 3, generator=gen, dtype=DT)
    tch = torch.randn(6, 3, generator=gen, dtype=DT)
    y = torch.randint(0, 3, (6,), generator=gen)
    out = StepOutputs(s, y, teacher_logits=tch)
    kd = HintonKDLoss(temperature=4.0, alpha=0.0)(out)["loss"]
    ce = CrossEntropyLoss()(out)["loss"]
    assert kd.item() == pytest.approx(ce.item(), abs=1e-12)


def test_kd_is_zero_when_student_equals_teacher():
    logits = t([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], requires_grad=True)
    out = StepOutputs(logits, labels([0, 2]), teacher_logits=logits.detach().clone())
    res = HintonKDLoss(temperature=4.0, alpha=1.0)(out)
    assert res["kd"].item() == pytest.approx(0.0, abs=1e-12)
    assert res["loss"].item() == pytest.approx(0.0, abs=1e-12)
    res["loss"].backward()
    assert torch.allclose(logits.grad, torch.zeros_like(logits), atol=1e-12)


def test_kd_teacher_is_detached():
    student = t([[0.3, -0.2], [1.0, 0.0]], requires_grad=True)
    teacher = t([[1.0, 0.0], [-1.0, 2.0]], requires_grad=True)
    res = HintonKDLoss()(StepOutputs(student, labels([0, 1]), teacher_logits=teacher))
    res["loss"].backward()
    assert teacher.grad is None
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_kd_stable_for_extreme_logits():
    # softmax-then-log would give log(0) = -inf here; log_softmax keeps it finite.
    student = torch.tensor([[200.0, -200.0]], requires_grad=True)
    teacher = torch.tensor([[-200.0, 200.0]])
    res = HintonKDLoss(temperature=1.0, alpha=1.0)(StepOutputs(student, labels([1]), teacher_logits=teacher))
    assert torch.isfinite(res["loss"])
    assert res["loss"].item() == pytest.approx(400.0, rel=1e-5)  # KL ≈ difference of log-probs
    res["loss"].backward()
    assert torch.isfinite(student.grad).all()


def test_kd_missing_or_mismatched_teacher_raises():
    out = StepOutputs(t([[0.0, 1.0]]), labels([1]))
    with pytest.raises(ValueError, match="teacher_logits"):
        HintonKDLoss()(out)
    out = StepOutputs(t([[0.0, 1.0]]), labels([1]), teacher_logits=t([[0.0, 1.0, 2.0]]))
    with pytest.raises(ValueError, match="shape"):
        HintonKDLoss()(out)


# --------------------------------------------------------------------------- FitNet


def _set_adapter(loss: FitNetHintLoss, weight, bias) -> None:
    with torch.no_grad():
        loss.adapter.weight.copy_(torch.as_tensor(weight, dtype=loss.adapter.weight.dtype))
        loss.adapter.bias.copy_(torch.as_tensor(bias, dtype=loss.adapter.bias.dtype))


def _dummy(n: int = 1, **kwargs) -> StepOutputs:
    return StepOutputs(torch.zeros(n, 2, dtype=DT), torch.zeros(n, dtype=torch.int64), **kwargs)


def test_fitnet_matches_hand_value():
    loss = FitNetHintLoss(student_channels=1, teacher_channels=2, weight=2.0).double()
    _set_adapter(loss, [[[[2.0]]], [[[-1.0]]]], [0.5, 0.0])
    student = t([[[[1.0, 3.0]]]])  # 1×1×1×2
    teacher = t([[[[2.0, 6.0]], [[0.0, -3.0]]]])  # 1×2×1×2
    # adapter: ch0 = 2u + 0.5 = (2.5, 6.5); ch1 = -u = (-1, -3)
    # squared errors 0.25, 0.25, 1, 0 -> mean 0.375
    res = loss(_dummy(student_features=student, teacher_features=teacher))
    assert set(res) == {"loss", "hint"}
    assert res["hint"].item() == pytest.approx(0.375, abs=1e-12)
    assert res["loss"].item() == pytest.approx(0.75, abs=1e-12)


def test_fitnet_zero_when_adapter_is_identity():
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 3, 4, 4, generator=gen, dtype=DT)
    loss = FitNetHintLoss(3, 3).double()
    _set_adapter(loss, torch.eye(3).reshape(3, 3, 1, 1), torch.zeros(3))
    res = loss(_dummy(2, student_features=feats, teacher_features=feats.clone()))
    assert res["hint"].item() == pytest.approx(0.0, abs=1e-14)


def test_fitnet_pools_to_teacher_size():
    # Student 2×2 map [[1, 2], [3, 4]] pooled to the teacher's 1×1 -> 2.5; teacher 2 -> (0.5)².
    loss = FitNetHintLoss(1, 1).double()
    _set_adapter(loss, [[[[1.0]]]], [0.0])
    res = loss(_dummy(student_features=t([[[[1.0, 2.0], [3.0, 4.0]]]]), teacher_features=t([[[[2.0]]]])))
    assert res["hint"].item() == pytest.approx(0.25, abs=1e-12)

    # A 4×4 student whose 2×2 block means are the teacher: zero hint.
    gen = torch.Generator().manual_seed(2)
    student = torch.randn(3, 1, 4, 4, generator=gen, dtype=DT)
    block_means = student.reshape(3, 1, 2, 2, 2, 2).mean(dim=(3, 5))
    res = loss(_dummy(3, student_features=student, teacher_features=block_means))
    assert res["hint"].item() == pytest.approx(0.0, abs=1e-14)


def test_fitnet_accepts_embeddings():
    loss = FitNetHintLoss(2, 1).double()
    _set_adapter(loss, [[[[1.0]], [[1.0]]]], [0.0])  # y = x0 + x1
    res = loss(_dummy(2, student_features=t([[1.0, 2.0], [0.0, 0.5]]), teacher_features=t([[3.0], [1.5]])))
    assert res["hint"].item() == pytest.approx((0.0**2 + 1.0**2) / 2, abs=1e-12)


def test_fitnet_adapter_is_trainable_and_teacher_detached():
    loss = FitNetHintLoss(4, 6)
    names = {name for name, _ in loss.named_parameters()}
    assert names == {"adapter.weight", "adapter.bias"}
    student = torch.randn(2, 4, 8, 8, requires_grad=True)
    teacher = torch.randn(2, 6, 4, 4, requires_grad=True)
    loss(_dummy(2, student_features=student, teacher_features=teacher))["loss"].backward()
    assert loss.adapter.weight.grad is not None and loss.adapter.weight.grad.abs().sum() > 0
    assert student.grad is not None
    assert teacher.grad is None


def test_fitnet_bad_inputs_raise():
    loss = FitNetHintLoss(4, 6)
    with pytest.raises(ValueError, match="student_features"):
        loss(_dummy(1, teacher_features=torch.zeros(1, 6, 2, 2)))
    with pytest.raises(ValueError, match="channels"):
        loss(_dummy(1, student_features=torch.zeros(1, 5, 2, 2), teacher_features=torch.zeros(1, 6, 2, 2)))
    with pytest.raises(ValueError, match="channels"):
        loss(_dummy(1, student_features=torch.zeros(1, 4, 2, 2), teacher_features=torch.zeros(1, 7, 2, 2)))
    with pytest.raises(ValueError, match="batch"):
        loss(_dummy(1, student_features=torch.zeros(1, 4, 2, 2), teacher_features=torch.zeros(2, 6, 2, 2)))
    with pytest.raises(ValueError, match="4-D|2-D"):
        loss(_dummy(1, student_features=torch.zeros(1, 4, 2, 2), teacher_features=torch.zeros(1, 6)))


# ------------------------------------------------------------------------------ RKD

STUDENT_3 = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
TEACHER_3 = [[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]]


def _rkd(student, teacher, **kwargs) -> dict[str, torch.Tensor]:
    return RKDLoss(**kwargs)(
        _dummy(len(student), student_embedding=torch.as_tensor(student, dtype=DT),
               teacher_embedding=torch.as_tensor(teacher, dtype=DT))
    )


def test_rkd_three_points_by_hand():
    # Distances: student (d01, d02, d12) = (1, 1, √2); teacher (2, 1, √5).
    # ψ_D divides each by the mean of the pair distances.
    ds = [1.0, 1.0, math.sqrt(2.0)]
    dt = [2.0, 1.0, math.sqrt(5.0)]
    ms, mt = sum(ds) / 3, sum(dt) / 3
    distance = sum(huber(a / ms - b / mt) for a, b in zip(ds, dt)) / 3
    # Angles (cosine at each apex): student right isosceles triangle (0, √2/2, √2/2);
    # teacher at 0: 0; at 1: (-2,0)·(-2,1)/(2·√5) = 2/√5; at 2: (0,-1)·(2,-1)/√5 = 1/√5.
    cs = [0.0, math.sqrt(2.0) / 2, math.sqrt(2.0) / 2]
    ct = [0.0, 2 / math.sqrt(5.0), 1 / math.sqrt(5.0)]
    angle = sum(huber(a - b) for a, b in zip(cs, ct)) / 3
    assert distance == pytest.approx(0.0277267, abs=1e-6)
    assert angle == pytest.approx(0.0171056, abs=1e-6)

    res = _rkd(STUDENT_3, TEACHER_3, distance_weight=25.0, angle_weight=50.0)
    assert set(res) == {"loss", "rkd_distance", "rkd_angle"}
    assert res["rkd_distance"].item() == pytest.approx(distance, abs=1e-12)
    assert res["rkd_angle"].item() == pytest.approx(angle, abs=1e-12)
    assert res["loss"].item() == pytest.approx(25.0 * distance + 50.0 * angle, abs=1e-10)


@pytest.mark.parametrize("case", FIXTURE["rkd_cases"], ids=lambda c: c["name"])
def test_rkd_matches_numpy_fixture(case):
    res = _rkd(case["student_embedding"], case["teacher_embedding"])
    for key in ("loss", "rkd_distance", "rkd_angle"):
        assert res[key].item() == pytest.approx(case[key], rel=1e-9, abs=1e-12)


def test_rkd_invariances():
    gen = torch.Generator().manual_seed(3)
    student = torch.randn(6, 4, generator=gen, dtype=DT)
    teacher = torch.randn(6, 5, generator=gen, dtype=DT)
    base = _rkd(student, teacher)
    # Different scales and translations of each space leave both potentials unchanged
    # (distance via the mean normalisation, angle by construction); so does a rotation.
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=DT))
    moved = _rkd(3.0 * student @ rotation + 7.0, 0.25 * teacher - 2.0)
    for key in ("rkd_distance", "rkd_angle"):
        assert moved[key].item() == pytest.approx(base[key].item(), rel=1e-9, abs=1e-12)
    # A scaled copy of the teacher's geometry costs nothing.
    same = _rkd(5.0 * teacher + 1.0, teacher)
    assert same["rkd_distance"].item() == pytest.approx(0.0, abs=1e-12)
    assert same["rkd_angle"].item() == pytest.approx(0.0, abs=1e-12)


def test_rkd_distance_not_invariant_to_unequal_axis_stretch():
    # Sanity check that the invariance test is not vacuous.
    stretched = [[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]]
    res = _rkd(STUDENT_3, stretched)
    assert res["rkd_distance"].item() > 1e-3 and res["rkd_angle"].item() > 1e-3


def test_rkd_gradients_and_detach():
    student = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 2.0, 0.0], [0.5, -1.0, 0.0]],
                           dtype=DT, requires_grad=True)  # duplicate rows: zero distance
    teacher = torch.randn(4, 6, dtype=DT, requires_grad=True)
    res = RKDLoss()(_dummy(4, student_embedding=student, teacher_embedding=teacher))
    res["loss"].backward()
    assert torch.isfinite(res["loss"])
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert teacher.grad is None


def test_rkd_flattens_and_handles_tiny_batches():
    gen = torch.Generator().manual_seed(4)
    student = torch.randn(5, 2, 3, generator=gen, dtype=DT)
    teacher = torch.randn(5, 4, 1, 1, generator=gen, dtype=DT)
    flat = _rkd(student.flatten(1), teacher.flatten(1))
    nd = _rkd(student, teacher)
    assert nd["loss"].item() == pytest.approx(flat["loss"].item(), rel=1e-12)

    two = torch.randn(2, 3, dtype=DT, requires_grad=True)
    res = RKDLoss()(_dummy(2, student_embedding=two, teacher_embedding=torch.randn(2, 3, dtype=DT)))
    assert res["rkd_distance"].item() == pytest.approx(0.0, abs=1e-12)  # one pair: ψ_D = 1 on both sides
    assert res["rkd_angle"].item() == 0.0  # no triangle
    res["loss"].backward()  # still attached to the graph
    one = torch.randn(1, 3, dtype=DT, requires_grad=True)
    res = RKDLoss()(_dummy(1, student_embedding=one, teacher_embedding=torch.randn(1, 3, dtype=DT)))
    assert res["loss"].item() == 0.0
    res["loss"].backward()


def test_rkd_bad_inputs_raise():
    with pytest.raises(ValueError, match="student_embedding"):
        RKDLoss()(_dummy(2, teacher_embedding=torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="batch"):
        RKDLoss()(_dummy(2, student_embedding=torch.zeros(2, 3), teacher_embedding=torch.zeros(3, 3)))


# ------------------------------------------------------------------- composite / build


def test_composite_sums_weighted_terms_and_prefixes_clashes():
    out = StepOutputs(t([[1.0, 2.0], [3.0, 0.0]]), labels([1, 0]))
    plain = CrossEntropyLoss()(out)["loss"].item()
    smooth = CrossEntropyLoss(label_smoothing=0.1)(out)["loss"].item()
    comp = CompositeLoss({"a": (CrossEntropyLoss(), 1.0), "b": (CrossEntropyLoss(label_smoothing=0.1), 0.5)})
    res = comp(out)
    assert "ce" not in res
    assert res["a/ce"].item() == pytest.approx(plain)
    assert res["b/ce"].item() == pytest.approx(smooth)
    assert res["loss"].item() == pytest.approx(plain + 0.5 * smooth, abs=1e-12)


def _full_outputs(n: int = 4) -> StepOutputs:
    gen = torch.Generator().manual_seed(5)
    return StepOutputs(
        student_logits=torch.randn(n, 2, generator=gen, requires_grad=True),
        labels=torch.randint(0, 2, (n,), generator=gen),
        teacher_logits=torch.randn(n, 2, generator=gen),
        student_features=torch.randn(n, 4, 8, 8, generator=gen, requires_grad=True),
        teacher_features=torch.randn(n, 6, 4, 4, generator=gen),
        student_embedding=torch.randn(n, 5, generator=gen, requires_grad=True),
        teacher_embedding=torch.randn(n, 7, generator=gen),
    )


def test_build_loss_kd_fitnet_rkd_total_and_parts():
    out = _full_outputs()
    loss = build_loss("kd+fitnet+rkd", temperature=2.0, alpha=0.7, hint_weight=3.0,
                      rkd_distance_weight=10.0, rkd_angle_weight=20.0, student_channels=4, teacher_channels=6)
    res = loss(out)
    for part in ("kd", "ce", "hint", "rkd_distance", "rkd_angle"):
        assert part in res
    expected = (0.7 * res["kd"] + 0.3 * res["ce"] + 3.0 * res["hint"]
                + 10.0 * res["rkd_distance"] + 20.0 * res["rkd_angle"])
    assert res["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    # The adapter reaches the optimizer through loss.parameters() and gets gradients.
    params = list(loss.parameters())
    assert len(params) == 2
    res["loss"].backward()
    assert all(p.grad is not None for p in params)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_build_loss_every_name(name):
    loss = build_loss(name, student_channels=4, teacher_channels=6)
    res = loss(_full_outputs())
    assert torch.isfinite(res["loss"]) and res["loss"].dim() == 0
    assert ("kd" in res) == needs_teacher(name)
    assert ("hint" in res) == needs_features(name)
    assert ("rkd_angle" in res) == needs_embeddings(name)


def test_build_loss_forwards_hyperparameters():
    kd = build_loss("kd", temperature=2.5, alpha=0.25)
    assert isinstance(kd, HintonKDLoss) and kd.temperature == 2.5 and kd.alpha == 0.25
    assert isinstance(build_loss("ce"), CrossEntropyLoss)


def test_needs_helpers():
    assert [needs_teacher(n) for n in LOSS_NAMES] == [False, True, True, True, True]
    assert [needs_features(n) for n in LOSS_NAMES] == [False, False, True, False, True]
    assert [needs_embeddings(n) for n in LOSS_NAMES] == [False, False, False, True, True]


def test_unknown_name_lists_valid_names():
    for func in (build_loss, needs_teacher, needs_features, needs_embeddings):
        with pytest.raises(ValueError) as info:
            func("kd+at")
        for name in LOSS_NAMES:
            assert name in str(info.value)


def test_fitnet_name_requires_channels():
    with pytest.raises(ValueError, match="channels"):
        build_loss("kd+fitnet")


@pytest.mark.parametrize(
    "make",
    [
        lambda: HintonKDLoss(temperature=0.0),
        lambda: HintonKDLoss(temperature=-1.0),
        lambda: HintonKDLoss(temperature=float("nan")),
        lambda: HintonKDLoss(temperature=float("inf")),
        lambda: HintonKDLoss(alpha=1.5),
        lambda: HintonKDLoss(alpha=-0.1),
        lambda: CrossEntropyLoss(label_smoothing=1.0),
        lambda: CrossEntropyLoss(label_smoothing=-0.1),
        lambda: FitNetHintLoss(0, 4),
        lambda: FitNetHintLoss(4, 4, weight=-1.0),
        lambda: RKDLoss(distance_weight=-1.0),
        lambda: RKDLoss(angle_weight=float("nan")),
        lambda: CompositeLoss({}),
        lambda: CompositeLoss({"a": (CrossEntropyLoss(), -1.0)}),
        lambda: build_loss("kd", temperature=0.0),
        lambda: build_loss("kd", alpha=2.0),
    ],
)
def test_bad_arguments_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_bad_logits_or_labels_raise():
    with pytest.raises(ValueError, match="N×C"):
        CrossEntropyLoss()(StepOutputs(t([1.0, 2.0]), labels([0])))
    with pytest.raises(ValueError, match="labels"):
        CrossEntropyLoss()(StepOutputs(t([[1.0, 2.0]]), labels([0, 1])))
