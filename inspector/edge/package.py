"""The model package file: one ``NAME-VERSION.crackpkg`` a device can load and trust.

A package is a zip archive holding

* ``manifest.json`` -- what the model is (:class:`~inspector.edge.manifest.Manifest`),
* ``model.onnx``    -- the graph of the ONNX contract (:mod:`inspector.edge.contract`),
* ``reference.npz`` -- ``image`` (uint8 N×S×S×3, a few real patches) and ``probs`` (and
  usually ``cam``) as produced by this model, so a device proves that the model it loaded
  behaves as shipped.

:func:`load_package` refuses anything that is not exactly right with a
:class:`~inspector.edge.fields.PackageError` naming the field (or member) and why; the classic
field bug -- a label list that does not match the classes of ``probs`` -- is caught from the graph
and again from the reference run.

:func:`write_package` computes ``model_sha256`` itself and writes the archive atomically
(temporary file in the same directory, fsync, rename), after checking that the result loads.

:func:`signed_payload` is what the device link signs (ed25519): the canonical JSON of the
manifest without its ``signature`` (sorted keys, no whitespace, UTF-8, no NaN). The
signature covers ``model_sha256`` and therefore the model bytes; it does not cover
``reference.npz``, which only serves the self-test.

Only numpy, onnx, onnxruntime and the standard library: the Jetson agent imports this.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from inspector.edge.contract import INPUT_NAME, check_model_contract, check_reference_arrays, verify_reference_outputs
from inspector.edge.fields import PackageError, field_error, require_mapping, typename
from inspector.edge.manifest import MANIFEST_MEMBER, MODEL_MEMBER, Manifest
from inspector.fsio import fsync_dir, write_atomic


# Upper bounds on what a package member may inflate to (a zip bomb is refused before reading).
MAX_MEMBER_BYTES = {MANIFEST_MEMBER: 4 << 20, MODEL_MEMBER: 1 << 30}
MAX_REFERENCE_BYTES = 256 << 20


def _canonical_json(d: Mapping[str, Any]) -> bytes:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def signed_payload(manifest: Manifest | Mapping[str, Any]) -> bytes:
    """The bytes the device link signs: canonical JSON of the manifest without ``signature``.

    Sorted keys, ``(",", ":")`` separators, UTF-8, no NaN. The manifest is validated (and
    normalised through :class:`Manifest`) first, so a dict and its Manifest give the same bytes.
    """
    m = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest)
    d = m.to_dict()
    d.pop("signature", None)
    return _canonical_json(d)


def _session(onnx_bytes: bytes, providers: Sequence[str] | None, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=list(providers or ["CPUExecutionProvider"]))


class ModelPackage:
    """A loaded, validated package: ``manifest``, ``onnx_bytes``, ``reference``, ``path``,
    ``sha256_of_file`` (of the whole archive, for logs and audit)."""

    def __init__(self, manifest: Manifest, onnx_bytes: bytes, reference: dict[str, np.ndarray],
                 path: Path | None, sha256_of_file: str | None):
        self.manifest = manifest
        self.onnx_bytes = onnx_bytes
        self.reference = reference
        self.path = path
        self.sha256_of_file = sha256_of_file

    def __repr__(self) -> str:
        m = self.manifest
        return f"ModelPackage({m.name}-{m.version}, {m.architecture}, S={m.input.size}, labels={list(m.labels)})"


def _read_member(zf: zipfile.ZipFile, name: str, limit: int) -> bytes:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise field_error(f"member {name!r}", f"missing from the package (members: {sorted(zf.namelist())})") from None
    if info.file_size > limit:
        raise field_error(f"member {name!r}", f"{info.file_size} bytes uncompressed exceeds the limit of {limit}")
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
        raise field_error(f"member {name!r}", f"cannot be read ({exc})") from None


def _load_npz(data: bytes, name: str) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad member
        raise field_error(f"member {name!r}", f"not a readable .npz ({type(exc).__name__}: {exc})") from None


def _parse_onnx(onnx_bytes: bytes):
    import onnx

    try:
        model = onnx.load_model_from_string(onnx_bytes)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds
        raise field_error("model.onnx", f"not a parsable ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node and not model.graph.output:
        # protobuf happily "parses" many byte strings into an empty message
        raise field_error("model.onnx", "not a parsable ONNX model (no graph)")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001
        raise field_error("model.onnx", f"fails the ONNX checker ({type(exc).__name__}: {exc})") from None
    return model


def _validate(manifest: Manifest, onnx_bytes: bytes, reference: dict[str, np.ndarray], *,
              verify_reference: bool, providers: Sequence[str] | None) -> None:
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    if sha != manifest.model_sha256:
        raise field_error("model_sha256", f"does not match model.onnx (manifest {manifest.model_sha256}, "
                                    f"file {sha}): the model bytes were changed or swapped")
    model = _parse_onnx(onnx_bytes)
    check_model_contract(model, manifest)
    check_reference_arrays(reference, manifest)
    if verify_reference:
        try:
            sess = _session(onnx_bytes, providers)
            probs, cam = sess.run(["probs", "cam"], {INPUT_NAME: np.ascontiguousarray(reference["image"])})
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise field_error("model.onnx", f"onnxruntime cannot run it on the reference images "
                                      f"({type(exc).__name__}: {exc})") from None
        verify_reference_outputs(manifest, reference, probs, cam, provider=sess.get_providers()[0])


def load_package(path: str | os.PathLike, *, verify_reference: bool = True,
                 providers: Sequence[str] | None = None) -> ModelPackage:
    """Open, validate and (by default) self-test a ``.crackpkg``.

    ``providers`` are the onnxruntime execution providers for the reference run (default:
    CPU). Raises :class:`PackageError` naming the problem; nothing half-loaded escapes.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PackageError(f"{path}: cannot read the package ({exc})") from None
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        raise PackageError(f"{path}: not a zip archive (a .crackpkg is a zip of manifest.json, model.onnx, "
                           f"reference.npz)")
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile as exc:
        raise PackageError(f"{path}: not a zip archive ({exc})") from None
    with zf:
        names = zf.namelist()
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise field_error(f"member {dupes[0]!r}", "appears more than once in the archive (ambiguous, refused)")
        manifest_bytes = _read_member(zf, MANIFEST_MEMBER, MAX_MEMBER_BYTES[MANIFEST_MEMBER])
        try:
            manifest_dict = json.loads(manifest_bytes.decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            raise field_error("manifest.json", f"not valid JSON ({exc})") from None
        if not isinstance(manifest_dict, dict):
            raise field_error("manifest.json", f"must hold a JSON object, got {typename(manifest_dict)}")
        manifest = Manifest.from_dict(manifest_dict)
        onnx_bytes = _read_member(zf, MODEL_MEMBER, MAX_MEMBER_BYTES[MODEL_MEMBER])
        ref_name = manifest.reference.file
        reference = _load_npz(_read_member(zf, ref_name, MAX_REFERENCE_BYTES), ref_name)
    _validate(manifest, onnx_bytes, reference, verify_reference=verify_reference, providers=providers)
    return ModelPackage(manifest, onnx_bytes, reference, path, hashlib.sha256(raw).hexdigest())


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def write_package(path: str | os.PathLike, manifest: Manifest | Mapping[str, Any], onnx_bytes: bytes,
                  reference: Mapping[str, np.ndarray], *, verify: bool = True) -> Path:
    """Write a ``.crackpkg`` atomically and return its path.

    ``model_sha256`` is computed from ``onnx_bytes`` (any given value is overridden). With
    ``verify`` (default) the package is validated exactly as :func:`load_package` would,
    including the reference run on CPU, before it replaces ``path``: a package that a device
    would refuse is never written. ``path`` may be a directory: the file is then named
    ``NAME-VERSION.crackpkg`` inside it.
    """
    if not isinstance(onnx_bytes, (bytes, bytearray)):
        raise PackageError(f"model.onnx: onnx_bytes must be bytes, got {typename(onnx_bytes)}")
    onnx_bytes = bytes(onnx_bytes)
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    if isinstance(manifest, Manifest):
        m = dataclasses.replace(manifest, model_sha256=sha)
    else:
        d = dict(require_mapping(manifest, "manifest"))
        d["model_sha256"] = sha
        m = Manifest.from_dict(d)
    ref = {k: np.asarray(v) for k, v in reference.items()}
    if verify:
        _validate(m, onnx_bytes, ref, verify_reference=True, providers=None)
    else:
        check_reference_arrays(ref, m)

    path = Path(path)
    if path.is_dir():
        path = path / m.filename
    npz = io.BytesIO()
    np.savez(npz, **ref)
    manifest_json = json.dumps(m.to_dict(), indent=2, sort_keys=False, ensure_ascii=False, allow_nan=False) + "\n"

    def write_zip(fh) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST_MEMBER, manifest_json)
            zf.writestr(MODEL_MEMBER, onnx_bytes)
            zf.writestr(m.reference.file, npz.getvalue())

    write_atomic(path, write_zip, mode=0o644)  # a package is meant to be read by the app/agent users
    fsync_dir(path.parent, best_effort=True)
    return path
