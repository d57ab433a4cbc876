"""Checks of what callers hand the flag store: each raises ValueError naming the argument."""
from __future__ import annotations

import datetime as _dt
import math

import numpy as np


def is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def check_prob(name: str, v) -> float:
    if not is_number(v) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
    return float(v)


def check_id(flag_id) -> int:
    if not isinstance(flag_id, (int, np.integer)) or isinstance(flag_id, bool):
        raise ValueError(f"a flag id is an integer, got {flag_id!r}")
    return int(flag_id)


def check_count(name: str, v) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    return int(v)


def check_choice(name: str, v, choices: tuple[str, ...]) -> None:
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {v!r}")


def check_text(name: str, v, *, required: bool = False) -> str | None:
    """A string; empty or blank means "none" (and is refused where ``required``)."""
    if v is not None and not isinstance(v, str):
        raise ValueError(f"{name} must be text or None, got {type(v).__name__}")
    if v is None or not v.strip():
        if required:
            raise ValueError(f"{name} must be a non-empty string, got {v!r}")
        return None
    return v


def utc(created) -> _dt.datetime:
    if created is None:
        return _dt.datetime.now(_dt.timezone.utc)
    if isinstance(created, str):
        try:
            created = _dt.datetime.fromisoformat(created)
        except ValueError:
            raise ValueError(f"created must be an ISO-8601 time with a UTC offset, got {created!r}") from None
    if not isinstance(created, _dt.datetime) or created.tzinfo is None:
        raise ValueError(f"created must be a timezone-aware datetime or ISO-8601 string, got {created!r}")
    return created.astimezone(_dt.timezone.utc)
