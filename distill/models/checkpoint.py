"""Checkpoints that carry their metadata, written atomically.

A checkpoint is a ``torch.save`` dict::

    {"format": FORMAT, "meta": ModelMeta.to_dict(), "state_dict": ..., "info": {...}}

``info`` holds what the run wants to remember (metrics, epoch, configuration digest).
``FORMAT`` and the reading of any weight file live in ``weights``, below the registry, which
starts networks from files too. Training state (optimizer, scheduler, RNG) lives in a separate
``last.pt`` written by the trainer, so a model checkpoint stays small and safe to hand to someone.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from distill.models.errors import ModelError
from distill.models.registry import Classifier, ModelMeta, build_model
from distill.models.weights import FORMAT, read_checkpoint
from inspector.fsio import write_atomic


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
