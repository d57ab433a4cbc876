"""The ``distill update`` job seen from the app: its command line, its events, its record.

The update runs in its own process (``distill update``, torch stays out of the app's window);
:func:`update_command` is the one place the command line is built, so a bundle can swap in its own
``distill`` executable (:func:`distill_program`). The job reports JSON-lines events
(:mod:`inspector.update.protocol`), which :class:`UpdateState` folds into what the dialog shows:
stage states, progress, the loss and validation-MCC curves per epoch, the gate verdict, the
result. When it ends, its record (``update.json``) holds the gate's verdict, shown as a
before/after table (:func:`comparison_rows`) and the rules' own words (:func:`rule_text`).
Plain Python (no Qt, no torch).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inspector.update import protocol as U
from inspector.update.plan import ModelUpdateError, read_manifest

DISTILL_ENV = "CRACK_DISTILL"          # a `distill` executable to use instead of `python -m distill.cli`


def training_base(package: str | os.PathLike) -> Path:
    """The package to pass as ``--base``: an INT8 package's FP32 parent when it lies beside it
    (``NAME-PARENT.crackpkg``; training starts from float weights), else the package itself."""
    package = Path(package)
    m = read_manifest(package)
    if (m.get("quantization") or {}).get("type") == "int8-qdq" and m.get("parent_version"):
        parent = package.with_name(f"{m['name']}-{m['parent_version']}.crackpkg")
        if parent.is_file():
            return parent
    return package


def distill_program() -> list[str]:
    """How to start ``distill``: ``$CRACK_DISTILL`` (a bundle's own executable), a ``distill``
    beside a frozen app's executable, else this interpreter with ``-m distill.cli`` (a checkout)."""
    env = os.environ.get(DISTILL_ENV)
    if env:
        return [env]
    if getattr(sys, "frozen", False):
        beside = Path(sys.executable).with_name("distill" + (".exe" if os.name == "nt" else ""))
        if beside.is_file():
            return [str(beside)]
        found = shutil.which("distill")
        if found:
            return [found]
    return [sys.executable, "-m", "distill.cli"]


def update_command(base: str | os.PathLike, labelled: str | os.PathLike, out: str | os.PathLike, *,
                   unlabelled: str | os.PathLike | None = None, seed: int | None = None, fast: bool = False,
                   override_reason: str | None = None, pushed_by: str | None = None,
                   extra: list[str] | None = None, program: list[str] | None = None) -> list[str]:
    """The ``distill update`` command line (argv), the one place it is built."""
    cmd = [*(program or distill_program()), "update", "--base", str(base), "--labelled", str(labelled),
           "--out", str(out)]
    if unlabelled is not None:
        cmd += ["--unlabelled", str(unlabelled)]
    if seed is not None:
        cmd += ["--seed", str(int(seed))]
    if fast:
        cmd.append("--fast")
    if override_reason:
        cmd += ["--override-gate", "--confirm", override_reason]
    if pushed_by:
        cmd += ["--pushed-by", pushed_by]
    return cmd + list(extra or ())


# ---------------------------------------------------------------------------- the events

# Each stage's share of a whole update, from a measured run (N = 200 labelled + 367 unlabelled
# tiles, AMD EPYC 2 cores, 171 s: docs/benchmarks/field_update.md, click to live): the progress
# bar moves with the time a stage takes, not one step per stage.
STAGE_WEIGHTS = {"read": 3, "split": 1, "adapt_teachers": 58, "teacher_outputs": 14, "distil": 50, "calibrate": 3,
                 "export": 19, "gate": 15, "write": 3}
DEFAULT_STAGE_WEIGHT = 5     # a stage a newer job adds

@dataclass
class UpdateState:
    """What the events of one run said so far (:meth:`apply` each event in order).

    ``stages``: name → "pending" | "running" | "done" | "skipped" | "failed" | "cancelled";
    ``curves``: model ("student", "teacher:<arch>") → [(epoch, loss, val_mcc or None)];
    ``outcome``: "running", then "passed", "failed" (the gate said no), "error" or "cancelled".
    """

    stages: dict[str, str] = field(default_factory=lambda: {s: "pending" for s in U.STAGES})
    stage_detail: dict[str, str] = field(default_factory=dict)
    base: dict | None = None
    out: str | None = None
    current: str | None = None
    progress: tuple[int, int] | None = None          # (done, total) of the current stage
    eta_s: float | None = None
    epochs: dict[str, int] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float, float | None]]] = field(default_factory=dict)
    logs: list[tuple[str, str]] = field(default_factory=list)
    gate: dict | None = None
    result: dict | None = None
    error: str | None = None
    cancelled_at: str | None = None
    started: float = field(default_factory=time.monotonic)
    _high_water: float = field(default=0.0, repr=False)   # fraction() never goes back

    def apply(self, event: dict) -> None:
        kind = event["event"]
        getattr(self, f"_on_{kind}")(event)

    # each event kind ------------------------------------------------------------------
    def _on_start(self, e: dict) -> None:
        self.base, self.out = e["base"], e["out"]
        self.stages = {str(s): "pending" for s in e["stages"]}

    def _on_stage(self, e: dict) -> None:
        name, status = e["stage"], e["status"]
        self.stages[name] = {"start": "running", "done": "done", "skipped": "skipped"}[status]
        if e.get("detail"):
            self.stage_detail[name] = str(e["detail"])
        if status == "start":
            self.current, self.progress, self.eta_s = name, None, None

    def _on_progress(self, e: dict) -> None:
        self.current = e["stage"]
        if self.stages.get(self.current) == "pending":
            self.stages[self.current] = "running"
        self.progress = (int(e["done"]), max(1, int(e["total"])))
        eta = e.get("eta_s")
        self.eta_s = float(eta) if isinstance(eta, (int, float)) and math.isfinite(eta) else None

    def _on_epoch(self, e: dict) -> None:
        val = e.get("val_mcc")
        point = (int(e["epoch"]), float(e["loss"]), float(val) if isinstance(val, (int, float)) else None)
        self.curves.setdefault(str(e["model"]), []).append(point)
        self.epochs[str(e["model"])] = int(e["epochs"])

    def _on_log(self, e: dict) -> None:
        self.logs.append((e["level"], str(e["message"])))

    def _on_gate(self, e: dict) -> None:
        self.gate = e

    def _on_result(self, e: dict) -> None:
        self.result = e

    def _on_error(self, e: dict) -> None:
        self.error = str(e["message"])
        stage = e.get("stage") or self.current
        if stage in self.stages:
            self.stages[stage] = "failed"

    def _on_cancelled(self, e: dict) -> None:
        self.cancelled_at = e["stage"]
        for name, state in self.stages.items():
            if state == "running":
                self.stages[name] = "cancelled"

    # derived -------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None or self.cancelled_at is not None

    @property
    def outcome(self) -> str:
        if self.cancelled_at is not None:
            return "cancelled"
        if self.error is not None:
            return "error"
        if self.result is not None:
            return "passed" if self.gate_passed else "failed"
        return "running"

    @property
    def gate_passed(self) -> bool:
        return bool(self.gate and self.gate.get("passed"))

    @property
    def promoted(self) -> bool:
        return bool(self.result and self.result.get("promoted"))

    def failed_rules(self) -> list[dict]:
        return [r for r in (self.gate or {}).get("rules", []) if isinstance(r, dict) and not r.get("passed")]

    def fraction(self) -> float:
        """Share of the whole job done: finished stages plus the current stage's progress, each
        stage weighted by its share of a measured run (:data:`STAGE_WEIGHTS`). It only moves
        forward: a stage whose steps restart (one teacher after another) or whose total grows
        holds the bar where it was (it went from 32 % back to 30 % in a field trial)."""
        names = list(self.stages)
        if not names:
            return 0.0
        weight = {n: STAGE_WEIGHTS.get(n, DEFAULT_STAGE_WEIGHT) for n in names}
        total = sum(weight.values())
        finished = sum(weight[n] for n, s in self.stages.items() if s in ("done", "skipped"))
        part = 0.0
        if self.current in self.stages and self.stages[self.current] == "running" and self.progress:
            done, steps = self.progress
            part = weight[self.current] * min(1.0, done / steps)
        self._high_water = max(self._high_water, min(1.0, (finished + part) / total))
        return self._high_water

    def time_left(self, now: float | None = None) -> tuple[float | None, str]:
        """(seconds, how it was reckoned): the job's own ETA for the current stage when it gives
        one, else the elapsed time scaled by the share still to do."""
        if self.eta_s is not None:
            return self.eta_s, f"left in {self.current}"
        frac = self.fraction()
        if frac <= 0.02:
            return None, "left"
        elapsed = (time.monotonic() if now is None else now) - self.started
        return elapsed * (1 - frac) / frac, "left (from the time so far)"


def parse_output_line(line: str) -> tuple[dict | None, str | None]:
    """(event, None) for an event line, (None, text) for any other line worth logging
    (a library's print, or an event that breaks the schema: said so), (None, None) for blank."""
    try:
        event = U.parse_line(line)
    except U.UpdateProtocolError as exc:
        return None, f"not a valid update event ({exc}): {line.strip()[:300]}"
    if event is not None:
        return event, None
    text = line.strip()
    return None, (text or None)


# ---------------------------------------------------------------------------- the verdict

# Metric rows of the before/after table, in order, with what the app calls them.
# MCC is what the gate judges, F1 the number inspectors know; sets measured on the candidate only
# (INT8 vs FP32) show their own numbers.
TABLE_METRICS = (("mcc", "MCC"), ("f1", "F1"), ("agreement", "agreement"))


def read_update_json(out_dir: str | os.PathLike) -> dict | None:
    """``OUT/update.json`` (the job's record: gate verdict, metrics, lineage), or None."""
    path = Path(out_dir) / "update.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ModelUpdateError(f"{path}: cannot read the update record ({exc})") from None


def gate_of(record: dict | None) -> dict | None:
    """The gate verdict ({passed, rules, metrics}) inside an update.json, wherever it sits."""
    if not isinstance(record, dict):
        return None
    gate = record.get("gate")
    if isinstance(gate, dict) and "rules" in gate:
        return gate
    if "rules" in record and "passed" in record:
        return record
    return None


def comparison_rows(gate: dict | None) -> list[tuple[str, str, float | None, float | None]]:
    """Rows (set, metric, base, candidate) of the before/after table from a gate's ``metrics``:
    every set (golden set, site validation, INT8 agreement, ...), the metrics of
    :data:`TABLE_METRICS` that either side reports, numbers or None."""
    rows = []
    metrics = (gate or {}).get("metrics") or {}
    for set_name, sides in metrics.items():
        if not isinstance(sides, dict):
            continue
        base = sides.get("base") if isinstance(sides.get("base"), dict) else {}
        cand = sides.get("candidate") if isinstance(sides.get("candidate"), dict) else {}
        if not base and not cand and any(isinstance(v, (int, float)) for v in sides.values()):
            cand = sides                     # a set measured on the candidate only (e.g. INT8 agreement)
        keys = [k for k, _ in TABLE_METRICS if k in base or k in cand]
        if not base:
            keys += [k for k in cand if k not in keys and k != "n" and isinstance(cand[k], (int, float))][:2]
        for k in keys:
            rows.append((str(set_name), dict(TABLE_METRICS).get(k, k.replace("_", " ")), _num(base.get(k)),
                         _num(cand.get(k))))
    return rows


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def rule_text(rule: dict) -> str:
    """``name: detail`` (the job's own words, with its numbers), else ``name value (limit L)``."""
    name = str(rule.get("name", "rule"))
    if rule.get("detail"):
        return f"{name}: {rule['detail']}"
    value, limit = rule.get("value"), rule.get("limit")
    return f"{name} {_fmt(value)} (limit {_fmt(limit)})" if value is not None or limit is not None else name


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)
