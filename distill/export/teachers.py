"""The teacher ensemble as one model package, so the app can ask the teachers without PyTorch.

The app ranks flagged frames by how much the student and its teachers disagree, per tile
(``inspector/review/teacher_scorer.py``). It must not import torch, so the ensemble ships as an
ordinary FP32 ``.crackpkg`` of the ONNX contract (``docs/design/edge-models.md``): uint8 NHWC
``image`` in, ``logits``, ``probs`` and ``cam`` out, checked and loaded like a student.

The graph computes what :class:`~distill.models.ensemble.TeacherEnsemble` computes, the way
distillation uses it (its default, and the config's, is the mean of the members' logits;
``"probs"`` is supported too): ``logits`` are the ensemble's (for ``"probs"`` the
log of the mean probability, as in the ensemble), ``probs`` their softmax.
Every member normalises its own input, folded into the graph as in
:class:`~distill.export.graph.EdgeGraph`; the members must share one input size (the ensemble would
otherwise resize with an antialiasing filter that ONNX opset 17 lacks).

``cam`` is the exact Grad-CAM of the ensemble's logit with respect to the members' last
feature maps stacked as one layer (``features``: N×ΣK×h×w). With logit averaging the
gradient with respect to member m's map is 1/M of the member's own, so the CAM is
``ReLU(mean_m(Σ_k α^m_ck A^m_k))``: the mean of the members' un-ReLU'd Grad-CAMs. With
probability averaging ``∂z_c/∂y^m_j = (1/M) · p^m_c/p̄_c · (δ_cj − p^m_j)`` (in log space, so
a confident member cannot divide by an underflowed p̄). Members whose map has another grid
are resized (bilinear) to the largest.

:func:`build_teacher_package` exports, checks (ONNX Runtime against the PyTorch ensemble,
:func:`distill.export.graph._check`), evaluates on every evaluation set and writes the package.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill.models.checkpoint import atomic_write
from distill.data.samples import Sample
from distill.models.ensemble import TeacherEnsemble
from distill.export.graph import DEFAULT_OPSET, EdgeGraph, ExportError, ExportReport, _as_image_batch, _check, _to_onnx
from distill.models.registry import ModelMeta

DEFAULT_NAME = "crack-teachers"
CHECK_IMAGES = 16


class _EnsembleModel(nn.Module):
    """The ensemble as the export helpers read ``graph.model``: ``meta`` and ``forward(x01)``
    (the float path the export check compares the folded uint8 graph with)."""

    def __init__(self, ensemble: TeacherEnsemble, meta: ModelMeta):
        super().__init__()
        self.ensemble = ensemble
        self.meta = meta

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.ensemble(x01)


def ensemble_meta(ensemble: TeacherEnsemble) -> ModelMeta:
    """One ModelMeta for the whole ensemble; ExportError if the members cannot share one input."""
    metas = [m.meta for m in ensemble.members]
    sizes = sorted({m.input_size for m in metas})
    if len(sizes) != 1:
        raise ExportError(f"the teachers take different input sizes {sizes}: the ensemble resizes with an "
                          f"antialiasing filter ONNX opset {DEFAULT_OPSET} cannot express; export teachers of "
                          f"one input size")
    norms = {(tuple(m.mean), tuple(m.std)) for m in metas}
    if len(norms) != 1:
        # Each member's own normalisation is folded into the graph, so this would run correctly,
        # but the manifest's preprocessing field holds one mean/std and must not lie.
        raise ExportError(f"the teachers normalise differently {sorted(norms)}: a package states one mean/std")
    (mean, std), = norms
    arch = "ensemble:" + "+".join(m.arch for m in metas)
    return ModelMeta(arch=arch, label_names=tuple(ensemble.label_names), input_size=sizes[0], mean=mean, std=std,
                     init="ensemble", extra={"average": ensemble.average})


class EnsembleGraph(nn.Module):
    """uint8 NHWC image -> (logits, probs, cam, features) of the whole ensemble (module doc)."""

    def __init__(self, ensemble: TeacherEnsemble):
        super().__init__()
        meta = ensemble_meta(ensemble)
        self.members = nn.ModuleList([EdgeGraph(m) for m in ensemble.members])
        self.model = _EnsembleModel(ensemble, meta)
        self.average = ensemble.average
        self.size = int(meta.input_size)
        self.num_classes = meta.num_classes
        self.h = max(g.h for g in self.members)
        self.w = max(g.w for g in self.members)
        self.k = sum(g.k for g in self.members)
        self.static_alpha = self.average == "logits" and all(g.static_alpha for g in self.members)
        self.eval()

    def _on_grid(self, fmap: torch.Tensor) -> torch.Tensor:
        if tuple(fmap.shape[-2:]) == (self.h, self.w):
            return fmap
        return F.interpolate(fmap, size=(self.h, self.w), mode="bilinear", align_corners=False)

    def _alpha(self, member: EdgeGraph, emb: torch.Tensor, member_logits: torch.Tensor,
               logits: torch.Tensor) -> torch.Tensor:
        """∂(ensemble logit c)/∂(member map) pooled, C×K or N×C×K (see the module doc)."""
        a = member.alpha(emb)
        m = float(len(self.members))
        if self.average == "logits":
            return a / m
        log_p = F.log_softmax(member_logits, dim=1)                           # N×C
        ratio = torch.exp(log_p - logits)                                     # p^m_c / p̄_c
        eye = torch.eye(self.num_classes, dtype=logits.dtype)
        jac = ratio.unsqueeze(2) * (eye - torch.exp(log_p).unsqueeze(1)) / m  # N×C×C
        return torch.matmul(jac, a)                                           # N×C×K

    def forward(self, image: torch.Tensor):
        x = image.permute(0, 3, 1, 2).to(torch.float32)
        fmaps, embs, member_logits = [], [], []
        for g in self.members:
            fmap = g.model.spec.features(g.model.net, x * g.scale + g.shift)
            emb = g.model.embed(fmap)
            fmaps.append(fmap)
            embs.append(emb)
            member_logits.append(g.model.head(emb))
        stacked = torch.stack(member_logits)
        if self.average == "logits":
            logits = stacked.mean(0)
        else:
            logits = torch.logsumexp(F.log_softmax(stacked, dim=-1), dim=0) - math.log(len(self.members))
        probs = torch.softmax(logits, dim=1)
        features = torch.cat([self._on_grid(f) for f in fmaps], dim=1)
        alphas = [self._alpha(g, e, y, logits) for g, e, y in zip(self.members, embs, member_logits)]
        if self.static_alpha:
            cam = F.conv2d(features, torch.cat(alphas, dim=1)[:, :, None, None])
        else:  # per member, on its slice of `features` (alphas per image, or some constant)
            cam, start = 0.0, 0
            for g, a in zip(self.members, alphas):
                part = features[:, start:start + g.k]
                start += g.k
                if a.dim() == 2:
                    cam = cam + F.conv2d(part, a[:, :, None, None])
                else:
                    flat = torch.matmul(a, part.reshape(-1, g.k, self.h * self.w))
                    cam = cam + flat.reshape(-1, self.num_classes, self.h, self.w)
        return logits, probs, torch.relu(cam), features


def export_ensemble_onnx(ensemble: TeacherEnsemble, path, *, check_images: np.ndarray,
                         opset: int = DEFAULT_OPSET) -> ExportReport:
    """Write the ensemble's graph to ``path`` (atomically) after the same self-check as a
    student's export (:func:`distill.export.graph.export_onnx`); ExportError with the numbers if ONNX
    Runtime disagrees with the PyTorch ensemble."""
    import onnx

    graph = EnsembleGraph(ensemble)
    images = _as_image_batch(check_images, graph.size, "check_images")
    proto = _to_onnx(graph, opset)
    onnx.checker.check_model(proto, full_check=True)
    meta = graph.model.meta
    report = ExportReport(
        path=str(path), arch=meta.arch, input_size=graph.size, label_names=list(meta.label_names), opset=int(opset),
        feature_shape=[graph.k, graph.h, graph.w], cam_method="linear" if graph.static_alpha else "analytic-mlp",
        checked=True,
    )
    data = proto.SerializeToString()
    _check(graph, data, images, report)
    atomic_write(Path(path), lambda f: f.write(data))
    return report


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _member_info(path: Path, member) -> dict:
    from distill.models.checkpoint import checkpoint_info

    val = checkpoint_info(path).get("val", {})
    return {"arch": member.meta.arch, "checkpoint": path.name, "sha256": _sha256(path),
            "val_mcc": val.get("mcc")}


def build_teacher_package(checkpoints: Sequence[str | Path], out_dir, *, samples: list[Sample],
                          eval_sets: dict[str, list[Sample]], training_data: list[dict],
                          name: str = DEFAULT_NAME, version: str = "1.0.0", average: str = "logits",
                          tiling: dict | None = None, seed: int = 0) -> dict:
    """Write ``NAME-VERSION.crackpkg`` (FP32) of the ensemble of ``checkpoints``.

    ``samples``: real training patches; a few, picked with ``seed``, check the export and
    become the package's reference images. ``eval_sets``: name -> samples, every metric
    recorded in the manifest. ``tiling`` ({"size", "overlap"}): the student's, since the
    teachers score the student's tiles. Returns a report dict (export check, metrics, the
    package's file name), also written as ``NAME-VERSION.report.json`` beside it.
    """
    from distill.models.checkpoint import load_classifier
    from distill.export import reference as refsel
    from distill.export.package import _scalar_metrics, evaluate_onnx, onnx_session, reference_pool, reference_spec, run_onnx, \
        uint8_patches
    from inspector.edge.manifest import utc_now_iso
    from inspector.edge.package import write_package

    if not samples:
        raise ValueError("no samples to check the export on and to take the reference images from")
    paths = [Path(p) for p in checkpoints]
    members = [load_classifier(p) for p in paths]
    ensemble = TeacherEnsemble(members, average=average)
    meta = ensemble_meta(ensemble)
    size = meta.input_size
    rng = np.random.default_rng(seed)
    picked = [samples[i] for i in sorted(rng.choice(len(samples), min(CHECK_IMAGES, len(samples)), replace=False))]
    images = uint8_patches(picked, size)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f".{name}-{version}.onnx"
    try:
        export = export_ensemble_onnx(ensemble, onnx_path, check_images=images)
        session = onnx_session(onnx_path)
        metrics = {k: evaluate_onnx(session, v, size, meta.label_names) for k, v in eval_sets.items()}
        pool = reference_pool(samples, size, seed)
        crack = list(meta.label_names).index("crack") if "crack" in meta.label_names else -1
        reference_images = pool[refsel.select(run_onnx(session, pool)["probs"][:, crack])]
        ref = run_onnx(session, reference_images, outputs=("probs", "cam"))
        manifest = {
            "format": "crack-model-package/1", "name": name, "version": version, "parent_version": None,
            "architecture": meta.arch,
            "input": {"size": size, "layout": "NHWC", "dtype": "uint8", "color": "RGB"},
            "preprocessing": {"mean": list(meta.mean), "std": list(meta.std), "folded": True},
            "labels": list(meta.label_names), "outputs": ["logits", "probs", "cam"],
            "metrics": {k: _scalar_metrics(v) for k, v in metrics.items()},
            "training_data": training_data, "model_sha256": "0" * 64, "created": utc_now_iso(),
            "quantization": {"type": "fp32", "per_channel": False, "calibration": None, "float_nodes": []},
            "reference": reference_spec("fp32", session),
            "signature": None,
            "extra": {"ensemble": {"average": average, "members": [_member_info(p, m) for p, m in zip(paths, members)],
                                   "cam": "Grad-CAM of the ensemble logit over the members' stacked feature maps"}},
        }
        if tiling is not None:
            manifest["tiling"] = dict(tiling)
        path = write_package(out_dir / f"{name}-{version}.crackpkg", manifest, onnx_path.read_bytes(),
                             {"image": reference_images, **ref})
    finally:
        onnx_path.unlink(missing_ok=True)
    export.path = f"{path.name}/model.onnx"  # the temporary file is gone; the report travels beside the package
    report = {"package": path.name, "export": export.to_dict(), "metrics": metrics,
              "members": manifest["extra"]["ensemble"]["members"], "average": average}
    (out_dir / f"{name}-{version}.report.json").write_text(json.dumps(report, indent=2, default=str))
    return report
