import pytest
import torch

from microal.config import ModelConfig
from microal.errors import ConfigError, InputError
from microal.models.factory import build_model, load_model_weights, parameter_groups

SMALL = {"decoder_channels": [32, 16, 8, 8, 8]}


def test_one_channel_model_predicts_every_class():
    net = build_model(ModelConfig(options=SMALL), num_classes=4)
    assert net(torch.zeros(2, 1, 64, 64)).shape == (2, 4, 64, 64)


def test_unknown_choices_name_the_valid_ones():
    with pytest.raises(
        ConfigError, match="model.arch: unknown architecture 'unet3' ; valid: .*'unet'".replace(" ;", ";")
    ):
        build_model(ModelConfig(arch="unet3"), 2)
    with pytest.raises(ConfigError, match="model.encoder: unknown encoder 'resnet9'"):
        build_model(ModelConfig(encoder="resnet9"), 2)
    with pytest.raises(ConfigError, match=r"unknown encoder 'tu-resnet9'.*tu-<name> for a timm model"):
        build_model(ModelConfig(encoder="tu-resnet9"), 2)


def test_a_timm_model_is_an_encoder_by_its_tu_name():
    from microal.config import ClassifyConfig
    from microal.models.embedding import build_embedding_net

    net = build_embedding_net(ModelConfig(encoder="tu-regnetx_002"), ClassifyConfig(), classes=3)
    descriptors, logits = net.eval()(torch.zeros(2, 1, 64, 64), torch.zeros(2), with_logits=True)
    assert descriptors.shape == (2, 2) and logits.shape == (2, 3)


def test_local_encoder_checkpoint_is_loaded(tmp_path):
    source = build_model(ModelConfig(options=SMALL), 3)
    path = tmp_path / "encoder.pt"
    torch.save({"encoder": source.encoder.state_dict()}, path)
    net = build_model(ModelConfig(encoder_weights=str(path), options=SMALL), 3)
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(net.encoder.state_dict()[key], value), key


def test_rgb_encoder_checkpoint_is_folded_to_one_channel(tmp_path):
    import segmentation_models_pytorch as smp

    rgb = smp.create_model("unet", encoder_name="resnet18", encoder_weights=None, in_channels=3, classes=2)
    torch.save(rgb.encoder.state_dict(), tmp_path / "rgb.pt")
    net = build_model(ModelConfig(encoder_weights=str(tmp_path / "rgb.pt")), 2)
    expected = rgb.encoder.conv1.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(net.encoder.conv1.weight, expected)


def test_bad_checkpoints_are_explained(tmp_path):
    with pytest.raises(InputError, match="missing.pt: encoder checkpoint file does not exist"):
        build_model(ModelConfig(encoder_weights=str(tmp_path / "missing.pt")), 2)
    torch.save({"encoder": {"conv1.weight": torch.zeros(1)}}, tmp_path / "wrong.pt")
    with pytest.raises(InputError, match="wrong.pt: encoder checkpoint does not fit model.encoder"):
        build_model(ModelConfig(encoder_weights=str(tmp_path / "wrong.pt")), 2)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.pt: cannot load encoder checkpoint"):
        build_model(ModelConfig(encoder_weights=str(tmp_path / "junk.pt")), 2)


def test_a_model_to_start_from_must_fit(tmp_path):
    small = build_model(ModelConfig(encoder_weights="none"), 2)
    torch.save({"state_dict": small.state_dict()}, tmp_path / "two.pt")
    fresh = build_model(ModelConfig(encoder_weights="none"), 2)
    load_model_weights(fresh, tmp_path / "two.pt")
    assert torch.equal(fresh.encoder.conv1.weight, small.encoder.conv1.weight)
    with pytest.raises(InputError, match="two.pt: model file does not fit the configured model"):
        load_model_weights(build_model(ModelConfig(encoder_weights="none"), 3), tmp_path / "two.pt")
    with pytest.raises(InputError, match="gone.pt: model file to start from does not exist"):
        load_model_weights(fresh, tmp_path / "gone.pt")


def test_encoder_learning_rate_is_the_decoder_rate_times_the_factor():
    net = build_model(ModelConfig(options=SMALL), 2)
    groups = parameter_groups(net, lr=1e-3, encoder_lr_factor=0.1)
    assert [g["name"] for g in groups] == ["encoder", "decoder"]
    assert groups[0]["lr"] == pytest.approx(1e-4) and groups[1]["lr"] == pytest.approx(1e-3)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in net.parameters())
