"""The base model of an update: its packages and its PyTorch weights, found and checked.

An update fine-tunes the base student from its own weights, so every shipped or produced
version keeps a checkpoint ``NAME-VERSION.pt`` beside its packages (``models/`` for the shipped
one). Given either package (FP32, or INT8 whose ``parent_version`` names the FP32 one), the
FP32 package and the checkpoint are looked up beside it, then in ``models/``. The checkpoint
must reproduce the FP32 package's reference outputs (``WEIGHTS_ATOL`` on probs: a float16
checkpoint passes, another model's weights do not).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.update.config import repo_models
from distill.update.errors import BaseModelError

WEIGHTS_ATOL = 1e-3


@dataclass
class BaseModel:
    given: Path               # the package named on the command line
    fp32_path: Path
    int8_path: Path | None
    checkpoint: Path
    manifest: object          # the FP32 package's Manifest
    weights_max_abs_diff: float

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def tiling(self) -> dict | None:
        return None if self.manifest.tiling is None else self.manifest.tiling.to_dict()


def _places(given: Path) -> list[Path]:
    places = [given.parent]
    models = repo_models()
    if models.resolve() != given.parent.resolve():
        places.append(models)
    return places


def _find(names: list[str], places: list[Path]) -> Path | None:
    for place in places:
        for name in names:
            if (place / name).is_file():
                return place / name
    return None


def find_base(path: str | Path) -> BaseModel:
    """The base model of ``path`` (a .crackpkg), or BaseModelError saying what is missing."""
    from inspector.edge.fields import PackageError
    from inspector.edge.package import load_package

    given = Path(path)
    try:
        pkg = load_package(given)
    except PackageError as exc:
        raise BaseModelError(f"--base {given}: {exc}") from None
    m = pkg.manifest
    places = _places(given)
    if m.quantization.type == "fp32":
        fp32_path, fp32 = given, pkg
        int8_path = _find([f"{m.name}-{m.version}-int8.crackpkg"], places)
    else:
        if m.parent_version is None:
            raise BaseModelError(f"--base {given}: an INT8 package without parent_version; give its FP32 package")
        fp32_path = _find([f"{m.name}-{m.parent_version}.crackpkg"], places)
        if fp32_path is None:
            raise BaseModelError(f"--base {given}: its FP32 parent {m.name}-{m.parent_version}.crackpkg is in none of "
                                 f"{[str(p) for p in places]}; the update compares against it and starts from its weights")
        fp32, int8_path = load_package(fp32_path), given
    name = f"{fp32.manifest.name}-{fp32.manifest.version}.pt"
    ckpt = _find([name], places)
    if ckpt is None:
        raise BaseModelError(
            f"--base {given}: no PyTorch weights {name} beside it or in {repo_models()}. distill update fine-tunes "
            f"the base student from its own weights; keep the .pt that distill update (or "
            f"scripts/build_update_assets.py --checkpoint for a shipped package) wrote beside the packages")
    diff = _check_weights(ckpt, fp32)
    return BaseModel(given, fp32_path, int8_path, ckpt, fp32.manifest, diff)


def _check_weights(ckpt: Path, fp32) -> float:
    import torch

    from distill.models.checkpoint import load_classifier
    from distill.models.errors import ModelError

    try:
        model = load_classifier(ckpt)
    except (ModelError, FileNotFoundError) as exc:
        raise BaseModelError(f"base weights {ckpt}: {exc}") from None
    m = fp32.manifest
    if model.meta.arch != m.architecture or tuple(model.meta.label_names) != tuple(m.labels):
        raise BaseModelError(f"base weights {ckpt}: a {model.meta.arch} with labels {list(model.meta.label_names)}, "
                             f"the package a {m.architecture} with labels {list(m.labels)}")
    images = np.ascontiguousarray(fp32.reference["image"])
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        probs = torch.softmax(model(x), dim=1).numpy()
    diff = float(np.abs(probs - fp32.reference["probs"]).max())
    if not diff <= WEIGHTS_ATOL:
        raise BaseModelError(f"base weights {ckpt} are not the weights of {m.name}-{m.version}: they differ from the "
                             f"package's reference probs by {diff:.3g} (> {WEIGHTS_ATOL})")
    return diff
