from pathlib import Path

import optuna
import pytest
import yaml
from conftest import REPO

from microal.config import apply_overrides, parse_config
from microal.errors import ConfigError
from microal.training.search_space import load_space, to_optuna

SPACE_FILES = sorted((REPO / "tune_spaces").glob("*.yaml"))


def test_the_shipped_spaces_cover_the_three_jobs():
    assert {p.stem for p in SPACE_FILES} >= {"supervised", "uda", "pretrain"}


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.name)
def test_every_space_file_loads_and_converts(path):
    space = load_space(path)
    distributions = to_optuna(space)
    assert set(distributions) == set(space.params)
    # A point sampled by optuna gives a valid project config.
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask(distributions)
    config = apply_overrides({"classes": ["a", "b"]}, trial.params)
    for key, value in trial.params.items():
        section, name = key.split(".")
        assert getattr(getattr(config, section), name) == value


def _write(tmp_path, data) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "params, message",
    [
        (
            {"training.learning_rate": {"type": "float", "low": 0.1, "high": 1.0}},
            r"params.training.learning_rate: not a config setting",
        ),
        ({"training.lr": {"type": "float", "low": 1.0, "high": 0.1}}, r"low \(1.0\) must be below high \(0.1\)"),
        ({"training.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "log-scaled range needs low > 0"),
        ({"training.lr": {"type": "floaty", "low": 0.0, "high": 0.1}}, r"params.training.lr: Input tag 'floaty'"),
        (
            {"training.lr": {"type": "float", "low": 0.1, "high": 1.0, "scale": 2}},
            r"params.training.lr.float.scale: unknown key",
        ),
        (
            {"training.epochs": {"type": "int", "low": 0, "high": 5}},
            r"params.training.epochs: 0 is refused: .*training.epochs",
        ),
        (
            {"training.augmentation": {"type": "categorical", "choices": []}},
            r"choices: List should have at least 1 item",
        ),
    ],
)
def test_bad_spaces_name_the_key(tmp_path, params, message):
    with pytest.raises(ConfigError, match=message):
        load_space(_write(tmp_path, {"params": params}))


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match="space.yaml: trials: unknown key"):
        load_space(_write(tmp_path, {"trials": 3, "params": {"training.lr": {"type": "float", "low": 0.1, "high": 1}}}))


def test_apply_overrides_keeps_the_rest_of_the_config():
    base = parse_config({"classes": ["a", "b"], "training": {"epochs": 7, "lr": 0.5}})
    config = apply_overrides(base, {"training.lr": 0.01, "uda.weight_adv": 0.003})
    assert config.training.lr == 0.01 and config.training.epochs == 7 and config.uda.weight_adv == 0.003
