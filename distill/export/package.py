"""From a trained checkpoint to model packages the laptop and the Jetson run.

``build_packages`` exports the student to the ONNX contract (heat-map inside the graph),
quantizes it to INT8 on real training images, evaluates both through onnxruntime on every
evaluation set, compares INT8 with its float parent, and writes two ``.crackpkg`` files
(FP32 parent, INT8 child) with complete manifests and reference outputs.

``evaluate_package`` scores a package exactly as ``distill eval`` scores a checkpoint: same
samples, same resizing (``PatchDataset``), but fed as uint8 to onnxruntime.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from distill.data.samples import Sample

CHECK_IMAGES = 16
REFERENCE_POOL = 1024  # real patches the reference images are chosen from


def uint8_patches(samples: list[Sample], size: int) -> np.ndarray:
    """N×S×S×3 uint8, resized exactly as evaluation resizes them for PyTorch."""
    from distill.data.torch_dataset import PatchDataset

    ds = PatchDataset(samples, size)
    if not len(ds):
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([ds.uint8(i) for i in range(len(ds))])


def onnx_session(model_bytes_or_path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    src = str(model_bytes_or_path) if isinstance(model_bytes_or_path, Path) else model_bytes_or_path
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def run_onnx(session, images: np.ndarray, outputs=("probs",), batch: int = 64) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {name: [] for name in outputs}
    for start in range(0, len(images), batch):
        for name, value in zip(outputs, session.run(list(outputs), {"image": images[start:start + batch]})):
            parts[name].append(value)
    return {name: np.concatenate(v) for name, v in parts.items()}


def evaluate_onnx(session, samples: list[Sample], size: int, label_names, images: np.ndarray | None = None) -> dict:
    """Every metric of an ONNX session on ``samples`` (``images``: their uint8 patches, if already made)."""
    from distill.metrics import evaluate_predictions

    images = uint8_patches(samples, size) if images is None else images
    probs = run_onnx(session, images)["probs"]
    labels = np.array([s.label for s in samples])
    return evaluate_predictions(labels, probs, surfaces=[s.surface for s in samples],
                                label_names=tuple(label_names)).to_dict()


def evaluate_package(package, samples: list[Sample]) -> dict:
    """``package``: a loaded ``ModelPackage`` or the path of a ``.crackpkg``."""
    from inspector.edge.package import load_package

    pkg = load_package(package) if isinstance(package, (str, Path)) else package
    m = pkg.manifest
    return evaluate_onnx(onnx_session(pkg.onnx_bytes), samples, m.input.size, m.labels)


def build_packages(checkpoint, out_dir, *, name: str, version: str, calibration: list[Sample],
                   eval_sets: dict[str, list[Sample]], training_data: list[dict],
                   parent_version: str | None = None, int8: bool = True, calibration_count: int = 256,
                   method: str = "minmax", seed: int = 0, tiling: dict | None = None,
                   extra: dict | None = None, on_step=None) -> dict:
    """Write ``NAME-VERSION.crackpkg`` (FP32) and ``NAME-VERSION-int8.crackpkg`` (see the module docstring).

    Returns a report dict (paths, metrics per set and format, quantization comparison), also
    written as ``NAME-VERSION.report.json``. ``tiling`` ({"size", "overlap"}): how the app
    should tile frames for this model, written into both manifests; default: the tiling the
    checkpoint carries (``meta.extra["tiling"]``, the package it was fine-tuned from). A model
    fine-tuned from a package must keep its tiling: without one the engine cuts 96 px tiles
    with 25 % overlap (63 per 640×480 frame instead of 12 of 160 px). ``extra``: the
    manifests' free-form ``extra`` object (e.g. the lineage of ``distill update``). ``on_step``:
    called with the name of each step before it starts (``distill update`` checks for a cancel there).
    """
    from distill.models.checkpoint import load_classifier
    from distill.export.graph import export_onnx

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_classifier(checkpoint)
    if tiling is None:
        tiling = model.meta.extra.get("tiling")
    meta = {"architecture": model.meta.arch, "size": model.meta.input_size, "labels": list(model.meta.label_names),
            "mean": list(model.meta.mean), "std": list(model.meta.std)}
    work = out_dir / f".{name}-{version}.build"
    work.mkdir(exist_ok=True)
    fp32_path = work / "fp32.onnx"
    calib = _calibration_images(calibration, meta["size"], calibration_count, seed)
    (on_step or (lambda step: None))("export")
    export = export_onnx(model, fp32_path, check_images=calib[:CHECK_IMAGES])
    report = package_onnx(fp32_path, out_dir, meta=meta, name=name, version=version, calibration=calibration,
                          eval_sets=eval_sets, training_data=training_data, parent_version=parent_version,
                          int8=int8, calibration_count=calibration_count, method=method, seed=seed, tiling=tiling,
                          extra=extra, on_step=on_step)
    report = {"export": export.to_dict(), **report}
    (out_dir / f"{name}-{version}.report.json").write_text(json.dumps(report, indent=2, default=str))
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    return report


def _calibration_images(calibration: list[Sample], size: int, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picked = [calibration[i] for i in sorted(rng.choice(len(calibration), min(count, len(calibration)),
                                                        replace=False))]
    return uint8_patches(picked, size)


def reference_pool(calibration: list[Sample], size: int, seed: int, count: int = REFERENCE_POOL) -> np.ndarray:
    """Real patches the reference images are chosen from (:mod:`distill.export.reference`)."""
    return _calibration_images(calibration, size, count, seed + 1)


def package_onnx(fp32_path: Path, out_dir, *, meta: dict, name: str, version: str, calibration: list[Sample],
                 eval_sets: dict[str, list[Sample]], training_data: list[dict], parent_version: str | None = None,
                 int8: bool = True, calibration_count: int = 256, method: str = "minmax", seed: int = 0,
                 tiling: dict | None = None, extra: dict | None = None, on_step=None,
                 reduce_range: bool = True) -> dict:
    """Quantize, evaluate and package an exported FP32 graph (``fp32_path``): the second half of
    :func:`build_packages`, also what re-packages a shipped FP32 model without retraining.

    ``meta``: ``architecture``, ``size``, ``labels``, ``mean``, ``std``. The reference images
    are chosen by the FP32 model from real patches of ``calibration`` (:func:`distill.export.reference.select`),
    and each package's reference outputs are its own, computed here with the provenance recorded.
    """
    from distill.export import reference as refsel
    from inspector.edge.manifest import utc_now_iso
    from inspector.edge.package import write_package

    fp32_path, out_dir = Path(fp32_path), Path(out_dir)
    size, labels = meta["size"], list(meta["labels"])
    step = on_step or (lambda name: None)
    calib = _calibration_images(calibration, size, calibration_count, seed)
    variants = {"fp32": (fp32_path, {"type": "fp32", "per_channel": False, "calibration": None,
                                     "float_nodes": []})}
    report: dict = {"packages": {}, "metrics": {}, "tiling": tiling}
    eval_images = {k: uint8_patches(v, size) for k, v in eval_sets.items()}  # decoded once for every variant
    if int8:
        from distill.export.quantize import compare_models, quantize_int8

        int8_path = fp32_path.with_name(f"{fp32_path.stem}.int8.onnx")
        step("quantize")
        info = quantize_int8(fp32_path, int8_path, calib, method=method, reduce_range=reduce_range,
                             calibration_note=(f"{len(calib)} real training patches "
                                               f"({', '.join(sorted({d['name'] for d in training_data}))}), "
                                               f"{method} ranges"))
        variants["int8"] = (int8_path, info.manifest_entry())
        held_out = next(iter(eval_sets))
        step("compare")
        comparison = compare_models(fp32_path, int8_path, eval_images[held_out],
                                    [s.label for s in eval_sets[held_out]])
        report["quantization"] = comparison.to_dict()

    pool = reference_pool(calibration, size, seed)
    crack = labels.index("crack") if "crack" in labels else len(labels) - 1
    pool_probs = run_onnx(onnx_session(fp32_path), pool)["probs"][:, crack]
    reference_images = pool[refsel.select(pool_probs)]
    report["reference"] = {"n_images": int(len(reference_images)), "pool": int(len(pool)),
                           "crack_probs_fp32": [round(float(p), 4) for p in
                                                pool_probs[refsel.select(pool_probs)]]}
    for variant, (onnx_path, quant) in variants.items():
        step(f"evaluate {variant}")
        session = onnx_session(onnx_path)
        metrics = {set_name: evaluate_onnx(session, samples, size, labels, eval_images[set_name])
                   for set_name, samples in eval_sets.items()}
        report["metrics"][variant] = metrics
        ref = run_onnx(session, reference_images, outputs=("probs", "cam"))
        pkg_version = version if variant == "fp32" else f"{version}-int8"
        manifest = {
            "format": "crack-model-package/1", "name": name, "version": pkg_version,
            "parent_version": parent_version if variant == "fp32" else version,
            "architecture": meta["architecture"],
            "input": {"size": size, "layout": "NHWC", "dtype": "uint8", "color": "RGB"},
            "preprocessing": {"mean": list(meta["mean"]), "std": list(meta["std"]), "folded": True},
            "labels": labels, "outputs": ["logits", "probs", "cam"],
            "metrics": {k: _scalar_metrics(v) for k, v in metrics.items()},
            "training_data": training_data, "model_sha256": "0" * 64, "created": utc_now_iso(),
            "quantization": quant,
            "reference": reference_spec(quant["type"], session),
            "signature": None,
        }
        if tiling is not None:
            manifest["tiling"] = dict(tiling)
        if extra:
            manifest["extra"] = dict(extra)
        path = write_package(out_dir / f"{name}-{pkg_version}.crackpkg", manifest, onnx_path.read_bytes(),
                             {"image": reference_images, **ref})
        report["packages"][variant] = str(path)
    return report


def reference_spec(quantization_type: str, session) -> dict:
    """The manifest's ``reference``: the member, format 1's ``atol`` (the CPU rule's bound on
    probabilities, for agents that still read it) and where the outputs were computed."""
    from distill.export.reference import provenance
    from inspector.edge.numerics import rule_for

    return {"file": "reference.npz", "atol": rule_for(quantization_type).probs_atol,
            "provenance": provenance(session)}


def _scalar_metrics(metrics: dict) -> dict:
    """The manifest keeps the headline numbers; the full metrics go to the report file."""
    return {k: metrics[k] for k in ("mcc", "accuracy", "precision", "recall", "f1", "roc_auc", "n") if k in metrics}
