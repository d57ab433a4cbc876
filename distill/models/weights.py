"""Weight files as they are read: the checkpoint format's tag, a safe read of any PyTorch file, and
a network started from one (``build_model(pretrained=PATH)``).

Below both the registry (which builds networks and starts them from a file here) and
``checkpoint`` (which writes checkpoints and rebuilds a Classifier from one): it imports neither,
so a ``model`` here is any registry ``Classifier`` (``net``, ``meta``, ``spec``).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from distill.models.errors import ModelError

FORMAT = "crack-distill-checkpoint/1"


def read_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        raise ModelError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    return ckpt


# torchvision's DenseNet files still name layers "norm.1" where the modules are now "norm1"
# (torchvision remaps them with this pattern in densenet._load_state_dict).
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def init_from_file(model: torch.nn.Module, path) -> None:
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


def _head_params(model: torch.nn.Module) -> tuple[set[str], set[str]]:
    """Names (in ``model.net``) of the head's parameters, and of its output layer's."""
    head = model.spec.head(model.net)
    names = {id(p): n for n, p in model.net.named_parameters()}
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    out = {names[id(p)] for p in linears[-1].parameters()} if linears else set()
    return {names[id(p)] for p in head.parameters()}, out
