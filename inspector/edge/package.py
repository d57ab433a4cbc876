"""The model package: one ``NAME-VERSION.crackpkg`` file a device can load and trust.

A package is a zip archive holding

* ``manifest.json`` -- what the model is (:class:`Manifest`, fields below),
* ``model.onnx``    -- the graph of the ONNX contract (``docs/design/edge-models.md``),
* ``reference.npz`` -- ``image`` (uint8 N×S×S×3, a few real patches) and ``probs`` (and
  usually ``cam``) as produced by this model, so a device proves that the model it loaded
  behaves as shipped.

:func:`load_package` refuses anything that is not exactly right with a :class:`PackageError`
naming the field (or member) and why; the classic field bug -- a label list that does not
match the classes of ``probs`` -- is caught from the graph and again from the reference run.

:func:`write_package` computes ``model_sha256`` itself and writes the archive atomically
(temporary file in the same directory, fsync, rename), after checking that the result loads.

:func:`signed_payload` is what the device link signs (ed25519): the canonical JSON of the
manifest without its ``signature`` (sorted keys, no whitespace, UTF-8, no NaN). The
signature covers ``model_sha256`` and therefore the model bytes; it does not cover
``reference.npz``, which only serves the self-test.

Only numpy, onnx, onnxruntime and the standard library: the Jetson agent imports this.
"""
from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import datetime as _dt
import hashlib
import io
import json
import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from inspector.edge import numerics
from inspector.fsio import fsync_dir, write_atomic
from inspector.errors import InspectorError

FORMAT = "crack-model-package/1"
MANIFEST_MEMBER = "manifest.json"
MODEL_MEMBER = "model.onnx"
DEFAULT_REFERENCE_MEMBER = "reference.npz"
INPUT_NAME = "image"
REQUIRED_OUTPUTS = ("logits", "probs", "cam")
QUANTIZATION_TYPES = ("fp32", "int8-qdq")
SIGNATURE_ALGS = ("ed25519",)
ED25519_SIGNATURE_BYTES = 64

# Upper bounds on what a package member may inflate to (a zip bomb is refused before reading).
MAX_MEMBER_BYTES = {MANIFEST_MEMBER: 4 << 20, MODEL_MEMBER: 1 << 30}
MAX_REFERENCE_BYTES = 256 << 20

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Numeric release (1, 1.2, 1.2.3, 2026.11.21) optionally followed by -prerelease / +build
# identifiers (semver-style): "1.4.0", "1.4.0-rc.1", "0.3.1+jetson".
# Identifiers may hold hyphens (semver 2.0.0 §9), so an INT8 child of "1.4.0-rc.1" is "1.4.0-rc.1-int8".
_VERSION_RE = re.compile(r"^[0-9]+(?:\.[0-9]+){0,3}(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MEMBER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.npz$")


class PackageError(InspectorError, ValueError):
    """A model package (or a manifest) is malformed; the message names the field and why."""


# --------------------------------------------------------------------------- validation helpers


def _fail(path: str, why: str) -> PackageError:
    return PackageError(f"{path}: {why}")


def _typename(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _require_mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"must be an object, got {_typename(value)}")
    for key in value:
        if not isinstance(key, str):
            raise _fail(path, f"keys must be strings, got {key!r}")
    return value


def _check_keys(d: Mapping[str, Any], path: str, required: Sequence[str], optional: Sequence[str] = ()) -> None:
    missing = [k for k in required if k not in d]
    if missing:
        where = f"{path}.{missing[0]}" if path else missing[0]
        raise _fail(where, "missing required field")
    unknown = sorted(set(d) - set(required) - set(optional))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        allowed = ", ".join(list(required) + list(optional))
        raise _fail(where, f"unknown field (typo?); allowed here: {allowed}")


def _str(value: Any, path: str, *, nonempty: bool = True) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"must be a string, got {_typename(value)}")
    if nonempty and not value.strip():
        raise _fail(path, "must be a non-empty string")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, f"must be true or false, got {_typename(value)}")
    return value


def _int(value: Any, path: str, *, positive: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise _fail(path, f"must be an integer, got {_typename(value)}")
    if positive and value <= 0:
        raise _fail(path, f"must be a positive integer, got {value}")
    return int(value)


def _float(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _fail(path, f"must be a number, got {_typename(value)}")
    f = float(value)
    if not math.isfinite(f):
        raise _fail(path, f"must be finite, got {f}")
    return f


def _version(value: Any, path: str) -> str:
    s = _str(value, path)
    if not _VERSION_RE.match(s):
        raise _fail(path, f"{s!r} is not a version string like 1.4.0, 1.4.0-rc.1 or 2026.11.21")
    return s


def _json_value(value: Any, path: str) -> Any:
    """A deep copy of ``value`` if it is plain JSON (no NaN/inf), else a PackageError."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            raise _fail(path, f"must be finite, got {value}")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {k: _json_value(v, f"{path}.{k}") for k, v in _require_mapping(value, path).items()}
    raise _fail(path, f"must be JSON (null, bool, number, string, list, object), got {_typename(value)}")


def _str_list(value: Any, path: str, *, min_len: int = 1, unique: bool = True) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise _fail(path, f"must be a list of strings, got {_typename(value)}")
    if len(value) < min_len:
        raise _fail(path, f"must hold at least {min_len} name(s), got {len(value)}")
    out = tuple(_str(v, f"{path}[{i}]") for i, v in enumerate(value))
    if unique:
        seen: set[str] = set()
        for i, v in enumerate(out):
            if v in seen:
                raise _fail(f"{path}[{i}]", f"duplicate name {v!r}")
            seen.add(v)
    return out


def _float3(value: Any, path: str) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        got = f"{len(value)} values" if isinstance(value, (list, tuple)) else _typename(value)
        raise _fail(path, f"must be a list of 3 numbers (R, G, B), got {got}")
    return tuple(_float(v, f"{path}[{i}]") for i, v in enumerate(value))  # type: ignore[return-value]


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class InputSpec:
    """``input``: the graph input ``image``, uint8 N×S×S×3 RGB."""

    size: int
    layout: str = "NHWC"
    dtype: str = "uint8"
    color: str = "RGB"

    @classmethod
    def from_dict(cls, d: Any, path: str = "input") -> "InputSpec":
        d = _require_mapping(d, path)
        _check_keys(d, path, ("size", "layout", "dtype", "color"))
        size = _int(d["size"], f"{path}.size")
        for key, want in (("layout", "NHWC"), ("dtype", "uint8"), ("color", "RGB")):
            if _str(d[key], f"{path}.{key}") != want:
                raise _fail(f"{path}.{key}", f"must be {want!r} (the ONNX contract), got {d[key]!r}")
        return cls(size=size)

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "layout": self.layout, "dtype": self.dtype, "color": self.color}


@dataclass(frozen=True)
class Preprocessing:
    """``preprocessing``: normalisation ``(image/255 - mean)/std``, folded into the graph."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    folded: bool = True

    @classmethod
    def from_dict(cls, d: Any, path: str = "preprocessing") -> "Preprocessing":
        d = _require_mapping(d, path)
        _check_keys(d, path, ("mean", "std", "folded"))
        mean = _float3(d["mean"], f"{path}.mean")
        std = _float3(d["std"], f"{path}.std")
        for i, s in enumerate(std):
            if s <= 0:
                raise _fail(f"{path}.std[{i}]", f"must be > 0, got {s}")
        if not _bool(d["folded"], f"{path}.folded"):
            raise _fail(f"{path}.folded", "must be true: the contract folds normalisation into the graph "
                                          "(the engine feeds raw uint8 RGB)")
        return cls(mean=mean, std=std, folded=True)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "folded": self.folded}


@dataclass(frozen=True)
class Quantization:
    """``quantization``: ``fp32`` or ``int8-qdq`` (QuantizeLinear/DequantizeLinear pairs).

    ``calibration`` describes the calibration data (required for int8-qdq, may be null for
    fp32); ``float_nodes`` names the nodes left in float (e.g. the CAM/head part).
    """

    type: str
    per_channel: bool = False
    calibration: str | None = None
    float_nodes: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: Any, path: str = "quantization") -> "Quantization":
        d = _require_mapping(d, path)
        _check_keys(d, path, ("type", "per_channel", "calibration", "float_nodes"))
        qtype = _str(d["type"], f"{path}.type")
        if qtype not in QUANTIZATION_TYPES:
            raise _fail(f"{path}.type", f"must be one of {', '.join(QUANTIZATION_TYPES)}, got {qtype!r}")
        per_channel = _bool(d["per_channel"], f"{path}.per_channel")
        calibration = d["calibration"]
        if calibration is None:
            if qtype == "int8-qdq":
                raise _fail(f"{path}.calibration", "an int8-qdq model must describe its calibration data")
        else:
            calibration = _str(calibration, f"{path}.calibration")
        float_nodes = _str_list(d["float_nodes"], f"{path}.float_nodes", min_len=0)
        return cls(type=qtype, per_channel=per_channel, calibration=calibration, float_nodes=float_nodes)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "per_channel": self.per_channel, "calibration": self.calibration,
                "float_nodes": list(self.float_nodes)}


@dataclass(frozen=True)
class Tiling:
    """How the app should tile camera frames for this model (frame pixels per tile, overlap
    as a fraction of a tile). Optional in the manifest: it travels with the model because the
    scale the model was trained at decides it, and the speed budget of a frame depends on it."""

    size: int
    overlap: float = 0.0

    @classmethod
    def from_dict(cls, d: Any, path: str = "tiling") -> "Tiling":
        d = _require_mapping(d, path)
        _check_keys(d, path, ("size", "overlap"))
        overlap = _float(d["overlap"], f"{path}.overlap")
        if not 0.0 <= overlap < 1.0:
            raise _fail(f"{path}.overlap", f"must be a fraction in [0, 1), got {overlap!r}")
        return cls(size=_int(d["size"], f"{path}.size"), overlap=overlap)

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "overlap": self.overlap}


@dataclass(frozen=True)
class ReferenceSpec:
    """``reference``: the member holding the reference run, and where it was computed.

    ``provenance`` (onnxruntime version, provider, CPU integer ISA, machine, graph optimisation)
    says which numeric path produced the shipped outputs; ``None`` in packages made before it.
    ``atol`` is format 1's single bound on ``probs``; it is still written (agents of that format
    require it) but no longer read: :mod:`inspector.edge.numerics` checks with the bounds of its rule
    for the model's precision and the provider that runs it.
    """

    file: str = DEFAULT_REFERENCE_MEMBER
    atol: float = 1e-4
    provenance: Mapping[str, str] | None = None

    @classmethod
    def from_dict(cls, d: Any, path: str = "reference") -> "ReferenceSpec":
        d = _require_mapping(d, path)
        _check_keys(d, path, ("file", "atol"), ("provenance",))
        name = _str(d["file"], f"{path}.file")
        if not _MEMBER_NAME_RE.match(name) or name in (MANIFEST_MEMBER, MODEL_MEMBER):
            raise _fail(f"{path}.file", f"must be a plain .npz member name like {DEFAULT_REFERENCE_MEMBER!r}, got {name!r}")
        atol = _float(d["atol"], f"{path}.atol")
        if not 0 < atol <= 0.5:
            raise _fail(f"{path}.atol", f"must be in (0, 0.5] (a tolerance on probabilities), got {atol}")
        provenance = d.get("provenance")
        if provenance is not None:
            provenance = _require_mapping(provenance, f"{path}.provenance")
            for key, value in provenance.items():
                _str(value, f"{path}.provenance.{key}")
            provenance = dict(provenance)
        return cls(file=name, atol=atol, provenance=provenance)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"file": self.file, "atol": self.atol}
        if self.provenance is not None:
            d["provenance"] = dict(self.provenance)
        return d


@dataclass(frozen=True)
class Signature:
    """``signature``: ed25519 over :func:`signed_payload`; ``value`` is base64 of 64 bytes."""

    alg: str
    key_id: str
    value: str

    @classmethod
    def from_dict(cls, d: Any, path: str = "signature") -> "Signature":
        d = _require_mapping(d, path)
        _check_keys(d, path, ("alg", "key_id", "value"))
        alg = _str(d["alg"], f"{path}.alg")
        if alg not in SIGNATURE_ALGS:
            raise _fail(f"{path}.alg", f"must be one of {', '.join(SIGNATURE_ALGS)}, got {alg!r}")
        key_id = _str(d["key_id"], f"{path}.key_id")
        value = _str(d["value"], f"{path}.value")
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _fail(f"{path}.value", f"must be base64: {exc}") from None
        if len(raw) != ED25519_SIGNATURE_BYTES:
            raise _fail(f"{path}.value", f"an ed25519 signature is {ED25519_SIGNATURE_BYTES} bytes, got {len(raw)}")
        return cls(alg=alg, key_id=key_id, value=value)

    def to_dict(self) -> dict[str, Any]:
        return {"alg": self.alg, "key_id": self.key_id, "value": self.value}


def _metrics(value: Any, path: str = "metrics") -> dict[str, dict[str, Any]]:
    """``metrics``: evaluation-set name -> the JSON object ``distill eval`` wrote for it."""
    d = _require_mapping(value, path)
    out: dict[str, dict[str, Any]] = {}
    for set_name, report in d.items():
        _str(set_name, f"{path} key {set_name!r}")
        out[set_name] = _json_value(_require_mapping(report, f"{path}.{set_name}"), f"{path}.{set_name}")
    return out


def _training_data(value: Any, path: str = "training_data") -> tuple[dict[str, Any], ...]:
    """``training_data``: a non-empty list of ``{"name", "licence", ...}`` objects.

    ``name`` and ``licence`` are required non-empty strings; further keys (``url``,
    ``citation``, ``samples`` ...) are allowed but must be JSON scalars.
    """
    if not isinstance(value, (list, tuple)):
        raise _fail(path, f"must be a list of {{name, licence}} objects, got {_typename(value)}")
    if not value:
        raise _fail(path, "must name at least one dataset (licences travel with the model)")
    out = []
    for i, item in enumerate(value):
        p = f"{path}[{i}]"
        item = _require_mapping(item, p)
        for key in ("name", "licence"):
            if key not in item:
                raise _fail(f"{p}.{key}", "missing required field")
            _str(item[key], f"{p}.{key}")
        for key, v in item.items():
            if v is not None and not isinstance(v, (str, int, float, bool)):
                raise _fail(f"{p}.{key}", f"must be a string, number, bool or null, got {_typename(v)}")
        out.append(_json_value(item, p))
    return tuple(out)


def _created(value: Any, path: str = "created") -> str:
    s = _str(value, path)
    try:
        ts = _dt.datetime.fromisoformat(s)
    except ValueError:
        raise _fail(path, f"{s!r} is not an ISO 8601 timestamp like 2026-11-21T14:03:00Z") from None
    if "T" not in s:
        raise _fail(path, f"{s!r} must be a date and time (ISO 8601, 'T' separator), not only a date")
    if ts.tzinfo is None or ts.utcoffset() != _dt.timedelta(0):
        raise _fail(path, f"{s!r} must be in UTC (end with Z or +00:00)")
    return s


_MANIFEST_REQUIRED = ("format", "name", "version", "parent_version", "architecture", "input", "preprocessing",
                      "labels", "outputs", "metrics", "training_data", "model_sha256", "created", "quantization",
                      "reference", "signature")
_MANIFEST_OPTIONAL = ("extra", "tiling")


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of a model package (``docs/design/edge-models.md``).

    Every field is validated by :meth:`from_dict`; unknown top-level fields are refused (a
    typo must not silently drop information) except inside the free-form ``extra`` object.
    """

    name: str
    version: str
    parent_version: str | None
    architecture: str
    input: InputSpec
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    outputs: tuple[str, ...]
    metrics: dict[str, dict[str, Any]]
    training_data: tuple[dict[str, Any], ...]
    model_sha256: str
    created: str
    quantization: Quantization
    reference: ReferenceSpec = field(default_factory=ReferenceSpec)
    signature: Signature | None = None
    tiling: Tiling | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    @classmethod
    def from_dict(cls, d: Any) -> "Manifest":
        d = _require_mapping(d, "manifest")
        _check_keys(d, "", _MANIFEST_REQUIRED, _MANIFEST_OPTIONAL)
        fmt = _str(d["format"], "format")
        if fmt != FORMAT:
            raise _fail("format", f"must be {FORMAT!r} (this loader reads no other format), got {fmt!r}")
        name = _str(d["name"], "name")
        if not _NAME_RE.match(name):
            raise _fail("name", f"{name!r} must be letters, digits, '.', '_' or '-' (it names the package file)")
        version = _version(d["version"], "version")
        parent = d["parent_version"]
        parent = None if parent is None else _version(parent, "parent_version")
        labels = _str_list(d["labels"], "labels", min_len=2)
        outputs = _str_list(d["outputs"], "outputs")
        for required in REQUIRED_OUTPUTS:
            if required not in outputs:
                raise _fail("outputs", f"must include {required!r} (the ONNX contract), got {list(outputs)}")
        sha = _str(d["model_sha256"], "model_sha256")
        if not _SHA256_RE.match(sha):
            raise _fail("model_sha256", f"must be 64 lowercase hex characters, got {sha!r}")
        signature = d["signature"]
        signature = None if signature is None else Signature.from_dict(signature)
        extra = _json_value(_require_mapping(d.get("extra", {}), "extra"), "extra")
        tiling = d.get("tiling")
        tiling = None if tiling is None else Tiling.from_dict(tiling)
        return cls(
            format=fmt,
            name=name,
            version=version,
            parent_version=parent,
            architecture=_str(d["architecture"], "architecture"),
            input=InputSpec.from_dict(d["input"]),
            preprocessing=Preprocessing.from_dict(d["preprocessing"]),
            labels=labels,
            outputs=outputs,
            metrics=_metrics(d["metrics"]),
            training_data=_training_data(d["training_data"]),
            model_sha256=sha,
            created=_created(d["created"]),
            quantization=Quantization.from_dict(d["quantization"]),
            reference=ReferenceSpec.from_dict(d["reference"]),
            signature=signature,
            tiling=tiling,
            extra=extra,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (what ``manifest.json`` holds); ``extra`` only when non-empty."""
        d: dict[str, Any] = {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "parent_version": self.parent_version,
            "architecture": self.architecture,
            "input": self.input.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "labels": list(self.labels),
            "outputs": list(self.outputs),
            "metrics": copy.deepcopy(self.metrics),
            "training_data": [dict(t) for t in self.training_data],
            "model_sha256": self.model_sha256,
            "created": self.created,
            "quantization": self.quantization.to_dict(),
            "reference": self.reference.to_dict(),
            "signature": None if self.signature is None else self.signature.to_dict(),
        }
        if self.tiling is not None:
            d["tiling"] = self.tiling.to_dict()
        if self.extra:
            d["extra"] = copy.deepcopy(self.extra)
        return d

    @property
    def filename(self) -> str:
        """``NAME-VERSION.crackpkg``."""
        return f"{self.name}-{self.version}.crackpkg"

    def label_index(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise PackageError(f"labels: no label {label!r} in {list(self.labels)}") from None


def utc_now_iso() -> str:
    """The current time as the manifest's ``created`` wants it (ISO 8601 UTC, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


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


# --------------------------------------------------------------------------- ONNX contract


def _dims(value_info: Any) -> list[int | str | None]:
    """Static dims as int, symbolic ones as their name, unknown as None."""
    out: list[int | str | None] = []
    for dim in value_info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            out.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            out.append(dim.dim_param)
        else:
            out.append(None)
    return out


def check_model_contract(model: Any, manifest: Manifest) -> None:
    """Check an ``onnx.ModelProto`` against the ONNX contract and ``manifest``.

    One graph input ``image`` uint8 [N, S, S, 3] with N dynamic and S = ``input.size``;
    ``logits``/``probs`` float32 [N, C], ``cam`` float32 [N, C, h, w] with C = number of
    labels wherever the graph states C statically (the reference run checks it again);
    every name of ``manifest.outputs`` is a graph output.
    """
    from onnx import TensorProto

    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    names = [i.name for i in inputs]
    if names != [INPUT_NAME]:
        raise _fail("model.onnx inputs", f"must be exactly [{INPUT_NAME!r}], got {names}")
    inp = inputs[0]
    if inp.type.tensor_type.elem_type != TensorProto.UINT8:
        got = TensorProto.DataType.Name(inp.type.tensor_type.elem_type)
        raise _fail("model.onnx input 'image'", f"dtype must be uint8 (manifest input.dtype), got {got}")
    dims = _dims(inp)
    size = manifest.input.size
    if len(dims) != 4:
        raise _fail("model.onnx input 'image'", f"must be rank 4 (N×S×S×3, NHWC), got shape {dims}")
    if isinstance(dims[0], int):
        raise _fail("model.onnx input 'image'", f"batch dimension must be dynamic (the engine batches tiles), "
                                                f"got fixed N={dims[0]}")
    if dims[1:] != [size, size, 3]:
        raise _fail("model.onnx input 'image'", f"shape must be [N, {size}, {size}, 3] (manifest input.size="
                                                f"{size}, NHWC RGB), got {dims}")

    outputs = {o.name: o for o in graph.output}
    for name in manifest.outputs:
        if name not in outputs:
            raise _fail("manifest outputs", f"{name!r} is not an output of model.onnx (outputs: {sorted(outputs)})")
    n_labels = len(manifest.labels)
    for name, rank in (("logits", 2), ("probs", 2), ("cam", 4)):
        out = outputs[name]
        if out.type.tensor_type.elem_type != TensorProto.FLOAT:
            got = TensorProto.DataType.Name(out.type.tensor_type.elem_type)
            raise _fail(f"model.onnx output {name!r}", f"dtype must be float32, got {got}")
        odims = _dims(out)
        if odims and len(odims) != rank:
            raise _fail(f"model.onnx output {name!r}", f"must be rank {rank}, got shape {odims}")
        if odims and isinstance(odims[1], int) and odims[1] != n_labels:
            raise _fail(f"model.onnx output {name!r}",
                        f"has {odims[1]} classes but the manifest has {n_labels} labels {list(manifest.labels)} "
                        f"(label list and model disagree)")


# --------------------------------------------------------------------------- reference


def _check_reference_arrays(reference: Mapping[str, np.ndarray], manifest: Manifest) -> None:
    size, n_labels = manifest.input.size, len(manifest.labels)
    for key in ("image", "probs"):
        if key not in reference:
            raise _fail(f"reference {key!r}", f"missing (need image, probs; got {sorted(reference)})")
    image = np.asarray(reference["image"])
    if image.dtype != np.uint8 or image.ndim != 4 or image.shape[1:] != (size, size, 3) or image.shape[0] < 1:
        raise _fail("reference 'image'", f"must be uint8 N×{size}×{size}×3 with N >= 1, got {image.dtype} {image.shape}")
    probs = np.asarray(reference["probs"])
    if probs.dtype.kind != "f" or probs.shape != (image.shape[0], n_labels):
        raise _fail("reference 'probs'", f"must be float {image.shape[0]}×{n_labels} (one row per image, one column "
                                         f"per label), got {probs.dtype} {probs.shape}")
    if "cam" in reference:
        cam = np.asarray(reference["cam"])
        if cam.dtype.kind != "f" or cam.ndim != 4 or cam.shape[:2] != (image.shape[0], n_labels):
            raise _fail("reference 'cam'", f"must be float {image.shape[0]}×{n_labels}×h×w, got {cam.dtype} {cam.shape}")


class ReferenceCheckError(PackageError):
    """The model does not reproduce its reference outputs within its rule on this runtime;
    ``verification`` holds the rule and what was measured."""

    def __init__(self, message: str, verification: numerics.Verification):
        super().__init__(message)
        self.verification = verification


def verify_reference_outputs(manifest: Manifest, reference: Mapping[str, np.ndarray], probs: np.ndarray,
                             cam: np.ndarray | None, *, provider: str = numerics.CPU) -> numerics.Verification:
    """Check a run on ``reference["image"]`` against the shipped outputs with the rule for the
    model's precision on ``provider`` (:mod:`inspector.edge.numerics`); return what was measured, or
    raise :class:`ReferenceCheckError` naming every broken bound with its number."""
    n_labels = len(manifest.labels)
    want = np.asarray(reference["probs"], dtype=np.float32)
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != n_labels:
        raise _fail("labels", f"the model's probs has {probs.shape[-1] if probs.ndim else '?'} classes but the "
                              f"manifest has {n_labels} labels {list(manifest.labels)}")
    if probs.shape != want.shape:
        raise _fail("reference", f"model produced probs {probs.shape}, reference holds {want.shape}")
    if cam is not None and "cam" in reference and np.shape(cam) != np.shape(reference["cam"]):
        raise _fail("reference", f"model produced cam {np.shape(cam)}, reference holds {np.shape(reference['cam'])}")
    try:
        return numerics.verify(manifest.quantization.type, reference, probs, cam if "cam" in reference else None,
                               provider=provider, model=f"{manifest.name} {manifest.version}")
    except numerics.NumericsError as exc:
        raise ReferenceCheckError(str(exc), exc.verification) from None


# --------------------------------------------------------------------------- package


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
        raise _fail(f"member {name!r}", f"missing from the package (members: {sorted(zf.namelist())})") from None
    if info.file_size > limit:
        raise _fail(f"member {name!r}", f"{info.file_size} bytes uncompressed exceeds the limit of {limit}")
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
        raise _fail(f"member {name!r}", f"cannot be read ({exc})") from None


def _load_npz(data: bytes, name: str) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad member
        raise _fail(f"member {name!r}", f"not a readable .npz ({type(exc).__name__}: {exc})") from None


def _parse_onnx(onnx_bytes: bytes):
    import onnx

    try:
        model = onnx.load_model_from_string(onnx_bytes)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds
        raise _fail("model.onnx", f"not a parsable ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node and not model.graph.output:
        # protobuf happily "parses" many byte strings into an empty message
        raise _fail("model.onnx", "not a parsable ONNX model (no graph)")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001
        raise _fail("model.onnx", f"fails the ONNX checker ({type(exc).__name__}: {exc})") from None
    return model


def _validate(manifest: Manifest, onnx_bytes: bytes, reference: dict[str, np.ndarray], *,
              verify_reference: bool, providers: Sequence[str] | None) -> None:
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    if sha != manifest.model_sha256:
        raise _fail("model_sha256", f"does not match model.onnx (manifest {manifest.model_sha256}, "
                                    f"file {sha}): the model bytes were changed or swapped")
    model = _parse_onnx(onnx_bytes)
    check_model_contract(model, manifest)
    _check_reference_arrays(reference, manifest)
    if verify_reference:
        try:
            sess = _session(onnx_bytes, providers)
            probs, cam = sess.run(["probs", "cam"], {INPUT_NAME: np.ascontiguousarray(reference["image"])})
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise _fail("model.onnx", f"onnxruntime cannot run it on the reference images "
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
            raise _fail(f"member {dupes[0]!r}", "appears more than once in the archive (ambiguous, refused)")
        manifest_bytes = _read_member(zf, MANIFEST_MEMBER, MAX_MEMBER_BYTES[MANIFEST_MEMBER])
        try:
            manifest_dict = json.loads(manifest_bytes.decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            raise _fail("manifest.json", f"not valid JSON ({exc})") from None
        if not isinstance(manifest_dict, dict):
            raise _fail("manifest.json", f"must hold a JSON object, got {_typename(manifest_dict)}")
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
        raise PackageError(f"model.onnx: onnx_bytes must be bytes, got {_typename(onnx_bytes)}")
    onnx_bytes = bytes(onnx_bytes)
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    if isinstance(manifest, Manifest):
        m = dataclasses.replace(manifest, model_sha256=sha)
    else:
        d = dict(_require_mapping(manifest, "manifest"))
        d["model_sha256"] = sha
        m = Manifest.from_dict(d)
    ref = {k: np.asarray(v) for k, v in reference.items()}
    if verify:
        _validate(m, onnx_bytes, ref, verify_reference=True, providers=None)
    else:
        _check_reference_arrays(ref, m)

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
