"""Stage ``adapt_teachers``: the shipped teachers learn the new site first.

ImageNet-initialised teachers learn a new surface from few labels far better than a student
trained from scratch, so each teacher of the ensemble is fine-tuned with cross-entropy on the
site's *adapt* part plus a replay of the base data (``replay`` samples, chosen by the pipeline),
then the student is distilled from the adapted ensemble. ``layers`` chooses what trains:
``"all"`` or ``"last:N"`` (the last N blocks and the head; the frozen part's batch norms keep
their statistics). The last epoch's weights are kept: the site-validation part judges the
student later and must not also have picked the teachers' epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from distill.training.batchnorm import freeze_batch_norms
from distill.update.errors import UpdateDataError

TEACHER_FILES = ("efficientnet_lite0.pt", "efficientnet_lite1.pt", "efficientnet_lite2.pt")


@dataclass
class TeacherPlan:
    epochs: int
    lr: float
    layers: str
    batch_size: int
    seed: int
    max_steps: int | None = None


def teacher_checkpoints(folder: str) -> list[Path]:
    """The ensemble's checkpoints in ``folder`` (the shipped names first, else every ``*.pt``)."""
    root = Path(folder)
    paths = [root / n for n in TEACHER_FILES if (root / n).is_file()] or sorted(root.glob("*.pt"))
    if not paths:
        raise UpdateDataError(f"--teachers {folder}: no teacher checkpoints (*.pt) in it")
    return paths


def trainable_modules(model, layers: str) -> list[nn.Module]:
    """The modules that train for ``layers`` ("all" or "last:N")."""
    net = model.net
    if layers == "all":
        return [net]
    n = int(layers.split(":", 1)[1])
    if hasattr(net, "_blocks"):      # EfficientNet-Lite: MBConv blocks, then conv head + classifier
        blocks, head = list(net._blocks), [net._conv_head, net._bn1, net._fc]
    elif hasattr(net, "layer4"):     # ResNet: four stages, then the classifier
        blocks, head = [net.layer1, net.layer2, net.layer3, net.layer4], [net.fc]
    else:
        raise UpdateDataError(f"teacher_layers {layers!r}: no notion of 'last blocks' for {model.meta.arch}; use 'all'")
    return (blocks[-n:] if n else []) + head


def set_trainable(model, layers: str) -> None:
    """Freeze everything outside :func:`trainable_modules`; its batch norms stay in eval mode."""
    if layers == "all":
        return
    keep = trainable_modules(model, layers)
    for p in model.parameters():
        p.requires_grad_(False)
    for k in keep:
        for p in k.parameters():
            p.requires_grad_(True)
    freeze_batch_norms(model, keep_training=keep)


def adapt_teacher(path: Path, train: list, val: list, plan: TeacherPlan, work: Path, reporter) -> Path:
    """Fine-tune the teacher at ``path``; returns the adapted checkpoint (float32) in ``work``."""
    import torch

    from distill.models.checkpoint import load_classifier, save_checkpoint
    from distill.data.augment import AugmentConfig
    from distill.data.torch_dataset import PatchDataset
    from distill.training.losses import CrossEntropyLoss
    from distill.training.loop import TrainConfig, fit

    model = load_classifier(path).float()
    set_trainable(model, plan.layers)
    size = model.meta.input_size
    run_dir = work / model.meta.arch
    cfg = TrainConfig(epochs=plan.epochs, batch_size=plan.batch_size, lr=plan.lr, weight_decay=1e-4,
                      warmup_epochs=0.0, patience=plan.epochs, seed=plan.seed, num_workers=0, device="cpu",
                      max_steps_per_epoch=plan.max_steps)
    fit(model, CrossEntropyLoss(), PatchDataset(train, size, augment=AugmentConfig(), seed=plan.seed),
        PatchDataset(val, size), run_dir, cfg, callback=reporter.fit_callback(f"teacher:{model.meta.arch}"))
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["student"]
    model.load_state_dict(state)
    model.meta.init = f"{path.name} adapted to the site"
    out = work / f"{model.meta.arch}.pt"
    save_checkpoint(out, model, info={"adapted_from": str(path), "epochs": plan.epochs, "layers": plan.layers})
    return out
