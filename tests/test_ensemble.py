"""distill.models.ensemble.TeacherEnsemble: averaging, per-member input sizes, freezing, fingerprint."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from distill.models.checkpoint import save_checkpoint
from distill.models.ensemble import TeacherEnsemble
from distill.models.errors import ModelError
from distill.models.registry import build_model
from support import calibrated

torch.set_num_threads(1)  # tiny models; extra OpenMP threads only slow a busy machine down


def member(arch: str, size: int, labels=("no_crack", "crack"), seed: int = 0):
    """A random-init member whose logits depend on the image."""
    torch.manual_seed(seed)
    return calibrated(build_model(arch, label_names=labels, input_size=size), size)


@pytest.fixture(scope="module")
def same_size():
    """Three members that all take 32 px input (no resizing involved)."""
    return [member("mobilenet_v3_small", 32, seed=1), member("resnet18", 32, seed=2),
            member("mobilenet_v3_small", 32, seed=3)]


@pytest.fixture(scope="module")
def mixed_size():
    """Members of different architectures and input sizes, like ResNet + DenseNet + EfficientNet."""
    return [member("mobilenet_v3_small", 32, seed=4), member("efficientnet_lite0", 48, seed=5)]


def resized(x, size):
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def by_hand(members, x):
    """Each member's logits on the batch resized to its own input size."""
    with torch.no_grad():
        return torch.stack([m(resized(x, m.meta.input_size)) for m in members])


def test_logit_average_is_the_mean_of_member_logits(same_size):
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        members = torch.stack([m(x) for m in same_size])
    got = TeacherEnsemble(same_size, average="logits")(x)
    torch.testing.assert_close(got, members.mean(0), rtol=1e-6, atol=1e-6)
    assert (members[0] - members[1]).abs().min() > 1e-3  # the members really differ
    assert (members - members.mean(1, keepdim=True)).abs().max() > 1e-2  # and depend on the image


def test_prob_average_returns_log_of_mean_probabilities(same_size):
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        mean_probs = torch.stack([m(x).softmax(-1) for m in same_size]).mean(0)
    got = TeacherEnsemble(same_size, average="probs")(x)
    torch.testing.assert_close(got.softmax(-1), mean_probs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, mean_probs.log(), rtol=1e-5, atol=1e-5)  # already normalised


def confident(bias: float):
    """A member that outputs logits (+bias, -bias) whatever the image."""
    m = member("mobilenet_v3_small", 32)
    with torch.no_grad():
        m.net.classifier[3].weight.zero_()
        m.net.classifier[3].bias.copy_(torch.tensor([bias, -bias]))
    return m


def test_prob_average_is_exact_for_confident_members():
    """Class-1 probabilities of e^-120 and e^-100 underflow to 0 in float32; their mean is
    still e^-100 / 2, and with KD's temperature (T=4) a clamp at 1e-12 would matter: it would
    give class 1 a softened probability of 1e-3 instead of 1e-11."""
    ens = TeacherEnsemble([confident(60.0), confident(50.0)], average="probs")
    got = ens(torch.rand(2, 3, 32, 32))
    expected_log_p1 = -100 - math.log(2) + math.log1p(math.exp(-20))
    torch.testing.assert_close(got[:, 1], torch.full((2,), expected_log_p1), rtol=1e-5, atol=1e-3)
    soft = (got / 4).softmax(-1)[:, 1]
    torch.testing.assert_close(soft, torch.full((2,), math.exp(expected_log_p1 / 4)), rtol=1e-3, atol=0)


@pytest.mark.parametrize("average", ["logits", "probs"])
def test_members_of_different_input_sizes_each_get_their_size(mixed_size, average):
    x = torch.rand(3, 3, 40, 40)
    per_member = by_hand(mixed_size, x)
    expected = per_member.mean(0) if average == "logits" else per_member.softmax(-1).mean(0).log()
    got = TeacherEnsemble(mixed_size, average=average)(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_non_square_input_is_resized_to_the_member_size(mixed_size):
    """A 40x32 batch has the width of the 32-px member but is not its input size."""
    x = torch.rand(2, 3, 40, 32)
    got = TeacherEnsemble(mixed_size)(x)
    torch.testing.assert_close(got, by_hand(mixed_size, x).mean(0), rtol=1e-5, atol=1e-5)


def test_forward_all_returns_the_hint_members_features(mixed_size):
    x = torch.rand(2, 3, 32, 32)
    for hint in (0, 1):
        out = TeacherEnsemble(mixed_size, hint_member=hint).forward_all(x)
        with torch.no_grad():
            own = mixed_size[hint].forward_all(resized(x, mixed_size[hint].meta.input_size))
        torch.testing.assert_close(out["features"], own["features"], rtol=0, atol=0)
        torch.testing.assert_close(out["embedding"], own["embedding"], rtol=0, atol=0)
        torch.testing.assert_close(out["logits"], by_hand(mixed_size, x).mean(0), rtol=1e-5, atol=1e-5)
    assert out["features"].shape[1] == 1280  # member 1 is the EfficientNet-Lite


def test_members_must_agree_on_label_names():
    a = member("mobilenet_v3_small", 32)
    with pytest.raises(ModelError, match="disagree on label names"):
        TeacherEnsemble([a, member("mobilenet_v3_small", 32, labels=("crack", "no_crack"))])
    with pytest.raises(ModelError, match="disagree on label names"):
        TeacherEnsemble([a, member("mobilenet_v3_small", 32, labels=("no_crack", "crack", "spall"))])


def test_bad_arguments_are_refused():
    a = member("mobilenet_v3_small", 32)
    with pytest.raises(ModelError):
        TeacherEnsemble([])
    with pytest.raises(ValueError, match="average"):
        TeacherEnsemble([a], average="vote")
    with pytest.raises(ValueError, match="hint_member"):
        TeacherEnsemble([a], hint_member=1)


def test_ensemble_is_frozen_and_stays_in_eval_mode():
    ens = TeacherEnsemble([member("mobilenet_v3_small", 32), member("resnet18", 32, seed=1)])
    assert all(not p.requires_grad for p in ens.parameters())
    before = {k: v.clone() for k, v in ens.state_dict().items()}
    ens.train()
    assert not ens.training and not any(m.training for m in ens.modules())
    torch.nn.Sequential(ens).train()  # a parent switching to training does not reach it either
    assert not any(m.training for m in ens.modules())
    x = torch.rand(4, 3, 32, 32)
    first, second = ens(x), ens(x)
    assert torch.equal(first, second)  # dropout off
    assert not first.requires_grad
    after = ens.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # running stats untouched


def test_fingerprint_tracks_weights_and_settings():
    members = [member("mobilenet_v3_small", 32), member("mobilenet_v3_small", 32, seed=1)]
    ens = TeacherEnsemble(members)
    fp = ens.fingerprint()
    assert len(fp) == 16 and ens.fingerprint() == fp
    assert TeacherEnsemble(copy.deepcopy(members)).fingerprint() == fp  # same weights, same digest

    changed = copy.deepcopy(members)
    with torch.no_grad():
        changed[1].net.features[0][0].weight[0, 0, 0, 0] += 1e-3
    assert TeacherEnsemble(changed).fingerprint() != fp
    assert TeacherEnsemble(members, average="probs").fingerprint() != fp
    assert TeacherEnsemble(members[::-1]).fingerprint() != fp
    # The cache stores the hint member's features: another hint member must not hit them.
    assert TeacherEnsemble(members, hint_member=1).fingerprint() != fp


def test_from_checkpoints_rebuilds_the_same_ensemble(tmp_path, mixed_size):
    paths = []
    for i, m in enumerate(mixed_size):
        paths.append(tmp_path / f"teacher{i}.pt")
        save_checkpoint(paths[-1], m)
    loaded = TeacherEnsemble.from_checkpoints(paths, average="probs")
    in_memory = TeacherEnsemble(mixed_size, average="probs")
    assert loaded.fingerprint() == in_memory.fingerprint()  # a warm cache survives a restart
    x = torch.rand(2, 3, 40, 40)
    torch.testing.assert_close(loaded(x), in_memory(x), rtol=0, atol=0)
    assert loaded.label_names == ("no_crack", "crack")
