"""The events of a model update job (``distill update``), one schema for the job and the app.

``distill update`` runs in its own process (torch never enters the app's window) and reports on
stdout as **JSON lines**, one event per line; anything else it prints goes to stderr. The app
(``QProcess``) and scripts read them with :func:`parse_line`. Both sides import this module and
nothing else defines the shapes (like ``inspector/link/protocol.py`` for the device link). Numpy and
torch free: the app imports it.

Every event is a JSON object with ``"v": 1``, ``"event"`` (one of :data:`EVENTS`) and ``"t"``
(UNIX seconds), plus the fields :data:`REQUIRED` names for its kind (more may follow; readers
ignore what they do not know):

========== ==============================================================================
start      ``base`` {name, version}, ``out`` (folder), ``stages`` (names, in order)
stage      ``stage`` (a name of :data:`STAGES`), ``status`` ("start" | "done" | "skipped"),
           ``index`` (0-based), ``of`` (number of stages); optional ``detail`` (text)
progress   ``stage``, ``done``, ``total`` (units of that stage's work, e.g. batches); optional
           ``eta_s`` (seconds left in the stage, or null)
epoch      ``stage``, ``model`` ("student" or "teacher:<arch>"), ``epoch`` (1-based), ``epochs``,
           ``loss`` (mean training loss); optional ``val_mcc`` (site-validation MCC, or null)
log        ``level`` ("info" | "warning"), ``message``
gate       ``passed`` (bool), ``rules`` (list of {name, passed, value, limit, detail}),
           ``metrics`` ({set name: {"base": {...}, "candidate": {...}}})
result     ``update_json`` (path), ``promoted`` (bool: the gate passed or was overridden),
           ``candidate`` {version, fp32, int8, checkpoint} (paths)
error      ``message``; optional ``stage``
cancelled  ``stage`` (where it stopped)
========== ==============================================================================

A run ends with exactly one of ``result``, ``error`` or ``cancelled`` (exit status 0, 1, 3).
"""
from __future__ import annotations

import json
import math
import time
from typing import Any
from inspector.errors import InspectorError

VERSION = 1
STAGES = ("read", "split", "adapt_teachers", "teacher_outputs", "distil", "calibrate", "export", "gate", "write")
EVENTS = ("start", "stage", "progress", "epoch", "log", "gate", "result", "error", "cancelled")
REQUIRED: dict[str, tuple[str, ...]] = {
    "start": ("base", "out", "stages"),
    "stage": ("stage", "status", "index", "of"),
    "progress": ("stage", "done", "total"),
    "epoch": ("stage", "model", "epoch", "epochs", "loss"),
    "log": ("level", "message"),
    "gate": ("passed", "rules", "metrics"),
    "result": ("update_json", "promoted", "candidate"),
    "error": ("message",),
    "cancelled": ("stage",),
}
STAGE_STATUSES = ("start", "done", "skipped")
FINAL_EVENTS = ("result", "error", "cancelled")
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 3
MAX_LINE = 1 << 20   # a longer line is not an event (a runaway print), and is refused unread


class UpdateProtocolError(InspectorError, ValueError):
    """A line that claims to be an update event but is not a valid one; the message says why."""


def make_event(kind: str, **fields: Any) -> dict:
    """An event dict, checked against the schema (raises UpdateProtocolError)."""
    event = {"v": VERSION, "event": kind, "t": round(time.time(), 3), **fields}
    check_event(event)
    return event


def encode(event: dict) -> str:
    """One line of JSON (no NaN: a metric that is not a number is sent as null)."""
    return json.dumps(_finite(event), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def parse_line(line: str | bytes) -> dict | None:
    """The event on ``line``, or None for a line that is not JSON (e.g. a library's warning
    that went to stdout). A JSON object that is not a valid event raises UpdateProtocolError."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    if len(line) > MAX_LINE:
        return None
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    check_event(event)
    return event


def check_event(event: Any) -> None:
    if not isinstance(event, dict):
        raise UpdateProtocolError(f"an event is a JSON object, got {type(event).__name__}")
    if event.get("v") != VERSION:
        raise UpdateProtocolError(f"event version {event.get('v')!r} is not {VERSION}")
    kind = event.get("event")
    if kind not in REQUIRED:
        raise UpdateProtocolError(f"unknown event {kind!r}; known: {list(EVENTS)}")
    missing = [f for f in REQUIRED[kind] if f not in event]
    if missing:
        raise UpdateProtocolError(f"{kind} event without {missing}")
    if "stage" in REQUIRED[kind] and event["stage"] not in STAGES:
        raise UpdateProtocolError(f"{kind} event: unknown stage {event['stage']!r}; stages: {list(STAGES)}")
    if kind == "stage" and event["status"] not in STAGE_STATUSES:
        raise UpdateProtocolError(f"stage event: status must be one of {list(STAGE_STATUSES)}, got {event['status']!r}")
    if kind == "log" and event["level"] not in ("info", "warning"):
        raise UpdateProtocolError(f"log event: level must be info or warning, got {event['level']!r}")
    if kind == "gate" and not isinstance(event["rules"], list):
        raise UpdateProtocolError("gate event: rules must be a list")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
