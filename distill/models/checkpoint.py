"""Checkpoints that carry their metadata, written atomically.

A checkpoint is a ``torch.save`` dict::

    {"format": FORMAT, "meta": ModelMeta.to_dict(), "state_dict": ..., "info": {...}}

``info`` holds what the run wants to remember (metrics, epoch, configuration digest).
Training state (optimizer, scheduler, RNG) lives in a separate ``last.pt`` written by the
trainer, so a model checkpoint stays small and safe to hand to someone.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from distill.models.registry import Classifier, ModelError, ModelMeta, build_model
from inspector.fsio import write_atomic

FORMAT = "crack-distill-checkpoint/1"


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(f)`` on a temporary file in the same folder, fsync, then rename: readers
    never see a half-written checkpoint or model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, write)  # a fresh .<name>.<random>.tmp, with the umask's mode (not mkstemp's 0600)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def unwrap(model: torch.nn.Module) -> Classifier:
    """The Classifier inside a DistributedDataParallel (or plain) module."""
    return getattr(model, "module", model)


def save_checkpoint(path, model: torch.nn.Module, info: dict | None = None) -> None:
    model = unwrap(model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": FORMAT, "meta": model.meta.to_dict(), "state_dict": state,
                       "info": info or {}}, path)


def read_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        raise ModelError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    return ckpt


def load_classifier(path) -> Classifier:
    """Rebuild a Classifier from one of our checkpoints; needs nothing but the file."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ModelError(
            f"{path} is not a distill checkpoint (format {FORMAT}); plain state dicts can "
            f"initialise a model with --init/pretrained=PATH"
        )
    if not isinstance(ckpt.get("meta"), dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ModelError(f"{path} is a damaged distill checkpoint: it lacks its meta or state_dict")
    meta = ModelMeta.from_dict(ckpt["meta"])
    model = build_model(meta.arch, label_names=meta.label_names, input_size=meta.input_size)
    model.meta = meta
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"{path}: the weights do not fit its own metadata ({meta.arch}): {exc}") from exc
    model.eval()
    return model


def checkpoint_info(path) -> dict:
    ckpt = read_checkpoint(path)
    return dict(ckpt.get("info", {})) if isinstance(ckpt, dict) else {}


# torchvision's DenseNet files still name layers "norm.1" where the modules are now "norm1"
# (torchvision remaps them with this pattern in densenet._load_state_dict).
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def init_from_file(model: Classifier, path) -> None:
    """Start ``model`` from a local file: our checkpoint or a plain state dict of the network.

    Layers whose shapes differ (a 1000-class ImageNet head on a 2-class model) are skipped and
    keep their fresh initialisation; anything else that does not match is an error, so a
    ResNet-50 file is never silently half-loaded into a ResNet-18. From one of our checkpoints
    with the same label names in another order, the output layer's rows are reordered; with
    other label names it keeps its fresh initialisation.
    """
    ckpt = read_checkpoint(path)
    src_labels = None
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        src_arch = ckpt["meta"]["arch"]
        if src_arch != model.meta.arch:
            raise ModelError(f"{path} holds a {src_arch}, not a {model.meta.arch}")
        src_labels = tuple(ckpt["meta"]["label_names"])
        state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        state = ckpt["state_dict"]
    elif isinstance(ckpt, dict):
        state = ckpt
    else:
        raise ModelError(f"{path} holds a {type(ckpt).__name__}, not a state dict")
    state = {_LEGACY_DENSENET_KEY.sub(r"\1\2", k.removeprefix("module.")): v for k, v in state.items()}
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} is not a state dict: some of its values are not tensors")
    head_keys, out_keys = _head_params(model)
    labels = tuple(model.meta.label_names)
    if src_labels is not None and src_labels != labels:
        if sorted(src_labels) == sorted(labels):
            order = torch.tensor([src_labels.index(n) for n in labels])
            state.update({k: state[k][order] for k in out_keys if k in state})
        else:
            state = {k: v for k, v in state.items() if k not in out_keys}
    own = model.net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = [k for k in state if k in own and own[k].shape != state[k].shape]
    # A batch-norm counter absent from old files (torchvision's pre-1.0 ImageNet weights) is harmless.
    missing = [k for k in own if k not in usable and k not in skipped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if unexpected or any(k not in head_keys for k in missing + skipped):
        raise ModelError(
            f"{path} does not fit {model.meta.arch}: missing {missing[:4]}, unexpected "
            f"{unexpected[:4]}, shape mismatch {[k for k in skipped if k not in head_keys][:4]}"
        )
    model.net.load_state_dict(usable, strict=False)
    model.meta.init = str(path)


def _head_params(model: Classifier) -> tuple[set[str], set[str]]:
    """Names (in ``model.net``) of the head's parameters, and of its output layer's."""
    head = model.spec.head(model.net)
    names = {id(p): n for n, p in model.net.named_parameters()}
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    out = {names[id(p)] for p in linears[-1].parameters()} if linears else set()
    return {names[id(p)] for p in head.parameters()}, out
