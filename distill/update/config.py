"""The settings of one model update (``UpdateConfig``) and the recipe switches.

Recipes (``UpdateConfig.recipe``), for the field-update benchmark and for the app:

========== ===============================================================================
full       the teachers learn the site (adapt part + replay), the student is distilled from
           the adapted ensemble on every site frame (labelled and unlabelled) + replay
kd         the same distillation from the shipped, un-adapted teachers (no adapt stage)
finetune   the student alone, cross-entropy on the site labels + replay (no teachers)
threshold  no training: the base student with its decision threshold recalibrated on the
           site-validation part (the cheapest thing that could work)
========== ===============================================================================

Defaults are the measured choices of docs/design/update.md.
"""
from __future__ import annotations

import dataclasses
import getpass
import re
from dataclasses import dataclass
from pathlib import Path

from distill.update.errors import UpdateConfigError

RECIPES = ("full", "kd", "finetune", "threshold")
_LAYERS = re.compile(r"^(all|last:\d+)$")


def repo_models() -> Path:
    """The shipped ``models/`` folder (teachers, golden set, replay set, base checkpoints)."""
    from inspector.paths import models_dir

    return models_dir()


@dataclass
class UpdateConfig:
    base: str                          # the base package (.crackpkg, FP32 or INT8)
    labelled: str                      # the site's labelled patches (any layout distill reads)
    out: str                           # the folder for update.json and the candidate
    unlabelled: str | None = None      # site images known only through the teachers' soft labels
    teachers: str | None = None        # folder of teacher checkpoints (default models/teachers)
    golden: str | None = None          # the frozen golden set (default models/golden)
    replay: str | None = None          # the base data replayed (default models/replay)
    recipe: str = "full"
    seed: int = 0
    epochs: int = 3                    # student
    teacher_epochs: int = 4
    teacher_layers: str = "all"        # "all", or "last:N": the last N blocks + head
    replay_ratio: float = 0.5          # replayed base patches per site patch
    alpha: float = 0.5                 # KD weight; 1 - alpha on the labels (site and replay)
    temperature: float = 4.0
    teacher_views: str = "once"        # "once" (un-augmented view) or "per_epoch" (every augmented view)
    student_bn: str = "train"          # "train": batch norms adapt to the data; "frozen": keep the base's
    lwf: float = 0.0                   # weight of the base student's soft outputs in the KD target, replay patches
    lwf_site: float = 0.0              # the same on site frames (learning without forgetting; anchor.py)
    weight_mix: str = "auto"           # "auto": candidate = λ·trained + (1−λ)·base, λ chosen (WiSE-FT; anchor.py);
                                       # "off": the trained weights as they are
    lr: float = 3e-4                   # student
    teacher_lr: float = 3e-4
    batch_size: int = 32
    val_fraction: float = 0.3          # of the labelled sources, held out as site validation
    patch_size: int = 96               # patch side for mask-annotated data and unlabelled frames
    input_size: int | None = None      # the student's input side (default the base's); larger sees finer detail
                                       # at about (input_size / base's)² the compute per tile
    max_unlabelled: int | None = 3000  # cap on unlabelled site patches (sampled by source)
    calibrate: bool = True             # recalibrate the threshold when the rule says so
    version: str | None = None         # default: the base's minor version + 1
    override_gate: bool = False
    confirm: str | None = None         # the reason, required with override_gate
    pushed_by: str | None = None       # default: the login name
    site_name: str | None = None       # default: the labelled folder's name
    site_licence: str = "operator's own field data (not redistributable without permission)"
    threads: int | None = None         # torch intra-op threads (default: all cores)
    max_steps: int | None = None       # cap on steps per epoch (tests)
    fast: bool = False                 # a quick, rougher update: at most 1 student / 2 teacher epochs, 500 unlabelled

    def resolved(self) -> "UpdateConfig":
        """A copy with defaults filled in and every field checked (UpdateConfigError names it)."""
        models = repo_models()
        c = dataclasses.replace(self)
        c.teachers = c.teachers or str(models / "teachers")
        c.golden = c.golden or str(models / "golden")
        c.replay = c.replay or str(models / "replay")
        c.pushed_by = c.pushed_by or _login()
        c.site_name = c.site_name or Path(c.labelled).name
        if c.fast:
            c.epochs, c.teacher_epochs = min(c.epochs, 1), min(c.teacher_epochs, 2)
            c.max_unlabelled = min(c.max_unlabelled or 500, 500)
        validate(c)
        return c

    def fingerprint_fields(self) -> dict:
        """What the training stages depend on (not who pushes it or whether the gate is overridden)."""
        skip = {"override_gate", "confirm", "pushed_by", "version", "out", "threads", "fast"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def validate(c: UpdateConfig) -> None:
    if c.recipe not in RECIPES:
        raise UpdateConfigError(f"recipe must be one of {', '.join(RECIPES)}, got {c.recipe!r}")
    for name in ("epochs", "teacher_epochs", "batch_size", "patch_size"):
        if not isinstance(getattr(c, name), int) or getattr(c, name) < 1:
            raise UpdateConfigError(f"{name} must be an integer >= 1, got {getattr(c, name)!r}")
    if not _LAYERS.match(c.teacher_layers):
        raise UpdateConfigError(f"teacher_layers must be 'all' or 'last:N', got {c.teacher_layers!r}")
    if not 0.0 <= c.replay_ratio <= 10.0:
        raise UpdateConfigError(f"replay_ratio must be in [0, 10], got {c.replay_ratio}")
    if not 0.0 <= c.alpha <= 1.0:
        raise UpdateConfigError(f"alpha must be in [0, 1], got {c.alpha}")
    if c.teacher_views not in ("once", "per_epoch"):
        raise UpdateConfigError(f"teacher_views must be 'once' or 'per_epoch', got {c.teacher_views!r}")
    for name in ("lwf", "lwf_site"):
        if not 0.0 <= getattr(c, name) <= 1.0:
            raise UpdateConfigError(f"{name} must be in [0, 1], got {getattr(c, name)}")
    if (c.lwf or c.lwf_site) and c.recipe not in ("full", "kd"):
        raise UpdateConfigError(f"lwf and lwf_site mix the base student into the teachers' targets: recipe "
                                f"{c.recipe} has no teachers")
    if c.input_size is not None and (not isinstance(c.input_size, int) or not 32 <= c.input_size <= 512):
        raise UpdateConfigError(f"input_size must be an integer in [32, 512] or unset, got {c.input_size!r}")
    if c.input_size is not None and c.recipe == "threshold":
        raise UpdateConfigError("input_size changes what the student sees: recipe threshold trains nothing")
    if c.weight_mix not in ("off", "auto"):
        raise UpdateConfigError(f"weight_mix must be 'off' or 'auto', got {c.weight_mix!r}")
    if c.student_bn not in ("train", "frozen"):
        raise UpdateConfigError(f"student_bn must be 'train' or 'frozen', got {c.student_bn!r}")
    if not c.temperature > 0:
        raise UpdateConfigError(f"temperature must be > 0, got {c.temperature}")
    if not (c.lr > 0 and c.teacher_lr > 0):
        raise UpdateConfigError(f"lr and teacher_lr must be > 0, got {c.lr}, {c.teacher_lr}")
    if not 0.0 < c.val_fraction < 1.0:
        raise UpdateConfigError(f"val_fraction must be in (0, 1), got {c.val_fraction}")
    if c.seed < 0:
        raise UpdateConfigError(f"seed must be >= 0, got {c.seed}")
    for name in ("max_unlabelled", "max_steps", "threads"):
        v = getattr(c, name)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise UpdateConfigError(f"{name} must be an integer >= 1 or unset, got {v!r}")
    if c.override_gate and not (c.confirm and c.confirm.strip()):
        raise UpdateConfigError("override_gate needs confirm: the reason for promoting a candidate the gate "
                                "refuses (--confirm \"text\"), recorded in the lineage")
    if c.confirm and not c.override_gate:
        raise UpdateConfigError("confirm is only meaningful with override_gate (--override-gate)")
    if c.version is not None:
        from inspector.edge.fields import PackageError, as_version

        try:
            as_version(c.version, "version")
        except PackageError as exc:
            raise UpdateConfigError(f"--version: {exc}") from None
    for name in ("base", "labelled"):
        if not Path(getattr(c, name)).exists():
            raise UpdateConfigError(f"{name}: {getattr(c, name)} does not exist")
    if c.unlabelled is not None and not Path(c.unlabelled).is_dir():
        raise UpdateConfigError(f"unlabelled: {c.unlabelled} is not a folder")
