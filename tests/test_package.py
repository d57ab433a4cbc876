"""Model packages (``inspector/edge/package.py``, its manifest and contract): a valid package
round-trips, every kind of bad package is refused with a message naming the problem.

The model inside is the real small ONNX graph of ``package_support.py`` (a dark-thin-line
detector that follows the contract), run on real patches.
"""
from __future__ import annotations

import copy
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto as TP

from inspector.edge.fields import PackageError
from inspector.edge.manifest import Manifest
from inspector.edge.package import ModelPackage, load_package, signed_payload, write_package
from package_support import (LABELS, S, build_fixture_onnx, fixture_manifest, make_reference, manifest_of, members,
                             npz_bytes, real_patches, rewrite, with_manifest)


@pytest.fixture(scope="module")
def fixture_model() -> bytes:
    return build_fixture_onnx()


@pytest.fixture(scope="module")
def reference(fixture_model) -> dict[str, np.ndarray]:
    return make_reference(fixture_model, real_patches())


@pytest.fixture()
def good_package(tmp_path, fixture_model, reference) -> Path:
    return write_package(tmp_path / "fixture.crackpkg", fixture_manifest(), fixture_model, reference)


def refused(path: Path, *fragments: str, **kw) -> str:
    with pytest.raises(PackageError) as info:
        load_package(path, **kw)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return msg


# --------------------------------------------------------------------------- valid packages


def test_fixture_model_follows_contract_and_sees_real_cracks(fixture_model, reference):
    probs, cam = reference["probs"], reference["cam"]
    assert probs.shape == (4, 2) and cam.shape == (4, 2, S // 8, S // 8)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (cam >= 0).all()
    # the two real crack patches score higher "crack" than the two real no-crack patches
    assert probs[:2, 1].min() > probs[2:, 1].max()


def test_valid_package_round_trips(tmp_path, fixture_model, reference):
    path = write_package(tmp_path / "fixture.crackpkg", fixture_manifest(), fixture_model, reference)
    pkg = load_package(path)
    assert isinstance(pkg, ModelPackage)
    assert pkg.path == path
    assert pkg.onnx_bytes == fixture_model
    assert pkg.manifest.model_sha256 == hashlib.sha256(fixture_model).hexdigest()  # computed, "000..." overridden
    assert pkg.sha256_of_file == hashlib.sha256(path.read_bytes()).hexdigest()
    assert pkg.manifest.labels == LABELS and pkg.manifest.input.size == S
    assert pkg.manifest.reference.atol == 1e-4
    for key in ("image", "probs", "cam"):
        np.testing.assert_array_equal(pkg.reference[key], reference[key])
    assert Manifest.from_dict(pkg.manifest.to_dict()) == pkg.manifest
    assert manifest_of(path) == pkg.manifest.to_dict()
    assert sorted(members(path)) == ["manifest.json", "model.onnx", "reference.npz"]
    # a Manifest object works as well as a dict, and a directory gets NAME-VERSION.crackpkg
    again = write_package(tmp_path, pkg.manifest, fixture_model, reference)
    assert again.name == "dark-line-fixture-0.1.0.crackpkg"
    assert load_package(again).manifest == pkg.manifest
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp files left


def test_extra_and_signature_round_trip(tmp_path, fixture_model, reference):
    sig = {"alg": "ed25519", "key_id": "device-link-2026", "value": "A" * 86 + "=="}  # base64 of 64 bytes
    d = fixture_manifest(signature=sig, extra={"notes": ["anything", 1, None], "owner": {"team": "qa"}},
                         parent_version="0.0.9")
    pkg = load_package(write_package(tmp_path / "p.crackpkg", d, fixture_model, reference))
    assert pkg.manifest.signature.to_dict() == sig
    assert pkg.manifest.extra["owner"] == {"team": "qa"}
    assert pkg.manifest.parent_version == "0.0.9"


def test_tiling_travels_with_the_model_and_sets_the_engine_default(tmp_path, fixture_model, reference):
    from inspector.edge.engine import InferenceEngine

    path = write_package(tmp_path / "t.crackpkg", fixture_manifest(tiling={"size": 96, "overlap": 0.0}),
                         fixture_model, reference)
    pkg = load_package(path)
    assert pkg.manifest.tiling.to_dict() == {"size": 96, "overlap": 0.0}
    engine = InferenceEngine(pkg, threads=1)
    assert (engine.tile_size, engine.tile_overlap) == (96, 0.0)
    assert len(engine.inspect(np.zeros((192, 288, 3), np.uint8)).tiles) == 6  # 3 × 2 tiles of 96 px
    explicit = InferenceEngine(pkg, threads=1, tile_size=64, tile_overlap=0.5)  # the caller still decides
    assert (explicit.tile_size, explicit.tile_overlap) == (64, 0.5)
    untiled = load_package(write_package(tmp_path / "u.crackpkg", fixture_manifest(), fixture_model, reference))
    assert untiled.manifest.tiling is None
    assert (InferenceEngine(untiled, threads=1).tile_size, InferenceEngine(untiled, threads=1).tile_overlap) == (S, 0.25)
    for bad, fragment in [({"size": 96, "overlap": 1.0}, "tiling.overlap"), ({"size": 0, "overlap": 0.0}, "tiling.size"),
                          ({"size": 96}, "tiling"), ({"size": 96, "overlap": 0.0, "stride": 8}, "stride")]:
        with pytest.raises(PackageError, match=fragment):
            Manifest.from_dict(fixture_manifest(tiling=bad))


def test_signed_payload_is_canonical_and_excludes_signature(fixture_model):
    d = fixture_manifest()
    signed = fixture_manifest(signature={"alg": "ed25519", "key_id": "k1", "value": "B" * 86 + "=="})
    payload = signed_payload(d)
    assert payload == signed_payload(signed) == signed_payload(Manifest.from_dict(d))
    parsed = json.loads(payload)
    assert "signature" not in parsed and parsed["name"] == "dark-line-fixture"
    assert payload == json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()
    assert signed_payload(fixture_manifest(version="0.1.1")) != payload  # every field is covered


def test_write_is_atomic_and_refuses_a_package_a_device_would_refuse(tmp_path, fixture_model, reference):
    path = write_package(tmp_path / "p.crackpkg", fixture_manifest(), fixture_model, reference)
    before = path.read_bytes()
    # 3 labels for a 2-class model: refused at write time, the existing file is untouched
    with pytest.raises(PackageError, match="3 labels"):
        write_package(path, fixture_manifest(labels=["no_crack", "crack", "spalling"]), fixture_model, reference)
    with pytest.raises(PackageError, match="labels: missing required field"):
        write_package(path, {k: v for k, v in fixture_manifest().items() if k != "labels"}, fixture_model, reference)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.crackpkg"]


def test_load_without_reference_run(good_package, reference):
    rewrite(good_package, **{"reference.npz": npz_bytes(image=reference["image"],
                                                        probs=np.full((4, 2), 0.5, np.float32))})
    assert load_package(good_package, verify_reference=False).manifest.name == "dark-line-fixture"  # structure only
    refused(good_package, "reference", "does not reproduce its reference outputs", "max |Δp| = 0.5")


# --------------------------------------------------------------------------- bad manifests


def _drop(key):
    def f(d):
        del d[key]
    return f


def _set(path, value):
    def f(d):
        node = d
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return f


BAD_MANIFESTS = [
    ("missing field", _drop("labels"), "labels: missing required field"),
    ("missing nested field", _drop("quantization"), "quantization: missing required field"),
    ("wrong type", _set(["input", "size"], "64"), "input.size: must be an integer, got str"),
    ("bool is not int", _set(["input", "size"], True), "input.size: must be an integer, got bool"),
    ("unknown field", _set(["lables"], ["a", "b"]), "lables: unknown field (typo?)"),
    ("unknown nested field", _set(["input", "colour"], "RGB"), "input.colour: unknown field"),
    ("bad sha256", _set(["model_sha256"], "abc123"), "model_sha256: must be 64 lowercase hex"),
    ("upper-case sha256", _set(["model_sha256"], "A" * 64), "model_sha256: must be 64 lowercase hex"),
    ("bad format", _set(["format"], "crack-model-package/2"), "format: must be 'crack-model-package/1'"),
    ("empty labels", _set(["labels"], []), "labels: must hold at least 2"),
    ("duplicate labels", _set(["labels"], ["crack", "crack"]), "labels[1]: duplicate name 'crack'"),
    ("non-string label", _set(["labels"], ["no_crack", 1]), "labels[1]: must be a string"),
    ("blank label", _set(["labels"], ["no_crack", " "]), "labels[1]: must be a non-empty string"),
    ("input size zero", _set(["input", "size"], 0), "input.size: must be a positive integer"),
    ("layout NCHW", _set(["input", "layout"], "NCHW"), "input.layout: must be 'NHWC'"),
    ("dtype float32", _set(["input", "dtype"], "float32"), "input.dtype: must be 'uint8'"),
    ("colour BGR", _set(["input", "color"], "BGR"), "input.color: must be 'RGB'"),
    ("mean of 2", _set(["preprocessing", "mean"], [0.5, 0.5]), "preprocessing.mean: must be a list of 3 numbers"),
    ("std zero", _set(["preprocessing", "std"], [0.25, 0.0, 0.25]), "preprocessing.std[1]: must be > 0"),
    ("std string", _set(["preprocessing", "std"], [0.25, "x", 0.25]), "preprocessing.std[1]: must be a number"),
    ("not folded", _set(["preprocessing", "folded"], False), "preprocessing.folded: must be true"),
    ("created not ISO", _set(["created"], "21/11/2026"), "created: '21/11/2026' is not an ISO 8601"),
    ("created not UTC", _set(["created"], "2026-11-21T14:03:00+02:00"), "created: '2026-11-21T14:03:00+02:00' must be in UTC"),
    ("created naive", _set(["created"], "2026-11-21T14:03:00"), "must be in UTC"),
    ("created date only", _set(["created"], "2026-11-21"), "not only a date"),
    ("quantization int4", _set(["quantization", "type"], "int4"), "quantization.type: must be one of fp32, int8-qdq"),
    ("int8 without calibration", _set(["quantization", "type"], "int8-qdq"), "quantization.calibration: an int8-qdq"),
    ("per_channel string", _set(["quantization", "per_channel"], "yes"), "quantization.per_channel: must be true or false"),
    ("bad version", _set(["version"], "v1"), "version: 'v1' is not a version string"),
    ("bad parent version", _set(["parent_version"], "latest"), "parent_version: 'latest' is not a version string"),
    ("name with slash", _set(["name"], "../evil"), "name: '../evil' must be letters"),
    ("outputs without cam", _set(["outputs"], ["logits", "probs"]), "outputs: must include 'cam'"),
    ("metrics not object", _set(["metrics"], [0.9]), "metrics: must be an object"),
    ("metric NaN", _set(["metrics"], {"val": {"mcc": float("nan")}}), "not valid JSON"),  # NaN is not JSON
    ("training data empty", _set(["training_data"], []), "training_data: must name at least one dataset"),
    ("training data licence missing", _set(["training_data"], [{"name": "x"}]), "training_data[0].licence: missing"),
    ("atol negative", _set(["reference", "atol"], -1e-4), "reference.atol: must be in (0, 0.5]"),
    ("reference path", _set(["reference", "file"], "../ref.npz"), "reference.file: must be a plain .npz member name"),
    ("signature missing value", _set(["signature"], {"alg": "ed25519", "key_id": "k"}), "signature.value: missing required field"),
    ("signature wrong alg", _set(["signature"], {"alg": "rsa", "key_id": "k", "value": "A" * 86 + "=="}), "signature.alg: must be one of ed25519"),
    ("signature short", _set(["signature"], {"alg": "ed25519", "key_id": "k", "value": "AAAA"}), "signature.value: an ed25519 signature is 64 bytes, got 3"),
    ("signature not base64", _set(["signature"], {"alg": "ed25519", "key_id": "k", "value": "!!not base64!!"}), "signature.value: must be base64"),
    ("signature a string", _set(["signature"], "deadbeef"), "signature: must be an object, got str"),
    ("extra not object", _set(["extra"], [1, 2]), "extra: must be an object"),
]


@pytest.mark.parametrize("mutate,expected", [c[1:] for c in BAD_MANIFESTS], ids=[c[0] for c in BAD_MANIFESTS])
def test_bad_manifest_is_refused(good_package, mutate, expected):
    refused(with_manifest(good_package, mutate), expected)


# --------------------------------------------------------------------------- bad archives and models


def test_not_a_zip(tmp_path):
    path = tmp_path / "model.crackpkg"
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not a package")
    refused(path, "not a zip archive")
    refused(tmp_path / "missing.crackpkg", "cannot read the package")


@pytest.mark.parametrize("member", ["manifest.json", "model.onnx", "reference.npz"])
def test_missing_member(good_package, member):
    refused(rewrite(good_package, **{member: None}), f"member {member!r}: missing from the package")


def test_unparsable_manifest(good_package):
    refused(rewrite(good_package, **{"manifest.json": b'{"format": "crack-model-package/1",'}), "manifest.json: not valid JSON")
    refused(rewrite(good_package, **{"manifest.json": b"[1, 2]"}), "manifest.json: must hold a JSON object, got list")


def test_duplicate_member_is_refused(good_package):
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(good_package, "a") as zf:
        zf.writestr("model.onnx", b"second copy")
    refused(good_package, "member 'model.onnx': appears more than once")


def test_tampered_model_bytes(good_package):
    data = bytearray(members(good_package)["model.onnx"])
    data[-5] ^= 0x01  # one flipped bit in a weight
    refused(rewrite(good_package, **{"model.onnx": bytes(data)}), "model_sha256: does not match model.onnx")


def _swap_model(path: Path, onnx_bytes: bytes, **manifest_changes) -> Path:
    """Replace the model with a consistent sha256 (so only the contract check can catch it)."""
    d = manifest_of(path)
    d.update(manifest_changes, model_sha256=hashlib.sha256(onnx_bytes).hexdigest())
    return rewrite(path, **{"model.onnx": onnx_bytes, "manifest.json": json.dumps(d).encode()})


def test_non_onnx_bytes(good_package):
    refused(_swap_model(good_package, b"this is not an onnx model at all, just text"), "model.onnx: not a parsable ONNX model")


def test_labels_count_differs_from_model_classes(good_package):
    refused(with_manifest(good_package, _set(["labels"], ["no_crack", "crack", "spalling"])),
            "output 'logits'", "has 2 classes but the manifest has 3 labels")


def test_labels_count_mismatch_hidden_from_the_graph_is_caught_by_the_reference_run(good_package, reference):
    # a 3-class model whose outputs state C symbolically: the static check cannot see C
    model = build_fixture_onnx(num_classes=3, class_dim="C")
    ref3 = make_reference(model, reference["image"])
    _swap_model(good_package, model)
    rewrite(good_package, **{"reference.npz": npz_bytes(image=ref3["image"], probs=ref3["probs"][:, :2])})
    refused(good_package, "labels", "probs has 3 classes but the manifest has 2 labels")


def test_wrong_input_size_vs_manifest(good_package):
    refused(with_manifest(good_package, _set(["input", "size"], 96)), "input 'image'", "[N, 96, 96, 3]", "input.size=96")


@pytest.mark.parametrize("variant,expected", [
    (dict(batch=1), "batch dimension must be dynamic"),
    (dict(input_dtype=TP.FLOAT), "dtype must be uint8"),
    (dict(outputs=("logits", "probs")), "'cam' is not an output of model.onnx"),
], ids=["fixed batch", "float input", "no cam output"])
def test_model_breaking_the_contract(good_package, variant, expected):
    refused(_swap_model(good_package, build_fixture_onnx(**variant)), expected)


def test_reference_mismatch(good_package, reference):
    probs = reference["probs"].copy()
    probs[0] += np.float32([-0.01, 0.01])
    rewrite(good_package, **{"reference.npz": npz_bytes(image=reference["image"], probs=probs, cam=reference["cam"])})
    refused(good_package, "reference: dark-line-fixture 0.1.0 does not reproduce its reference outputs under rule cpu-fp32",
            "max |Δp| = 0.01 > 0.0001")


def test_reference_cam_mismatch(good_package, reference):
    cam = reference["cam"].copy()
    cam[0, 1] += 0.5 * cam.max()
    rewrite(good_package, **{"reference.npz": npz_bytes(image=reference["image"], probs=reference["probs"], cam=cam)})
    refused(good_package, "does not reproduce its reference outputs", "heat-map peak difference")


def test_reference_arrays_of_wrong_shape(good_package, reference):
    rewrite(good_package, **{"reference.npz": npz_bytes(image=reference["image"][..., 0], probs=reference["probs"])})
    refused(good_package, "reference 'image': must be uint8 N×64×64×3")
    rewrite(good_package, **{"reference.npz": npz_bytes(image=reference["image"])})
    refused(good_package, "reference 'probs'", "missing")
    rewrite(good_package, **{"reference.npz": b"not an npz"})
    refused(good_package, "member 'reference.npz': not a readable .npz")


def test_manifest_from_dict_direct():
    m = Manifest.from_dict(fixture_manifest(labels=("no_crack", "crack"), extra={}))
    assert m.labels == ("no_crack", "crack") and m.extra == {} and "extra" not in m.to_dict()
    assert m.label_index("crack") == 1
    with pytest.raises(PackageError, match="labels: no label 'spall'"):
        m.label_index("spall")
    with pytest.raises(PackageError, match="manifest: must be an object"):
        Manifest.from_dict(["not", "a", "dict"])
    d = copy.deepcopy(fixture_manifest())
    d["preprocessing"]["mean"] = [0, 0, 0]  # ints are numbers
    assert Manifest.from_dict(d).preprocessing.mean == (0.0, 0.0, 0.0)
