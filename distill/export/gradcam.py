"""The Grad-CAM oracle: pytorch-grad-cam's ``GradCAM`` on the float model, which the tests and the
edge benchmark compare the exported graph's in-graph ``cam`` with (:mod:`distill.export.graph`),
after :func:`cam_to_image` brings both to input resolution the way that library does; and the
Pearson correlation they are compared by."""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from torch import nn

from distill.models.registry import Classifier

class GradCamTarget(nn.Module):
    """The Classifier with an Identity on its feature map for pytorch-grad-cam to hook."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model
        self.target = nn.Identity()

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.embed(self.target(self.model.features(x01))))


def gradcam_reference(model: Classifier, x01, class_idx: int | Sequence[int]) -> np.ndarray:
    """pytorch-grad-cam's GradCAM of the float model: N×S×S maps in [0, 1], like the library.

    ``x01``: N×3×S×S float images in [0, 1] (tensor or array); ``class_idx``: one class for
    every image or one per image. The model is copied, so its mode and gradients are untouched.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = torch.as_tensor(np.asarray(x01) if not isinstance(x01, torch.Tensor) else x01, dtype=torch.float32)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x01 must be N×3×S×S, got {tuple(x.shape)}")
    n = x.shape[0]
    classes = [int(class_idx)] * n if np.ndim(class_idx) == 0 else [int(c) for c in class_idx]
    if len(classes) != n:
        raise ValueError(f"{len(classes)} class indices for {n} images")
    net = GradCamTarget(copy.deepcopy(model)).eval()
    for p in net.parameters():
        p.requires_grad_(True)
    with GradCAM(model=net, target_layers=[net.target]) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    return np.asarray(maps, dtype=np.float32)


def cam_to_image(cam_hw: np.ndarray, size: int) -> np.ndarray:
    """Feature-resolution CAM(s) (..., h, w) to size×size maps in [0, 1], as pytorch-grad-cam does.

    Per map: subtract the minimum, divide by the maximum + 1e-7, bilinear resize (OpenCV),
    then scale to [0, 1] again (the library's per-layer then aggregate scaling). An all-zero
    map stays all zero.
    """
    import cv2

    a = np.asarray(cam_hw, dtype=np.float32)
    if a.ndim < 2:
        raise ValueError(f"cam must be (..., h, w), got shape {a.shape}")
    flat = a.reshape(-1, *a.shape[-2:])
    out = np.empty((flat.shape[0], size, size), dtype=np.float32)
    for i, m in enumerate(flat):
        m = _unit(m)
        out[i] = _unit(cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR))
    return out.reshape(*a.shape[:-2], size, size)


def _unit(m: np.ndarray) -> np.ndarray:
    m = m - np.min(m)
    return (m / (1e-7 + np.max(m))).astype(np.float32)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps; NaN when either is constant."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")
