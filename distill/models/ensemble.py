"""A frozen teacher ensemble that averages its members.

As in the source material (ResNet-152 + DenseNet-201 + EfficientNet-B4, outputs averaged),
members may differ in architecture and input size: each member normalises and resizes the
[0, 1] batch for itself, so the ensemble owns its preprocessing like any single model.

Averaging ``"logits"`` keeps the members' relative confidence; averaging ``"probs"`` is
the classic ensemble and is returned as log-probabilities, which are valid logits for a
temperature softmax (softmax(log p) = p), so KD code needs no special case.
"""
from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.checkpoint import load_classifier
from distill.models.errors import ModelError
from distill.models.registry import Classifier


class TeacherEnsemble(nn.Module):
    def __init__(self, members: list[Classifier], average: str = "logits", hint_member: int = 0):
        super().__init__()
        if not members:
            raise ModelError("a teacher ensemble needs at least one member")
        if average not in ("logits", "probs"):
            raise ValueError(f"average must be 'logits' or 'probs', not {average!r}")
        labels = {tuple(m.meta.label_names) for m in members}
        if len(labels) != 1:
            raise ModelError(f"teachers disagree on label names or their order: {sorted(labels)}")
        if not 0 <= hint_member < len(members):
            raise ValueError(f"hint_member {hint_member} is not one of {len(members)} members")
        self.members = nn.ModuleList(members)
        self.average = average
        self.hint_member = hint_member
        self.label_names = members[0].meta.label_names
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "TeacherEnsemble":
        # Frozen: batch-norm statistics and dropout never switch to training behaviour.
        return super().train(False)

    @classmethod
    def from_checkpoints(cls, paths, average: str = "logits", hint_member: int = 0) -> "TeacherEnsemble":
        return cls([load_classifier(p) for p in paths], average=average, hint_member=hint_member)

    def fingerprint(self) -> str:
        """Digest of every member's weights and metadata; part of every teacher-cache key.

        The hint member is part of it, since the cache also stores that member's feature map
        (member 0 adds nothing, so digests from before it was included stay valid).
        """
        h = hashlib.sha256(self.average.encode())
        if self.hint_member:
            h.update(f":hint={self.hint_member}".encode())
        for m in self.members:
            h.update(repr(sorted(m.meta.to_dict().items())).encode())
            for k, v in m.state_dict().items():
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @torch.no_grad()
    def forward_all(self, x01: torch.Tensor) -> dict[str, torch.Tensor]:
        """Averaged logits, plus the hint member's feature map and embedding."""
        logits, out = [], {}
        for i, m in enumerate(self.members):
            size = m.meta.input_size
            x = x01 if tuple(x01.shape[-2:]) == (size, size) else F.interpolate(
                x01, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            if i == self.hint_member:
                o = m.forward_all(x)
                out["features"], out["embedding"] = o["features"], o["embedding"]
                logits.append(o["logits"])
            else:
                logits.append(m(x))
        stacked = torch.stack(logits)
        if self.average == "logits":
            out["logits"] = stacked.mean(0)
        else:
            # log(mean_i softmax_i), computed in log space: exact even where a confident member's
            # probabilities underflow, which matters once KD softens them with a temperature.
            out["logits"] = torch.logsumexp(F.log_softmax(stacked, dim=-1), dim=0) - math.log(len(logits))
        return out

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x01)["logits"]
