"""The model file: one owner for saving, loading and extending a trained model."""

import pytest
import torch

from microal.config import parse_config
from microal.errors import InputError
from microal.models.domain_bn import current_statistics
from microal.models.factory import build_model, load_model_weights
from microal.models.model_file import (
    DOMAIN_BN_KEY,
    MODEL_FORMAT,
    add_domain_bn_statistics,
    load_model,
    read_history,
    read_metrics,
    read_model_file,
    save_model_file,
)


@pytest.fixture
def saved(tmp_path):
    config = parse_config({"classes": ["a", "b", "c"], "model": {"encoder": "resnet18"}})
    torch.manual_seed(0)
    net = build_model(config.model, config.num_classes)
    path = tmp_path / "model.pt"
    history = [{"epoch": 1, "val_miou": 0.4}, {"epoch": 2, "val_miou": 0.5}]
    save_model_file(path, net, config, 2, {"val_miou": 0.5}, history, {"A": (0.4, 0.2)})
    return path, net, config, history


def test_a_saved_model_loads_with_its_config_history_and_statistics(saved):
    path, net, config, history = saved
    model = load_model(path)
    assert model.config == config and model.epoch == 2 and model.domain_stats == {"A": (0.4, 0.2)}
    for name, value in net.state_dict().items():
        assert torch.equal(model.net.state_dict()[name], value)
    assert read_history(path) == history and read_metrics(path) == {"val_miou": 0.5}
    assert read_model_file(path)["format"] == MODEL_FORMAT
    fresh = build_model(config.model, config.num_classes)
    load_model_weights(fresh, path)  # a model file is also a start for fine-tuning
    assert torch.equal(fresh.encoder.conv1.weight, net.encoder.conv1.weight)


def test_a_newer_format_is_refused_with_a_clear_message(saved):
    path, _, _, _ = saved
    blob = torch.load(path, weights_only=False)
    blob["format"] = "microal-model/99"
    torch.save(blob, path)
    for read in (load_model, read_model_file, read_metrics, read_history):
        with pytest.raises(
            InputError, match=r"model.pt: written by a newer microal \(format microal-model/99\).*upgrade"
        ):
            read(path)
    with pytest.raises(InputError, match="newer microal"):
        load_model_weights(build_model(parse_config({"classes": ["a", "b", "c"]}).model, 3), path)


def test_domain_statistics_are_added_without_touching_the_rest(saved):
    path, net, _, history = saved
    statistics = {"B": current_statistics(net)}
    add_domain_bn_statistics(path, statistics)
    blob = read_model_file(path)
    assert set(blob[DOMAIN_BN_KEY]) == {"B"} and blob["history"] == history
    assert set(load_model(path).bn_stats) == {"B"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temporary file left behind


def test_a_foreign_file_is_not_a_model_file(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(InputError, match="list.pt: not a microal model file"):
        read_model_file(tmp_path / "list.pt")
    with pytest.raises(InputError, match="gone.pt: model file does not exist"):
        read_metrics(tmp_path / "gone.pt")
