"""The reference check tells a wrong model from another numeric path (inspector.edge.numerics).

Every shipped package must pass on every numeric path this machine reaches (onnxruntime's
optimised kernels, the unfused QDQ path, the emulated accelerator, and under qemu the AVX2 path)
and every wrong model must be refused even by the loosest rule (the accelerator's).
"""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from inspector.edge import numerics
from inspector.edge.engine import InferenceEngine
from inspector.edge.contract import ReferenceCheckError
from inspector.edge.fields import PackageError
from inspector.edge.package import load_package, write_package
from inspector.paths import default_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "numeric_paths"))
import paths as foreign  # noqa: E402
import wrong_models  # noqa: E402

INT8 = default_model()
FP32 = INT8.with_name(INT8.name.replace("-int8", ""))
TEACHERS = sorted((REPO / "models").glob("crack-teachers-*.crackpkg"))[-1]
SHIPPED = {"int8": INT8, "fp32": FP32, "teachers": TEACHERS}


@pytest.fixture(scope="module")
def packages():
    return {k: load_package(p, verify_reference=False) for k, p in SHIPPED.items()}


def _run(pkg, path: str):
    sess = numerics.session(pkg.onnx_bytes, path)
    return sess.run(["probs", "cam"], {"image": np.ascontiguousarray(pkg.reference["image"])})


# --------------------------------------------------------------------------- the rules


def test_rule_per_precision_and_provider():
    assert numerics.rule_for("fp32").name == "cpu-fp32"
    assert numerics.rule_for("int8-qdq").name == "cpu-int8"
    for provider in ("TensorrtExecutionProvider", "CUDAExecutionProvider", numerics.EMULATED_TENSORRT):
        assert numerics.rule_for("int8-qdq", provider).name == "accelerator-int8"
        assert numerics.rule_for("fp32", provider).name == "accelerator-fp32"
    # an accelerator's rule contains the CPU's for the same precision; none can flip a verdict
    for precision in ("fp32", "int8"):
        cpu, acc = numerics.RULES[f"cpu-{precision}"], numerics.RULES[f"accelerator-{precision}"]
        assert cpu.probs_atol <= acc.probs_atol < numerics.MIN_VERDICT_MARGIN
        assert cpu.cam_corr_min >= acc.cam_corr_min and cpu.cam_peak_max <= acc.cam_peak_max


def test_measure_and_failures_name_each_bound():
    ref = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    cam = np.ones((2, 2, 3, 3), np.float32)
    m = numerics.measure(ref, ref, cam, cam)
    assert (m.verdict_mismatches, m.probs_max_abs, m.cam_corr, m.cam_peak) == (0, 0.0, 1.0, 0.0)
    swapped = numerics.measure(ref, ref[:, ::-1], cam, cam * np.linspace(0, 2, 9, dtype=np.float32).reshape(3, 3))
    broken = numerics.failures(swapped, numerics.RULES["accelerator-int8"])
    assert len(broken) == 4 and "verdicts differ on 2 of 2" in broken[0] and "max |Δp| = 0.8" in broken[1]
    nan = numerics.measure(ref, np.full_like(ref, np.nan), cam, cam)
    assert "max |Δp|" in " ".join(numerics.failures(nan, numerics.RULES["accelerator-int8"]))


def test_int8_isa_names_the_integer_instructions():
    assert numerics.int8_isa() in ("AMX", "AVX-512 VNNI", "AVX-VNNI", "AVX2", "NEON dot", "NEON") or numerics.int8_isa()


# --------------------------------------------------------------------------- the shipped packages


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_packages_carry_telling_references_and_their_provenance(packages, name):
    pkg = packages[name]
    ref = pkg.reference
    assert len(ref["image"]) >= 32
    p = ref["probs"][:, pkg.manifest.label_index("crack")]
    assert np.all(np.abs(p - 0.5) >= numerics.MIN_VERDICT_MARGIN)
    assert np.sum(np.abs(p - 0.5) <= 0.4) >= 8, "too few reference images near the decision boundary"
    assert (p > 0.5).sum() >= 12 and (p < 0.5).sum() >= 12
    prov = pkg.manifest.reference.provenance
    assert prov is not None and {"onnxruntime", "provider", "isa", "machine"} <= set(prov)


@pytest.mark.parametrize("path", numerics.NUMERIC_PATHS)
@pytest.mark.parametrize("name", list(SHIPPED))
def test_every_numeric_path_passes_its_rule(packages, name, path):
    pkg = packages[name]
    probs, cam = _run(pkg, path)
    provider = numerics.EMULATED_TENSORRT if path == numerics.EMULATED_TENSORRT else numerics.CPU
    v = numerics.verify(pkg.manifest.quantization.type, pkg.reference, probs, cam, provider=provider)
    assert v.passed and v.measured.verdict_mismatches == 0


def test_engine_verifies_on_the_emulated_accelerator_with_its_rule(packages):
    eng = InferenceEngine(packages["int8"], threads=1, numeric_path=numerics.EMULATED_TENSORRT)
    assert eng.verification is not None and eng.verification.rule.name == "accelerator-int8"
    assert eng.verification.measured.probs_max_abs > 0  # it really is another numeric path
    assert InferenceEngine(packages["int8"], threads=1).verification.rule.name == "cpu-int8"


def test_avx2_path_computes_the_shipped_int8_student_exactly(packages):
    """onnxruntime's AVX2 kernels (qemu, a CPU without VNNI) on the INT8 student: with 7-bit
    weights nothing saturates, so it reproduces the references (made on VNNI/AMX) exactly.
    (FP32 under qemu takes many minutes of emulated float arithmetic: the benchmark's job.)"""
    why = foreign.available("x86-avx2")
    if why:
        pytest.skip(why)
    pkg = packages["int8"]
    probs, cam, info = foreign.run("x86-avx2", pkg.onnx_bytes, pkg.reference["image"])
    v = numerics.verify(pkg.manifest.quantization.type, pkg.reference, probs, cam)
    assert v.passed, v.summary()
    assert v.measured.probs_max_abs < 1e-6, v.summary()  # exact integer accumulation, float head


# --------------------------------------------------------------------------- wrong models


def _wrong(pkg, name: str) -> bytes:
    onnx_bytes = pkg.onnx_bytes
    if name == "perturbed layer":  # the first convolution, by 0.3x its weights' spread
        return wrong_models.perturb_layer(onnx_bytes, rel=0.3, layer=0)
    if name == "swapped labels":
        return wrong_models.swap_labels(onnx_bytes)
    if name == "corrupted initializer":  # 64 bytes of the first convolution's weights
        return wrong_models.corrupt_initializer(onnx_bytes, layer=0)
    raise AssertionError(name)


WRONG = ["perturbed layer", "swapped labels", "corrupted initializer"]


@pytest.mark.parametrize("wrong", WRONG)
@pytest.mark.parametrize("name", list(SHIPPED))
def test_wrong_models_fail_even_the_loosest_rule(packages, name, wrong):
    pkg = packages[name]
    sess = numerics.session(_wrong(pkg, wrong))
    probs, cam = sess.run(["probs", "cam"], {"image": np.ascontiguousarray(pkg.reference["image"])})
    m = numerics.measure(pkg.reference["probs"], probs, pkg.reference["cam"], cam)
    assert numerics.failures(m, numerics.RULES["accelerator-int8"]), f"{wrong} passed as a numeric path: {m}"


def test_another_model_under_a_copied_manifest_is_refused(packages, tmp_path):
    """The teachers' model inside the student's package: refused by its hash, and with the hash
    recomputed (a repackaged file) by the reference check, with the rule and the numbers."""
    student, teachers = packages["int8"], packages["teachers"]
    copied = tmp_path / "copied.crackpkg"
    with zipfile.ZipFile(INT8) as src, zipfile.ZipFile(copied, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, teachers.onnx_bytes if item.filename == "model.onnx" else src.read(item))
    with pytest.raises(PackageError, match="model_sha256: does not match model.onnx"):
        load_package(copied)
    with pytest.raises(ReferenceCheckError, match=r"under rule cpu-int8 .*verdicts differ on") as info:
        write_package(tmp_path / "resealed.crackpkg", student.manifest.to_dict(), teachers.onnx_bytes,
                      student.reference)
    assert info.value.verification.measured.probs_max_abs > numerics.RULES["accelerator-int8"].probs_atol
    assert not (tmp_path / "resealed.crackpkg").exists()


def test_corrupted_model_bytes_are_refused_by_their_hash(packages, tmp_path):
    """Damage anywhere in model.onnx, even where the reference check cannot see it (64 bytes of
    the largest layer move p by ~5e-4), is refused by identity: the manifest's sha256."""
    pkg = packages["int8"]
    bad = tmp_path / "damaged.crackpkg"
    with zipfile.ZipFile(INT8) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, wrong_models.corrupt_initializer(data) if item.filename == "model.onnx" else data)
    with pytest.raises(PackageError, match="model_sha256: does not match model.onnx"):
        load_package(bad)
    assert pkg.manifest.model_sha256 != ""


def test_truncated_package_is_refused(tmp_path):
    cut = tmp_path / "cut.crackpkg"
    cut.write_bytes(INT8.read_bytes()[: INT8.stat().st_size // 2])
    with pytest.raises(PackageError):
        load_package(cut)


@pytest.mark.parametrize("wrong", WRONG)
def test_engine_refuses_a_wrong_model_on_the_emulated_accelerator(packages, tmp_path, wrong):
    pkg = packages["int8"]
    path = tmp_path / "wrong.crackpkg"
    manifest = pkg.manifest.to_dict()
    with pytest.raises(ReferenceCheckError):
        write_package(path, manifest, _wrong(pkg, wrong), pkg.reference)
    write_package(path, manifest, _wrong(pkg, wrong), pkg.reference, verify=False)
    with pytest.raises(ReferenceCheckError, match="under rule accelerator-int8"):
        InferenceEngine(path, threads=1, numeric_path=numerics.EMULATED_TENSORRT)
