"""``PackageError`` and the checks of one field of a model package's manifest.

Each check takes a JSON value and the field's path (``input.size``, ``training_data[0].licence``),
returns the value converted (a tuple for a list, a deep copy for free-form JSON) or raises a
:class:`PackageError` naming that path and why. :mod:`inspector.edge.manifest` builds the manifest
from them; nothing here knows what a manifest holds.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import numpy as np

from inspector.errors import InspectorError

# Numeric release (1, 1.2, 1.2.3, 2026.11.21) optionally followed by -prerelease / +build
# identifiers (semver-style): "1.4.0", "1.4.0-rc.1", "0.3.1+jetson".
# Identifiers may hold hyphens (semver 2.0.0 §9), so an INT8 child of "1.4.0-rc.1" is "1.4.0-rc.1-int8".
_VERSION_RE = re.compile(r"^[0-9]+(?:\.[0-9]+){0,3}(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$")


class PackageError(InspectorError, ValueError):
    """A model package (or a manifest) is malformed; the message names the field and why."""


def field_error(path: str, why: str) -> PackageError:
    """The error for field ``path``: ``"path: why"``."""
    return PackageError(f"{path}: {why}")


def typename(value: Any) -> str:
    """What a JSON reader calls the type of ``value`` (``null`` for None)."""
    return "null" if value is None else type(value).__name__


def require_mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise field_error(path, f"must be an object, got {typename(value)}")
    for key in value:
        if not isinstance(key, str):
            raise field_error(path, f"keys must be strings, got {key!r}")
    return value


def check_keys(d: Mapping[str, Any], path: str, required: Sequence[str], optional: Sequence[str] = ()) -> None:
    """Every ``required`` key is in ``d`` and no key outside ``required`` and ``optional`` (a typo)."""
    missing = [k for k in required if k not in d]
    if missing:
        where = f"{path}.{missing[0]}" if path else missing[0]
        raise field_error(where, "missing required field")
    unknown = sorted(set(d) - set(required) - set(optional))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        allowed = ", ".join(list(required) + list(optional))
        raise field_error(where, f"unknown field (typo?); allowed here: {allowed}")


def as_str(value: Any, path: str, *, nonempty: bool = True) -> str:
    if not isinstance(value, str):
        raise field_error(path, f"must be a string, got {typename(value)}")
    if nonempty and not value.strip():
        raise field_error(path, "must be a non-empty string")
    return value


def as_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise field_error(path, f"must be true or false, got {typename(value)}")
    return value


def as_int(value: Any, path: str, *, positive: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise field_error(path, f"must be an integer, got {typename(value)}")
    if positive and value <= 0:
        raise field_error(path, f"must be a positive integer, got {value}")
    return int(value)


def as_float(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise field_error(path, f"must be a number, got {typename(value)}")
    f = float(value)
    if not math.isfinite(f):
        raise field_error(path, f"must be finite, got {f}")
    return f


def as_version(value: Any, path: str) -> str:
    s = as_str(value, path)
    if not _VERSION_RE.match(s):
        raise field_error(path, f"{s!r} is not a version string like 1.4.0, 1.4.0-rc.1 or 2026.11.21")
    return s


def as_json(value: Any, path: str) -> Any:
    """A deep copy of ``value`` if it is plain JSON (no NaN/inf), else a PackageError."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            raise field_error(path, f"must be finite, got {value}")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [as_json(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {k: as_json(v, f"{path}.{k}") for k, v in require_mapping(value, path).items()}
    raise field_error(path, f"must be JSON (null, bool, number, string, list, object), got {typename(value)}")


def as_str_list(value: Any, path: str, *, min_len: int = 1, unique: bool = True) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise field_error(path, f"must be a list of strings, got {typename(value)}")
    if len(value) < min_len:
        raise field_error(path, f"must hold at least {min_len} name(s), got {len(value)}")
    out = tuple(as_str(v, f"{path}[{i}]") for i, v in enumerate(value))
    if unique:
        seen: set[str] = set()
        for i, v in enumerate(out):
            if v in seen:
                raise field_error(f"{path}[{i}]", f"duplicate name {v!r}")
            seen.add(v)
    return out


def as_float3(value: Any, path: str) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        got = f"{len(value)} values" if isinstance(value, (list, tuple)) else typename(value)
        raise field_error(path, f"must be a list of 3 numbers (R, G, B), got {got}")
    return tuple(as_float(v, f"{path}[{i}]") for i, v in enumerate(value))  # type: ignore[return-value]
