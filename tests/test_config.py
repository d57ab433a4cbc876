"""distill.config: YAML round trip, schema errors that name the key, dotted overrides."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from distill.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    to_dict,
    write_resolved,
)


def custom() -> RunConfig:
    cfg = RunConfig()
    cfg.data.root = "/data/ozgenel"
    cfg.data.split = (0.8, 0.1, 0.1)
    cfg.data.label_fraction = 0.25
    cfg.data.source_rule = "regex:(?P<source>\\d+)_"
    cfg.model.arch = "efficientnet_lite0"
    cfg.model.pretrained = True
    cfg.loss.name = "kd+fitnet+rkd"
    cfg.loss.temperature = 2.5
    cfg.train.epochs = 7
    cfg.train.lr = 3e-4
    cfg.train.max_steps_per_epoch = 12
    cfg.teachers = ["runs/t0/best.pt", "runs/t1/best.pt"]
    cfg.ensemble_average = "probs"
    cfg.out = "runs/x"
    return cfg


def test_yaml_round_trip(tmp_path):
    cfg = custom()
    write_resolved(cfg, tmp_path / "sub" / "config.yaml")
    raw = yaml.safe_load((tmp_path / "sub" / "config.yaml").read_text())
    assert raw["data"]["split"] == [0.8, 0.1, 0.1] and raw["train"]["epochs"] == 7
    back = load_config(tmp_path / "sub" / "config.yaml")
    assert back == cfg
    assert to_dict(back) == to_dict(cfg) == raw
    assert isinstance(back.data.split, tuple) and back.model.pretrained is True
    # a local weights path is a valid "pretrained" too
    cfg.model.pretrained = "weights/resnet18.pth"
    write_resolved(cfg, tmp_path / "c2.yaml")
    assert load_config(tmp_path / "c2.yaml").model.pretrained == "weights/resnet18.pth"


def test_empty_file_gives_the_defaults_and_base_fills_missing_keys(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == RunConfig()
    (tmp_path / "part.yaml").write_text("train:\n  epochs: 3\n")
    base = custom()
    cfg = load_config(tmp_path / "part.yaml", base=base)
    assert cfg.train.epochs == 3 and cfg.train.lr == 3e-4 and cfg.model.arch == "efficientnet_lite0"
    assert base.train.epochs == 7  # the base is not modified


@pytest.mark.parametrize("text, key", [
    ("bogus: 1\n", "bogus"),
    ("train:\n  epoch: 3\n", "epoch"),
    ("data:\n  rooot: /x\n", "rooot"),
    ("nosection:\n  a: 1\n", "nosection"),
])
def test_unknown_keys_are_named(tmp_path, text, key):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=key):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("split", [[0.5, 0.3, 0.3], [0.7, 0.3], [1.2, -0.1, -0.1], [0.7, 0.15, 0.15, 0.0]])
def test_bad_split_fractions(split):
    with pytest.raises(ConfigError, match="data.split"):
        config_from_dict({"data": {"split": split}})


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_bad_label_fraction(fraction):
    with pytest.raises(ConfigError, match="label_fraction"):
        config_from_dict({"data": {"label_fraction": fraction}})
    with pytest.raises(ConfigError, match="label_fraction"):
        apply_overrides(RunConfig(), {"data.label_fraction": fraction})


@pytest.mark.parametrize("d, key", [
    ({"train": {"epochs": "ten"}}, "train.epochs"),
    ({"train": {"epochs": 2.5}}, "train.epochs"),
    ({"train": {"batch_size": True}}, "train.batch_size"),
    ({"train": {"lr": "fast"}}, "train.lr"),
    ({"data": {"split": 0.7}}, "data.split"),
    ({"teachers": "runs/t0/best.pt"}, "teachers"),
    ({"model": {"pretrained": 1}}, "model.pretrained"),
    ({"train": 5}, "train"),
    ({"model": []}, "model"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"train": {"max_steps_per_epoch": 0}}, "max_steps_per_epoch"),
    ({"train": {"device": "gpu"}}, "train.device"),
    ({"loss": {"name": "kd+magic"}}, "loss.name"),
    ({"loss": {"alpha": 1.5}}, "loss.alpha"),
    ({"ensemble_average": "median"}, "ensemble_average"),
])
def test_wrong_values_are_config_errors_naming_the_key(d, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict(d)


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-3 as the string "1e-3"; the schema says float
    (tmp_path / "c.yaml").write_text("train:\n  lr: 1e-3\n  weight_decay: 0\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.weight_decay, float)


def test_unreadable_or_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "bad.yaml")


def test_dotted_overrides():
    cfg = RunConfig()
    out = apply_overrides(cfg, {"train.epochs": 4, "data.split": [0.8, 0.1, 0.1], "loss.name": None,
                                "model.pretrained": "w.pth", "out": "runs/y", "teachers": ["a.pt"],
                                "train.lr": 1})
    assert out is cfg
    assert cfg.train.epochs == 4 and cfg.data.split == (0.8, 0.1, 0.1) and cfg.loss.name == "kd"
    assert cfg.model.pretrained == "w.pth" and cfg.out == "runs/y" and cfg.teachers == ["a.pt"]
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert dataclasses.asdict(cfg.train)["epochs"] == 4
    for key in ("train.bogus", "bogus.epochs", "train.epochs.x", "bogus"):
        with pytest.raises(ConfigError, match="unknown configuration key"):
            apply_overrides(RunConfig(), {key: 1})
    with pytest.raises(ConfigError, match="section"):
        apply_overrides(RunConfig(), {"train": {"epochs": 2}})
    with pytest.raises(ConfigError, match="train.epochs"):
        apply_overrides(RunConfig(), {"train.epochs": "3"})
    with pytest.raises(ConfigError, match="data.split"):
        apply_overrides(RunConfig(), {"data.split": [0.5, 0.5, 0.5]})
