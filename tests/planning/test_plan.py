"""The plan's rules on given fingerprints, settings the config keeps, cached pretrained weights,
and the plan through the command line (`microal plan`, `tile`, and `train` refusing a tile set
cut with another tiling)."""

import pytest
import torch
import yaml

from microal.config import ENCODER_STRIDE, parse_config
from microal.errors import ConfigError
from microal.planning.fingerprint import ClassStats, Fingerprint
from microal.planning.plan import make_plan


def _print(um_per_px=(None,) * 4, side=(484, 645), diameters=(None, 30.0, 12.0), shares=(0.7, 0.28, 0.02), train=3):
    classes = [ClassStats(f"c{i}", share, train, d, d is None) for i, (d, share) in enumerate(zip(diameters, shares))]
    n = len(um_per_px)
    return Fingerprint(
        images=n,
        train_images=train,
        val_images=1,
        unlabelled_images=0,
        um_per_px=list(um_per_px),
        heights=[side[0]] * n,
        widths=[side[1]] * n,
        train_pixels=train * side[0] * side[1],
        val_pixels=side[0] * side[1],
        classes=classes,
    )


def _config(**settings):
    data = {"classes": ["c0", "c1", "c2"], "auto": "all", "training": {"budget": "10min"}}
    for key, value in settings.items():
        section, leaf = key.split("__")
        data.setdefault(section, {})[leaf] = value
    return parse_config(data)


def test_pixel_sizes_decide_the_scale():
    assert make_plan(_config(), _print()).value("tiling.target_um_per_px") is None  # unknown
    assert make_plan(_config(), _print(um_per_px=(0.1, 0.11, 0.12, 0.1))).value("tiling.target_um_per_px") is None
    plan = make_plan(_config(), _print(um_per_px=(0.1, 0.2, 0.3, 0.4)))
    assert plan.value("tiling.target_um_per_px") == pytest.approx(0.25)  # the median


@pytest.mark.parametrize(
    "side, width", [((484, 645), 30.0), ((484, 645), 100.0), ((200, 900), 60.0), ((2000, 2000), 500.0)]
)
def test_windows_fit_the_encoder_the_structures_and_the_images(side, width):
    plan = make_plan(_config(), _print(side=side, diameters=(None, width, 10.0)))
    tile, margin = plan.value("tiling.tile_size"), plan.value("tiling.margin")
    window = tile + 2 * margin
    assert window % ENCODER_STRIDE == 0 and 16 <= margin <= window // 8 + 15
    assert window <= min(side) and window <= 512
    assert window >= min(256, min(side) // 32 * 32)
    if 4 * width <= min(512, min(side)):
        assert window >= 4 * width  # four widths of the widest structure across
    batch = plan.value("training.batch_size")
    assert 4 <= batch <= 16 and batch * window**2 <= max(8 * 256 * 256 * 1.5, 4 * window**2)
    per_epoch = plan.value("training.samples_per_epoch")
    assert per_epoch % batch == 0 and per_epoch >= 4 * batch


def test_a_cpu_gets_a_slim_full_resolution_decoder():
    assert make_plan(_config(), _print()).value("model.options") == {"decoder_channels": [256, 128, 64, 16, 8]}
    assert make_plan(_config(training__use_gpu=True), _print()).value("model.options") == {}


def test_rare_classes_get_balanced_weights_and_few_images_strong_augmentation():
    plan = make_plan(_config(), _print())
    assert plan.value("training.class_weights") == "balanced"
    assert "c2 is 2.0% of the training pixels" in next(c.reason for c in plan.choices if c.key.endswith("weights"))
    assert plan.value("training.augmentation") == "extended"
    common = make_plan(_config(), _print(shares=(0.4, 0.3, 0.3), train=500))
    assert common.value("training.class_weights") == "none" and common.value("training.augmentation") == "basic"


def test_predictions_average_the_views_training_augmented_with():
    assert make_plan(_config(), _print()).value("model.tta") == "dihedral"  # extended: flips and rotations
    assert make_plan(_config(training__augmentation="none"), _print()).value("model.tta") == "none"


def test_a_setting_the_config_gives_is_kept_and_later_choices_build_on_it():
    plan = make_plan(_config(tiling__tile_size=96, tiling__margin=16), _print())
    kept = next(c for c in plan.choices if c.key == "tiling.tile_size")
    assert kept.value == 96 and not kept.planned and kept.reason.startswith("the plan would choose ")
    assert "tiling.tile_size" not in plan.overrides()
    batch = plan.value("training.batch_size")
    assert plan.value("training.samples_per_epoch") >= 3 * 484 * 645 / 96**2 // batch * batch


def test_epochs_come_from_a_time_budget_only():
    plan = make_plan(_config(), _print())
    assert plan.value("training.epochs") >= 1000  # the probe decides; this only caps
    with pytest.raises(ConfigError, match="training.epochs: auto needs training.budget"):
        make_plan(parse_config({"classes": ["c0", "c1", "c2"], "training": {"epochs": "auto"}}), _print())


def test_pretrained_weights_in_the_cache_are_chosen_with_a_gentler_encoder_rate(tmp_path, monkeypatch):
    import segmentation_models_pytorch as smp

    from microal.models.weights import import_file

    monkeypatch.setenv("MICROAL_WEIGHTS_CACHE", str(tmp_path / "cache"))
    assert make_plan(_config(), _print()).value("model.encoder_weights") == "none"
    file = tmp_path / "resnet18_pretrained_microscopynet_v1.0.pth.tar"
    torch.save(smp.encoders.get_encoder("resnet18", weights=None).state_dict(), file)
    import_file(file, "resnet18", "micronet")
    plan = make_plan(_config(), _print())
    assert plan.value("model.encoder_weights") == "micronet"
    assert plan.value("training.encoder_lr_factor") == 0.1 and plan.value("training.lr") == 1e-3


def test_plan_and_tile_on_the_command_line_and_train_refuses_a_tile_set_cut_otherwise(synth_dir, tmp_path):
    from microal.cli.main import main
    from microal.training.jobs import planned_config

    config = yaml.safe_load((synth_dir / "microal.yaml").read_text())
    config.pop("tiling")
    config["split"]["n_folds"] = 2
    config.update(auto=["tiling.tile_size", "tiling.margin", "training.batch_size"])
    (tmp_path / "auto.yaml").write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    args = ["--config", str(tmp_path / "auto.yaml"), "--workdir", str(work)]
    assert main(["ingest", str(synth_dir / "manifest.csv"), *args]) == 0
    assert main(["plan", *args]) == 0
    written = yaml.safe_load((work / "plan.yaml").read_text())
    planned = {c["key"]: c for c in written["choices"] if c["planned"]}
    assert set(planned) == {"tiling.tile_size", "tiling.margin", "training.batch_size"}
    assert all(c["reason"] for c in written["choices"]) and written["fingerprint"]["train_images"] > 0
    assert (
        written["config"]["auto"] == []
        and written["config"]["tiling"]["tile_size"] == planned["tiling.tile_size"]["value"]
    )
    assert main(["tile", *args]) == 0
    tiling = yaml.safe_load((work / "tiles" / "tiling.json").read_text())
    assert (
        tiling["tile_size"] == planned["tiling.tile_size"]["value"]
        and tiling["margin"] == planned["tiling.margin"]["value"]
    )

    resolved = planned_config(parse_config(config), work / "tiles", tmp_path / "run")
    assert resolved.auto == [] and (tmp_path / "run" / "plan.yaml").exists()
    config["tiling"] = {"tile_size": 64, "margin": 16, "target_um_per_px": 0.125}
    config["auto"] = []
    assert main(["tile", "--config", str(_write(tmp_path / "fixed.yaml", config)), "--workdir", str(work)]) == 0
    config["auto"] = ["tiling.tile_size"]
    config["tiling"].pop("tile_size")
    with pytest.raises(ConfigError, match="tiling.tile_size: the plan chooses .* but the tile set .* was cut with 64"):
        planned_config(parse_config(config), work / "tiles", tmp_path / "run2")


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path
