"""The training loop: seeds, checkpoints, resume, early stopping on validation MCC, progress events.

One loop serves teacher fine-tuning (loss "ce", no teacher) and student distillation (any
loss of ``distill.training.losses`` with a ``TeacherEnsemble``). Progress is reported as plain dicts
through a callback, so a CLI progress bar and, later, the Qt app subscribe the same way:

    {"event": "epoch_start", "epoch": e, "epochs": E, "steps": S}
    {"event": "step", "epoch": e, "step": i, "steps": S, "loss": {...parts...}}
    {"event": "epoch_end", "epoch": e, "train_loss": float, "val": {...metrics...}, "best_mcc": float}
    {"event": "done", "best_epoch": e, "best_mcc": float, "stopped_early": bool}

``epoch_end`` also carries ``"improved": bool``; a run that continues from ``last.pt`` first
sends ``{"event": "resumed", "epoch": e}`` (the first epoch it will run). ``step`` events come
from every rank under ``torchrun``; ``epoch_end`` only from rank 0.

Under ``torchrun`` the loop runs DistributedDataParallel (gloo on CPU, nccl on CUDA): the
training set is sharded, gradients are averaged, rank 0 validates, writes checkpoints and
tells the others whether to stop.
"""
from __future__ import annotations

import itertools
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from distill.models.checkpoint import atomic_torch_save, save_checkpoint, unwrap
from distill.training.losses import StepOutputs
from distill.metrics import ClassificationReport, evaluate_predictions

Callback = Callable[[dict], None]


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    patience: int = 3  # epochs without a better validation MCC before stopping
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"
    max_steps_per_epoch: int | None = None  # for smoke tests and quick demos


@dataclass
class FitResult:
    best_mcc: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    seconds: float
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc


def distributed_context() -> tuple[int, int]:
    """(rank, world size); initialises the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if world > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _TrainStep(nn.Module):
    """Student + loss as one module, so DDP averages the gradients of both (FitNet's adapter)."""

    def __init__(self, student: nn.Module, loss: nn.Module):
        super().__init__()
        self.student = student
        self.loss = loss

    def forward(self, x, labels, teacher: dict | None) -> dict[str, torch.Tensor]:
        out = self.student.forward_all(x)
        step = StepOutputs(
            student_logits=out["logits"], labels=labels,
            teacher_logits=teacher.get("logits") if teacher else None,
            student_features=out["features"],
            teacher_features=teacher.get("features") if teacher else None,
            student_embedding=out["embedding"],
            teacher_embedding=teacher.get("embedding") if teacher else None,
        )
        return self.loss(step)


def teacher_targets(teacher, cache, images: torch.Tensor, keys: list[str], device) -> dict[str, torch.Tensor]:
    """Teacher outputs for a batch, from the cache where possible, computing only the misses."""
    if cache is None:
        return {k: v.float() for k, v in teacher.forward_all(images).items()}
    found = cache.get_many(keys)
    missing = [i for i, k in enumerate(keys) if k not in found]
    if missing:
        computed = teacher.forward_all(images[missing])
        # Use fresh outputs exactly as the cache will serve them later (float32 logits, float16
        # maps, maps only if it stores them), so a run gets the same targets cold or warm.
        keep = [f for f in computed if f == "logits" or getattr(cache, "store_features", True)]
        fresh = {keys[i]: {f: computed[f][j].cpu().numpy().astype(np.float32 if f == "logits" else np.float16)
                           for f in keep}
                 for j, i in enumerate(missing)}
        cache.put_many(fresh)
        found.update(fresh)
    fields = [f for f in found[keys[0]] if all(f in found[k] for k in keys)]
    return {f: torch.from_numpy(np.stack([found[k][f] for k in keys])).float().to(device) for f in fields}


@torch.no_grad()
def predict(model: nn.Module, dataset, batch_size: int = 128, device: torch.device | str = "cpu",
            num_workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N×C) and labels (N) for a dataset, in dataset order, no augmentation."""
    model = unwrap(model).eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    probs, labels = [], []
    for batch in loader:
        probs.append(torch.softmax(model(batch["image"].to(device)), dim=1).cpu())
        labels.append(batch["label"])
    if not probs:
        return np.zeros((0, 2), np.float32), np.zeros((0,), np.int64)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def evaluate(model: nn.Module, dataset, batch_size: int = 128, device="cpu") -> ClassificationReport:
    probs, labels = predict(model, dataset, batch_size, device)
    surfaces = [s.surface for s in dataset.samples] if hasattr(dataset, "samples") else None
    return evaluate_predictions(labels, probs, surfaces=surfaces, label_names=unwrap(model).meta.label_names)


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _should_stop(epoch: int, best_epoch: int, patience: int) -> bool:
    """After ``epoch``: stop once ``patience`` epochs in a row brought no better validation MCC.

    An epoch that improved never stops training, so ``patience=0`` behaves like ``1`` (stop at
    the first epoch without improvement) instead of ending every run after its first epoch.
    """
    return epoch - best_epoch >= max(1, patience)


def _sync_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (batch-norm statistics) on every rank: DDP averages gradients, but each
    rank updates its running statistics on its own shard in the last forward of an epoch."""
    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def fit(student: nn.Module, loss: nn.Module, train_ds, val_ds, out_dir, cfg: TrainConfig, *,
        teacher: nn.Module | None = None, cache=None, callback: Callback | None = None,
        resume: bool = True, info: dict | None = None) -> FitResult:
    """Train ``student`` with ``loss``; best model (by validation MCC) goes to ``out_dir/best.pt``.

    ``out_dir/last.pt`` holds the full training state after every epoch; with ``resume`` a
    run that finds it continues where it stopped (same config assumed); a ``last.pt`` that
    does not fit ``student``/``loss`` is a ``ValueError``. On CPU with ``num_workers=0`` the
    loop is deterministic: a resumed run ends bit-identical to an uninterrupted one.

    With ``num_workers > 0`` the training set is preloaded (``train_ds.preload()``, when it
    has one) before the DataLoader forks its workers. Under ``torchrun`` only rank 0 keeps
    ``history``; every rank returns the same best epoch and MCC.
    """
    emit = callback or (lambda event: None)
    out_dir = Path(out_dir)
    if len(train_ds) == 0:
        raise ValueError("no training samples")
    if len(val_ds) == 0:
        raise ValueError("no validation samples: the best model is chosen by validation MCC")
    rank, world = distributed_context()
    device = resolve_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    comm_device = device if device.type == "cuda" else torch.device("cpu")  # nccl needs CUDA tensors
    seed_everything(cfg.seed + rank)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)

    student.to(device)
    loss.to(device)
    if teacher is not None:
        teacher.to(device)
    step_module: nn.Module = _TrainStep(student, loss)
    params = [p for p in step_module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = torch.utils.data.distributed.DistributedSampler(
        train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed) if world > 1 else None
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.num_workers > 0 and hasattr(train_ds, "preload"):
        train_ds.preload()  # decode once here; forked workers share the images
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=cfg.num_workers, drop_last=len(train_ds) > cfg.batch_size * world,
                        generator=generator)
    steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    total_steps = steps * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps)

    start_epoch, best_mcc, best_epoch, history = 0, -2.0, -1, []
    last_path = out_dir / "last.pt"
    if resume and last_path.exists():
        try:
            state = torch.load(last_path, map_location="cpu", weights_only=False)
            unwrap(student).load_state_dict(state["student"])
            loss.load_state_dict(state["loss"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
        except Exception as exc:  # another model, loss or a damaged file
            raise ValueError(
                f"{last_path} does not continue this run ({type(exc).__name__}: {exc}); start afresh "
                f"(resume=False, --no-resume) or use another output folder") from exc
        start_epoch, best_mcc, best_epoch = state["epoch"] + 1, state["best_mcc"], state["best_epoch"]
        history = state["history"]
        torch.set_rng_state(state["torch_rng"])
        emit({"event": "resumed", "epoch": start_epoch})

    t0 = time.perf_counter()
    last_epoch = start_epoch - 1  # the last epoch completed, by this call or an earlier one
    stopped_early = (start_epoch < cfg.epochs and best_epoch >= 0
                     and _should_stop(last_epoch, best_epoch, cfg.patience))
    for epoch in range(start_epoch, cfg.epochs if not stopped_early else start_epoch):
        step_module.train()
        if teacher is not None:
            teacher.eval()
        if sampler is not None:
            sampler.set_epoch(epoch)
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        emit({"event": "epoch_start", "epoch": epoch, "epochs": cfg.epochs, "steps": steps})
        running, seen = 0.0, 0
        for i, batch in enumerate(itertools.islice(loader, steps)):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(epoch * steps + i, total_steps, warmup, cfg.lr)
            x = batch["image"].to(device, non_blocking=True)
            y = batch["label"].to(device, non_blocking=True)
            targets = None
            if teacher is not None:
                with torch.no_grad():
                    targets = teacher_targets(teacher, cache, x, list(batch["key"]), device)
            parts = step_module(x, y, targets)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            running += parts["loss"].item() * len(y)
            seen += len(y)
            emit({"event": "step", "epoch": epoch, "step": i, "steps": steps,
                  "loss": {k: round(v.item(), 5) for k, v in parts.items()}})

        if world > 1:
            _sync_buffers(step_module.module)
            totals = torch.tensor([running, float(seen)], dtype=torch.float64, device=comm_device)
            dist.all_reduce(totals)  # the train loss over every rank's shard
            running, seen = float(totals[0]), int(totals[1])
        decision = torch.zeros(3, dtype=torch.float64, device=comm_device)  # stop, best_mcc, best_epoch
        if rank == 0:
            report = evaluate(student, val_ds, device=device)
            mcc = report.mcc
            improved = mcc > best_mcc
            if improved:
                best_mcc, best_epoch = mcc, epoch
                save_checkpoint(out_dir / "best.pt", student, info={
                    **(info or {}), "epoch": epoch, "val": report.to_dict()})
            history.append({"epoch": epoch, "train_loss": running / max(1, seen), "val": report.to_dict()})
            atomic_torch_save({
                "student": unwrap(student).state_dict(), "loss": loss.state_dict(),
                "optimizer": optimizer.state_dict(), "epoch": epoch, "best_mcc": best_mcc,
                "best_epoch": best_epoch, "history": history, "config": asdict(cfg),
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            }, last_path)
            emit({"event": "epoch_end", "epoch": epoch, "train_loss": running / max(1, seen),
                  "val": report.to_dict(), "best_mcc": best_mcc, "improved": improved})
            decision[0] = float(_should_stop(epoch, best_epoch, cfg.patience))
            decision[1], decision[2] = best_mcc, best_epoch
        if world > 1:
            dist.broadcast(decision, src=0)
            best_mcc, best_epoch = float(decision[1]), int(decision[2])
        last_epoch = epoch
        if decision[0].item():
            stopped_early = epoch + 1 < cfg.epochs
            break

    result = FitResult(best_mcc=best_mcc, best_epoch=best_epoch, epochs_run=last_epoch + 1,
                       stopped_early=stopped_early, seconds=time.perf_counter() - t0, history=history)
    emit({"event": "done", "best_epoch": best_epoch, "best_mcc": best_mcc, "stopped_early": stopped_early})
    if world > 1:
        dist.barrier()
    return result
