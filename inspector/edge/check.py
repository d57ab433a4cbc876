"""What a model package does on *this* machine: ``inspector --check-model``, and which variant to run.

:func:`check_report` loads a package (identity: hash and contract) and runs its reference images
along every numeric path this machine has -- onnxruntime's optimised kernels on each available
provider and the unfused QDQ path on the CPU -- each judged by its rule
(:mod:`inspector.edge.numerics`), beside where the references came from. A field failure is read
from it: which rule, which bound, by how much.

:func:`choose_variant` picks the package the app runs when the inspector gave none: the shipped
INT8 student, or its FP32 parent (``NAME-V.crackpkg`` beside ``NAME-V-int8.crackpkg``) when the
INT8 one is not faster here. Both are verified on this machine first; the faster is measured
on one frame's tile batch (a few runs each, about a second) and the answer is kept per
(packages, CPU ISA, onnxruntime, threads) in the user cache, so the next start does not measure
again. INT8 speed depends on the CPU's integer instructions: 2.5x FP32 with VNNI, 1.7x with
AVX2 only (model card), and a CPU without either could lose.

numpy + onnxruntime only (no Qt): the agent and the app both use it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inspector.edge import numerics
from inspector.fsio import write_atomic
from inspector.edge.contract import ReferenceCheckError, verify_reference_outputs
from inspector.edge.fields import PackageError
from inspector.edge.package import ModelPackage, load_package

log = logging.getLogger("inspector.edge.check")

TIMING_RUNS = 5
TILES = 12  # one 640×480 frame at the shipped 160 px tiling


def check_report(path: Path) -> tuple[bool, str]:
    """(passed on the default path, the printable report) for the package at ``path``."""
    import onnxruntime as ort

    try:
        pkg = load_package(path, verify_reference=False)
    except (PackageError, OSError) as exc:
        return False, f"{path}: refused before any run: {exc}"
    m = pkg.manifest
    prov = m.reference.provenance
    lines = [f"{path}",
             f"  model      {m.name} {m.version} ({m.quantization.type}), sha256 {m.model_sha256[:16]}…, "
             f"signed: {'yes, key ' + m.signature.key_id if m.signature else 'no'}",
             f"  references {len(pkg.reference['image'])} images, computed with "
             + (", ".join(f"{k} {v}" for k, v in prov.items()) if prov else "(no provenance: made before it was recorded)"),
             f"  this machine: CPU integer ISA {numerics.int8_isa()}, onnxruntime {ort.__version__}, "
             f"providers {', '.join(ort.get_available_providers())}",
             "",
             f"  {'numeric path':34s} {'rule':17s} {'verdicts':9s} {'max |Δp|':>9s} {'heat r':>9s} {'peak Δ':>8s}  result"]
    paths = [(p, numerics.OPTIMISED) for p in ort.get_available_providers()
             if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", numerics.CPU)]
    paths.append((numerics.CPU, numerics.UNFUSED))
    default_ok = None
    for provider, npath in paths:
        label = f"{provider.replace('ExecutionProvider', '')} {npath}"
        try:
            sess = numerics.session(pkg.onnx_bytes, npath, providers=[provider])
            probs, cam = sess.run(["probs", "cam"], {"image": np.ascontiguousarray(pkg.reference["image"])})
            v = verify_reference_outputs(m, pkg.reference, probs, cam, provider=provider)
            ok, why = True, "pass"
        except ReferenceCheckError as exc:
            v, ok = exc.verification, False
            why = "FAIL: " + "; ".join(numerics.failures(v.measured, v.rule))
        except Exception as exc:  # noqa: BLE001 - a provider that cannot run it is a result, not a crash
            lines.append(f"  {label:34s} cannot run it: {exc}")
            default_ok = False if default_ok is None else default_ok
            continue
        mm = v.measured
        lines.append(f"  {label:34s} {v.rule.name:17s} {mm.n_images - mm.verdict_mismatches:>3d}/{mm.n_images:<5d} "
                     f"{mm.probs_max_abs:9.2g} {mm.cam_corr:9.6f} {mm.cam_peak:8.2g}  {why}")
        if default_ok is None:
            default_ok = ok
    lines += ["", "  rules (inspector/edge/numerics.py, docs/design/edge-models.md):"]
    lines += [f"    {r.name}: verdicts equal, max |Δp| ≤ {r.probs_atol:g}, heat r ≥ {r.cam_corr_min:g}, "
              f"peak Δ ≤ {r.cam_peak_max:g}" for r in numerics.RULES.values()]
    return bool(default_ok), "\n".join(lines)


# --------------------------------------------------------------------------- INT8 or FP32 here


@dataclass(frozen=True)
class Choice:
    """The package to run and why (the HUD shows ``reason``)."""

    path: Path
    reason: str
    ms: dict[str, float]


def fp32_sibling(int8: Path) -> Path | None:
    """``NAME-V.crackpkg`` beside ``NAME-V-int8.crackpkg``, if it is there."""
    if not int8.name.endswith("-int8.crackpkg"):
        return None
    sibling = int8.with_name(int8.name[: -len("-int8.crackpkg")] + ".crackpkg")
    return sibling if sibling.is_file() else None


def _tile_ms(pkg: ModelPackage, threads: int) -> float:
    """Median ms of one frame's tile batch (real reference patches, repeated to :data:`TILES`)."""
    sess = numerics.session(pkg.onnx_bytes, threads=threads)
    images = np.ascontiguousarray(np.resize(pkg.reference["image"], (TILES, *pkg.reference["image"].shape[1:])))
    sess.run(["probs", "cam"], {"image": images})  # warm-up
    times = []
    for _ in range(TIMING_RUNS):
        t0 = time.perf_counter()
        sess.run(["probs", "cam"], {"image": images})
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def choose_variant(int8: Path, threads: int, cache_dir: Path | None = None) -> Choice:
    """The faster correct variant of the shipped student on this CPU (see the module doc).
    Without an FP32 sibling, or when the FP32 one fails its check, the INT8 package."""
    import onnxruntime as ort

    fp32 = fp32_sibling(int8)
    isa = numerics.int8_isa()
    if fp32 is None:
        return Choice(int8, f"INT8 on {isa} (no FP32 package beside it to compare)", {})
    # the key from the files' bytes alone: a remembered answer costs no package load at start-up
    key = f"{_file_sha(int8)[:16]}-{_file_sha(fp32)[:16]}-{isa}-{ort.__version__}-{threads}".replace(" ", "_")
    cached = _read_cache(cache_dir, key)
    if cached is not None:
        chosen = int8 if cached["choice"] == "int8" else fp32
        return Choice(chosen, cached["reason"], cached["ms"])
    try:
        b = load_package(fp32)  # verified here: an FP32 package this machine computes wrongly is no choice
    except PackageError as exc:
        return Choice(int8, f"INT8 on {isa} (the FP32 package fails here: {exc})", {})
    ms = {"int8": _tile_ms(load_package(int8, verify_reference=False), threads), "fp32": _tile_ms(b, threads)}
    ratio = ms["fp32"] / ms["int8"]
    if ratio >= 1.0:
        choice, reason = "int8", (f"INT8: {ratio:.1f}x faster than FP32 on {isa} "
                                  f"({ms['int8']:.0f} vs {ms['fp32']:.0f} ms per {TILES} tiles, measured here)")
    else:
        choice, reason = "fp32", (f"FP32: INT8 is {1 / ratio:.1f}x slower on {isa} "
                                  f"({ms['int8']:.0f} vs {ms['fp32']:.0f} ms per {TILES} tiles, measured here)")
    _write_cache(cache_dir, key, {"choice": choice, "reason": reason, "ms": ms})
    log.info("model variant: %s", reason)
    return Choice(int8 if choice == "int8" else fp32, reason, ms)


def _file_sha(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_cache(cache_dir: Path | None, key: str) -> dict | None:
    if cache_dir is None:
        return None
    try:
        return json.loads((cache_dir / "variant-choice.json").read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def _write_cache(cache_dir: Path | None, key: str, value: dict) -> None:
    if cache_dir is None:
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        path = cache_dir / "variant-choice.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[key] = value
        payload = json.dumps(data, indent=2).encode()
        write_atomic(path, lambda f: f.write(payload))
    except OSError as exc:  # a read-only cache only costs a second at the next start
        log.warning("could not keep the variant choice in %s: %s", cache_dir, exc)
