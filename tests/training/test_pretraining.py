"""Encoder pre-training: the SimCLR loss in-process, both jobs on a local Ray, and the hand-over to fine-tuning."""

import pytest
import torch
from conftest import quick_config_dict

from microal.config import parse_config
from microal.errors import ConfigError
from microal.models.factory import build_model
from microal.training.pretraining import nt_xent


def test_nt_xent_rewards_matching_views():
    torch.manual_seed(0)
    z = torch.randn(16, 8)
    matched = nt_xent(z, z + 0.01 * torch.randn(16, 8), temperature=0.2)
    unmatched = nt_xent(z, torch.randn(16, 8), temperature=0.2)
    assert float(matched) < 0.5 < float(unmatched)


def _config(synth_dir, **pretrain):
    config = quick_config_dict(synth_dir)
    config["split"].pop("test")
    config["pretrain"] = {"epochs": 2, "batch_size": 8, "samples_per_epoch": 16, "augmentation": "basic", **pretrain}
    return parse_config(config)


def test_simclr_writes_an_encoder_that_training_accepts(ray_local, tiled, synth_dir):
    from microal.training.jobs import pretrain

    ws, _, _ = tiled
    config = _config(synth_dir, method="simclr")
    summary = pretrain(config, ws.tiles, ws.run("ssl"), str(ws.ray_storage), "ssl")
    assert summary.best_model.name == "best_encoder.pt"
    assert summary.history.epoch.tolist() == [1, 2] and summary.history.train_loss.gt(0).all()
    blob = torch.load(summary.best_model, map_location="cpu", weights_only=False)
    assert blob["method"] == "simclr" and blob["encoder_name"] == config.model.encoder

    fresh = build_model(config.model, 3)
    loaded = build_model(config.model.model_copy(update={"encoder_weights": str(summary.best_model)}), 3)
    changed = False
    for key, value in blob["encoder"].items():
        assert torch.equal(loaded.encoder.state_dict()[key], value)
        changed |= not torch.equal(fresh.encoder.state_dict()[key], value)
    assert changed, "pre-training did not change the encoder"


def test_classification_pretraining_on_an_image_label(ray_local, tiled, synth_dir):
    from microal.training.jobs import pretrain

    ws, _, _ = tiled
    summary = pretrain(
        _config(synth_dir, method="classification", label_column="domain"),
        ws.tiles,
        ws.run("cls"),
        str(ws.ray_storage),
        "cls",
    )
    blob = torch.load(summary.best_model, map_location="cpu", weights_only=False)
    assert blob["method"] == "classification" and set(blob["labels"].values()) == {0, 1}
    assert summary.history.val_accuracy.between(0, 1).all()


def test_classification_needs_two_label_values(tiled, synth_dir):
    from microal.training.jobs import pretrain

    ws, _, _ = tiled
    with pytest.raises(ConfigError, match="'detector_x'"):
        pretrain(
            _config(synth_dir, method="classification", label_column="detector_x"),
            ws.tiles,
            ws.run("bad"),
            str(ws.ray_storage),
            "bad",
        )
    assert not ws.run("bad").exists()
