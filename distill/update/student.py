"""Stages ``teacher_outputs`` and ``distil``: the student learns the site from the ensemble.

The student starts from the base package's own weights and trains on every site frame (the
adapt part with its labels, the unlabelled frames with none) plus a replay of the base data
(with its labels). The loss (:class:`SiteKDLoss`) is Hinton KD on every sample plus
cross-entropy on the labelled ones:

    loss = α · T² · KL(softmax(t/T) ‖ softmax(s/T))  (all samples)
         + (1 − α) · CE(s, y)                         (labelled samples only)

With ``lwf`` / ``lwf_site`` the teacher's soft targets ``t`` are mixed with the base student's own
(``anchor.AnchoredTargets``); after training, ``weight_mix`` may pull the weights back towards
the base's (``anchor.choose_mix``, in ``training.py``).

``teacher_outputs`` runs the ensemble before training and stores the logits in the teacher
cache (``distill/training/cache.py``, in the work folder): ``distil`` then never runs a teacher, and a
re-run finds every output cached. Two ways (``teacher_views``):

* ``"once"`` (default): one output per sample, on its un-augmented view; the student's
  augmented views of that sample all learn that target (flips, ±30° rotation, zoom, contrast
  and noise do not change whether a patch holds a crack). Teacher cost: one pass.
* ``"per_epoch"``: the exact augmented view the student sees in each epoch (``PatchDataset``
  draws a sample's augmentation from (seed, epoch, content), so the views are known in
  advance): "function matching", at ``epochs`` times the teacher cost.

The last epoch's weights are the candidate (no epoch is picked on the site-validation part,
which the gate uses).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.training.batchnorm import freeze_batch_norms
from distill.training.losses import StepOutputs

TEACHER_BATCH = 64


class SiteKDLoss(nn.Module):
    """Hinton et al. (2015) KD over every sample, cross-entropy over the labelled ones (label ≥ 0).

    Same calling convention as ``distill/training/losses.py``; returns ``{"loss", "kd", "ce"}`` with
    ``kd`` including T² and ``ce`` 0 for a batch without labels. ``alpha = 0`` with no teacher
    logits is plain cross-entropy on the labelled samples (the "finetune" recipe).
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.5):
        super().__init__()
        if not temperature > 0 or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"temperature must be > 0 and alpha in [0, 1], got {temperature}, {alpha}")
        self.temperature, self.alpha = float(temperature), float(alpha)

    def forward(self, out: StepOutputs) -> dict[str, Tensor]:
        s, y = out.student_logits, out.labels
        labelled = y >= 0
        ce = F.cross_entropy(s[labelled], y[labelled]) if labelled.any() else s.sum() * 0.0
        if out.teacher_logits is None:
            if self.alpha > 0:
                raise ValueError("SiteKDLoss with alpha > 0 needs teacher_logits")
            return {"loss": ce, "kd": ce.detach() * 0.0, "ce": ce}
        t = self.temperature
        kd = F.kl_div(F.log_softmax(s / t, dim=1), F.log_softmax(out.teacher_logits.detach().to(s.dtype) / t, dim=1),
                      reduction="batchmean", log_target=True) * (t * t)
        return {"loss": self.alpha * kd + (1.0 - self.alpha) * ce, "kd": kd, "ce": ce}

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"


@dataclass
class StudentPlan:
    epochs: int
    lr: float
    alpha: float
    temperature: float
    batch_size: int
    seed: int
    max_steps: int | None = None
    freeze_bn: bool = False


def train_dataset(samples: list, size: int, seed: int, teacher_views: str = "once"):
    from distill.data.augment import AugmentConfig
    from distill.data.torch_dataset import PatchDataset

    ds = PatchDataset(samples, size, augment=AugmentConfig(), seed=seed)
    return ds if teacher_views == "per_epoch" else SampleKeyed(ds)


class SampleKeyed(torch.utils.data.Dataset):
    """Augmented images whose cache key is the un-augmented view's: one teacher output per sample."""

    def __init__(self, ds):
        from distill.data.augment import IDENTITY

        self.ds, self.samples, self.input_size = ds, ds.samples, ds.input_size
        self._suffix = f":{IDENTITY.key()}:{ds.input_size}"

    def __len__(self) -> int:
        return len(self.ds)

    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)

    def key(self, i: int) -> str:
        return self.samples[i].sha256 + self._suffix

    def __getitem__(self, i: int) -> dict:
        return {**self.ds[i], "key": self.key(i)}

    def plain(self):
        """The same samples without augmentation: the views the teachers score."""
        from distill.data.torch_dataset import PatchDataset

        return PatchDataset(self.samples, self.input_size)


def open_cache(path: Path, teacher):
    """The teacher cache of ``teacher`` (the ensemble, or :class:`~distill.update.anchor.AnchoredTargets`)."""
    from distill.training.cache import TeacherCache

    return TeacherCache(path, teacher.fingerprint(), store_features=False)


def precompute_teacher_outputs(teacher, cache, dataset, epochs: int, reporter) -> dict:
    """Teacher logits for every view the student's ``dataset`` will ask for; returns counts.
    ``teacher`` is the ensemble or, with learning without forgetting, the anchored targets."""
    anchored = hasattr(teacher, "logits")
    if isinstance(dataset, SampleKeyed):
        key_of, dataset, epochs = (lambda ds, i, keyed=dataset: keyed.key(i)), dataset.plain(), 1
    else:
        key_of = _key
    n = len(dataset)
    total, done, computed = n * epochs, 0, 0
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for start in range(0, n, TEACHER_BATCH):
            idx = range(start, min(n, start + TEACHER_BATCH))
            keys = [key_of(dataset, i) for i in idx]
            found = cache.get_many(keys)
            missing = [i for i, k in zip(idx, keys) if k not in found]
            if missing:
                images = torch.stack([dataset[i]["image"] for i in missing])
                with torch.no_grad():
                    if anchored:
                        logits = teacher.logits(images, [dataset.samples[i].sha256 for i in missing])
                    else:
                        logits = teacher.forward_all(images)["logits"].float().numpy()
                cache.put_many({key_of(dataset, i): {"logits": logits[j]} for j, i in enumerate(missing)})
                computed += len(missing)
            done += len(idx)
            reporter.progress(done, total)
    dataset.set_epoch(0)
    return {"views": total, "computed": computed, "cached": total - computed}


def _key(dataset, i: int) -> str:
    s = dataset.samples[i]
    return f"{s.sha256}:{dataset.params(i).key()}:{dataset.input_size}"


def distil(checkpoint: Path, train_ds, val_ds, plan: StudentPlan, work: Path, reporter, *,
           teacher=None, cache=None, input_size: int | None = None):
    """The student from ``checkpoint`` trained on ``train_ds``; returns the model (last epoch).
    ``teacher`` is the ensemble or its anchored targets (None: cross-entropy alone).
    ``input_size`` (default the checkpoint's) is the side the trained student takes: the network
    is convolutional up to a global pooling, so the same weights start at any size."""
    from distill.models.checkpoint import load_classifier
    from distill.training.loop import TrainConfig, fit

    model = load_classifier(checkpoint).float()
    if input_size is not None:
        model.meta.input_size = int(input_size)
    if plan.freeze_bn:   # the batch norms keep the base's statistics while the weights train
        freeze_batch_norms(model)
    cfg = TrainConfig(epochs=plan.epochs, batch_size=plan.batch_size, lr=plan.lr, weight_decay=1e-4,
                      warmup_epochs=0.0, patience=plan.epochs, seed=plan.seed, num_workers=0, device="cpu",
                      max_steps_per_epoch=plan.max_steps)
    loss = SiteKDLoss(plan.temperature, plan.alpha if teacher is not None else 0.0)
    fit(model, loss, train_ds, val_ds, work, cfg, teacher=teacher, cache=cache,
        callback=reporter.fit_callback("student"))
    model.load_state_dict(torch.load(work / "last.pt", map_location="cpu", weights_only=False)["student"])
    return model.eval()
