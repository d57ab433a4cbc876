"""``manifest.json`` of a model package: what the model is, as typed, validated dataclasses.

:class:`Manifest` and its parts (:class:`InputSpec`, :class:`Preprocessing`, :class:`Quantization`,
:class:`Tiling`, :class:`ReferenceSpec`, :class:`Signature`) are built by ``from_dict``, which
refuses anything not exactly right with a :class:`~inspector.edge.fields.PackageError` naming the
field and why (unknown fields too: a typo must not silently drop information), and written back by
``to_dict``. The fields are described in ``docs/design/edge-models.md``.
"""
from __future__ import annotations

import base64
import binascii
import copy
import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from inspector.edge.fields import (
    PackageError,
    as_bool,
    as_float,
    as_float3,
    as_int,
    as_json,
    as_str,
    as_str_list,
    as_version,
    check_keys,
    field_error,
    require_mapping,
    typename,
)

FORMAT = "crack-model-package/1"
MANIFEST_MEMBER = "manifest.json"
MODEL_MEMBER = "model.onnx"
DEFAULT_REFERENCE_MEMBER = "reference.npz"
REQUIRED_OUTPUTS = ("logits", "probs", "cam")
QUANTIZATION_TYPES = ("fp32", "int8-qdq")
SIGNATURE_ALGS = ("ed25519",)
ED25519_SIGNATURE_BYTES = 64

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MEMBER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.npz$")


@dataclass(frozen=True)
class InputSpec:
    """``input``: the graph input ``image``, uint8 N×S×S×3 RGB."""

    size: int
    layout: str = "NHWC"
    dtype: str = "uint8"
    color: str = "RGB"

    @classmethod
    def from_dict(cls, d: Any, path: str = "input") -> "InputSpec":
        d = require_mapping(d, path)
        check_keys(d, path, ("size", "layout", "dtype", "color"))
        size = as_int(d["size"], f"{path}.size")
        for key, want in (("layout", "NHWC"), ("dtype", "uint8"), ("color", "RGB")):
            if as_str(d[key], f"{path}.{key}") != want:
                raise field_error(f"{path}.{key}", f"must be {want!r} (the ONNX contract), got {d[key]!r}")
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
        d = require_mapping(d, path)
        check_keys(d, path, ("mean", "std", "folded"))
        mean = as_float3(d["mean"], f"{path}.mean")
        std = as_float3(d["std"], f"{path}.std")
        for i, s in enumerate(std):
            if s <= 0:
                raise field_error(f"{path}.std[{i}]", f"must be > 0, got {s}")
        if not as_bool(d["folded"], f"{path}.folded"):
            raise field_error(f"{path}.folded", "must be true: the contract folds normalisation into the graph "
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
        d = require_mapping(d, path)
        check_keys(d, path, ("type", "per_channel", "calibration", "float_nodes"))
        qtype = as_str(d["type"], f"{path}.type")
        if qtype not in QUANTIZATION_TYPES:
            raise field_error(f"{path}.type", f"must be one of {', '.join(QUANTIZATION_TYPES)}, got {qtype!r}")
        per_channel = as_bool(d["per_channel"], f"{path}.per_channel")
        calibration = d["calibration"]
        if calibration is None:
            if qtype == "int8-qdq":
                raise field_error(f"{path}.calibration", "an int8-qdq model must describe its calibration data")
        else:
            calibration = as_str(calibration, f"{path}.calibration")
        float_nodes = as_str_list(d["float_nodes"], f"{path}.float_nodes", min_len=0)
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
        d = require_mapping(d, path)
        check_keys(d, path, ("size", "overlap"))
        overlap = as_float(d["overlap"], f"{path}.overlap")
        if not 0.0 <= overlap < 1.0:
            raise field_error(f"{path}.overlap", f"must be a fraction in [0, 1), got {overlap!r}")
        return cls(size=as_int(d["size"], f"{path}.size"), overlap=overlap)

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
        d = require_mapping(d, path)
        check_keys(d, path, ("file", "atol"), ("provenance",))
        name = as_str(d["file"], f"{path}.file")
        if not _MEMBER_NAME_RE.match(name) or name in (MANIFEST_MEMBER, MODEL_MEMBER):
            raise field_error(f"{path}.file", f"must be a plain .npz member name like {DEFAULT_REFERENCE_MEMBER!r}, got {name!r}")
        atol = as_float(d["atol"], f"{path}.atol")
        if not 0 < atol <= 0.5:
            raise field_error(f"{path}.atol", f"must be in (0, 0.5] (a tolerance on probabilities), got {atol}")
        provenance = d.get("provenance")
        if provenance is not None:
            provenance = require_mapping(provenance, f"{path}.provenance")
            for key, value in provenance.items():
                as_str(value, f"{path}.provenance.{key}")
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
        d = require_mapping(d, path)
        check_keys(d, path, ("alg", "key_id", "value"))
        alg = as_str(d["alg"], f"{path}.alg")
        if alg not in SIGNATURE_ALGS:
            raise field_error(f"{path}.alg", f"must be one of {', '.join(SIGNATURE_ALGS)}, got {alg!r}")
        key_id = as_str(d["key_id"], f"{path}.key_id")
        value = as_str(d["value"], f"{path}.value")
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise field_error(f"{path}.value", f"must be base64: {exc}") from None
        if len(raw) != ED25519_SIGNATURE_BYTES:
            raise field_error(f"{path}.value", f"an ed25519 signature is {ED25519_SIGNATURE_BYTES} bytes, got {len(raw)}")
        return cls(alg=alg, key_id=key_id, value=value)

    def to_dict(self) -> dict[str, Any]:
        return {"alg": self.alg, "key_id": self.key_id, "value": self.value}


def _metrics(value: Any, path: str = "metrics") -> dict[str, dict[str, Any]]:
    """``metrics``: evaluation-set name -> the JSON object ``distill eval`` wrote for it."""
    d = require_mapping(value, path)
    out: dict[str, dict[str, Any]] = {}
    for set_name, report in d.items():
        as_str(set_name, f"{path} key {set_name!r}")
        out[set_name] = as_json(require_mapping(report, f"{path}.{set_name}"), f"{path}.{set_name}")
    return out


def _training_data(value: Any, path: str = "training_data") -> tuple[dict[str, Any], ...]:
    """``training_data``: a non-empty list of ``{"name", "licence", ...}`` objects.

    ``name`` and ``licence`` are required non-empty strings; further keys (``url``,
    ``citation``, ``samples`` ...) are allowed but must be JSON scalars.
    """
    if not isinstance(value, (list, tuple)):
        raise field_error(path, f"must be a list of {{name, licence}} objects, got {typename(value)}")
    if not value:
        raise field_error(path, "must name at least one dataset (licences travel with the model)")
    out = []
    for i, item in enumerate(value):
        p = f"{path}[{i}]"
        item = require_mapping(item, p)
        for key in ("name", "licence"):
            if key not in item:
                raise field_error(f"{p}.{key}", "missing required field")
            as_str(item[key], f"{p}.{key}")
        for key, v in item.items():
            if v is not None and not isinstance(v, (str, int, float, bool)):
                raise field_error(f"{p}.{key}", f"must be a string, number, bool or null, got {typename(v)}")
        out.append(as_json(item, p))
    return tuple(out)


def _created(value: Any, path: str = "created") -> str:
    s = as_str(value, path)
    try:
        ts = _dt.datetime.fromisoformat(s)
    except ValueError:
        raise field_error(path, f"{s!r} is not an ISO 8601 timestamp like 2026-11-21T14:03:00Z") from None
    if "T" not in s:
        raise field_error(path, f"{s!r} must be a date and time (ISO 8601, 'T' separator), not only a date")
    if ts.tzinfo is None or ts.utcoffset() != _dt.timedelta(0):
        raise field_error(path, f"{s!r} must be in UTC (end with Z or +00:00)")
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
        d = require_mapping(d, "manifest")
        check_keys(d, "", _MANIFEST_REQUIRED, _MANIFEST_OPTIONAL)
        fmt = as_str(d["format"], "format")
        if fmt != FORMAT:
            raise field_error("format", f"must be {FORMAT!r} (this loader reads no other format), got {fmt!r}")
        name = as_str(d["name"], "name")
        if not _NAME_RE.match(name):
            raise field_error("name", f"{name!r} must be letters, digits, '.', '_' or '-' (it names the package file)")
        version = as_version(d["version"], "version")
        parent = d["parent_version"]
        parent = None if parent is None else as_version(parent, "parent_version")
        labels = as_str_list(d["labels"], "labels", min_len=2)
        outputs = as_str_list(d["outputs"], "outputs")
        for required in REQUIRED_OUTPUTS:
            if required not in outputs:
                raise field_error("outputs", f"must include {required!r} (the ONNX contract), got {list(outputs)}")
        sha = as_str(d["model_sha256"], "model_sha256")
        if not _SHA256_RE.match(sha):
            raise field_error("model_sha256", f"must be 64 lowercase hex characters, got {sha!r}")
        signature = d["signature"]
        signature = None if signature is None else Signature.from_dict(signature)
        extra = as_json(require_mapping(d.get("extra", {}), "extra"), "extra")
        tiling = d.get("tiling")
        tiling = None if tiling is None else Tiling.from_dict(tiling)
        return cls(
            format=fmt,
            name=name,
            version=version,
            parent_version=parent,
            architecture=as_str(d["architecture"], "architecture"),
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

