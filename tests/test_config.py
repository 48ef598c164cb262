import pytest
import yaml

from microal.config import config_to_dict, load_config, parse_config
from microal.errors import ConfigError

MINIMAL = {"classes": ["ferrite", "cementite"]}


def test_minimal_config_gets_defaults():
    config = parse_config(MINIMAL)
    assert config.class_names == ["ferrite", "cementite"]
    assert config.training.encoder_lr_factor == 0.1  # Goetz et al. 2022's fine-tuning setting
    assert config.tiling.window % 32 == 0


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"training\.learning_rate: unknown key"):
        parse_config({**MINIMAL, "training": {"learning_rate": 0.1}})


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"training\.lr: .*greater than 0"):
        parse_config({**MINIMAL, "training": {"lr": -1}})


def test_window_must_suit_the_encoder():
    with pytest.raises(ConfigError, match=r"tile_size \+ 2\*margin = 120 must be a multiple of 32"):
        parse_config({**MINIMAL, "tiling": {"tile_size": 100, "margin": 10}})


def test_mask_colour_must_name_a_class():
    with pytest.raises(ConfigError, match="class 'bainite' is not in the class table"):
        parse_config({**MINIMAL, "ingest": {"mask_colors": [{"color": [1, 2, 3], "label": "bainite"}]}})


def test_fold_out_of_range():
    with pytest.raises(ConfigError, match="fold 5 is out of range"):
        parse_config({**MINIMAL, "split": {"n_folds": 5, "fold": 5}})


def test_round_trip_through_yaml(tmp_path):
    config = parse_config({**MINIMAL, "training": {"lr": 0.01, "epochs": 3}, "tiling": {"tile_size": 96, "margin": 16}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    assert load_config(path) == config


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("classes: [a, b\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="missing.yaml: cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_examples_are_valid():
    from conftest import REPO

    for path in sorted((REPO / "examples").glob("*.yaml")):
        assert load_config(path).num_classes >= 2, path


def test_settings_written_auto_are_left_to_the_plan():
    config = parse_config(
        {"classes": ["a", "b"], "tiling": {"tile_size": "auto", "margin": 16}, "training": {"class_weights": "auto"}}
    )
    assert config.auto == ["tiling.tile_size", "training.class_weights"]
    assert config.tiling.margin == 16
    everything = parse_config({"classes": ["a", "b"], "auto": "all", "training": {"lr": 0.01}})
    assert "training.lr" not in everything.auto and "tiling.tile_size" in everything.auto  # what the config sets stays
    with pytest.raises(ConfigError, match=r"auto: .*\['training.seed'\] cannot be planned"):
        parse_config({"classes": ["a", "b"], "auto": ["training.seed"]})


def test_a_value_given_later_is_no_longer_planned():
    from microal.config import apply_overrides

    config = parse_config({"classes": ["a", "b"], "auto": ["tiling.tile_size", "training.lr"]})
    config = apply_overrides(config, {"training.lr": 0.05})
    assert config.auto == ["tiling.tile_size"] and config.training.lr == 0.05


@pytest.mark.parametrize("budget, seconds", [("90s", 90), ("20min", 1200), ("1.5h", 5400), (" 3 m ", 180)])
def test_a_time_budget_is_a_duration(budget, seconds):
    assert parse_config({"classes": ["a", "b"], "training": {"budget": budget}}).training.budget_seconds == seconds


def test_a_budget_in_epochs_is_the_number_of_epochs_and_nonsense_is_refused():
    for budget in (40, "40", "40 epochs"):
        training = parse_config({"classes": ["a", "b"], "training": {"budget": budget}}).training
        assert (training.epochs, training.budget) == (40, None)
    with pytest.raises(ConfigError, match="training.budget: .*'soon' is not a duration such as 90s, 20min or 1.5h"):
        parse_config({"classes": ["a", "b"], "training": {"budget": "soon"}})
