"""Batch-norm statistics per domain: estimated on a domain's windows, swapped in to predict."""

import numpy as np
import pytest
import torch
from conftest import quick_config_dict

from microal.config import parse_config
from microal.errors import InputError
from microal.inference.predict import predict_probabilities
from microal.models.domain_bn import check_statistics, domain_statistics, estimate_statistics
from microal.models.factory import build_model
from microal.models.model_file import DOMAIN_BN_KEY, load_model, save_model_file


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3),
        torch.nn.BatchNorm2d(3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(3, 2, 1),
        torch.nn.BatchNorm2d(2),
    )


def test_statistics_are_those_of_the_windows_and_leave_the_network_as_it_was():
    net = _net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = [torch.randn(4, 1, 8, 8) * 3 + 5 for _ in range(3)]
    stats = estimate_statistics(net, batches)
    # The first layer's statistics: the mean of its input over every window of every batch.
    conv_out = torch.cat([net[0](b) for b in batches]).detach()
    assert torch.allclose(stats["1.running_mean"], conv_out.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not torch.allclose(stats["1.running_mean"], before["1.running_mean"])
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and not net.training
    assert net[1].momentum == 0.1  # the cumulative average was only for the estimate

    x = torch.randn(2, 1, 8, 8)
    own = net(x)
    with domain_statistics(net, stats):
        shifted = net(x)
    assert not torch.allclose(own, shifted) and torch.equal(net(x), own)  # swapped in, then restored
    with domain_statistics(net, None):
        assert torch.equal(net(x), own)
    with pytest.raises(ValueError, match="no windows"):
        estimate_statistics(net, [])
    with pytest.raises(ValueError, match="wrong shape"):
        check_statistics(net, {**stats, "1.running_mean": torch.zeros(5)})


def test_prediction_uses_the_statistics_of_the_image_domain(synth_dir, tmp_path):
    config = parse_config(quick_config_dict(synth_dir))
    torch.manual_seed(0)
    net = build_model(config.model.model_copy(update={"encoder_weights": "none"}), config.num_classes).eval()
    path = tmp_path / "model.pt"
    save_model_file(path, net, config, 1, {}, [])
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    plain = predict_probabilities(load_model(path), image, 0.125, domain="B")

    target = estimate_statistics(net, [torch.randn(8, 1, 64, 64) * 4 + 2])
    blob = torch.load(path, weights_only=False)
    blob[DOMAIN_BN_KEY] = {"B": target}
    torch.save(blob, path)
    model = load_model(path)
    assert np.allclose(predict_probabilities(model, image, 0.125, domain="A"), plain, atol=1e-6)  # source: as before
    adapted = predict_probabilities(model, image, 0.125, domain="B")
    assert not np.allclose(adapted, plain, atol=1e-3)
    assert np.allclose(predict_probabilities(model, image, 0.125, domain="A"), plain, atol=1e-6)  # restored after B

    blob[DOMAIN_BN_KEY] = {"B": {k: v for k, v in target.items() if "decoder" not in k}}
    torch.save(blob, path)
    with pytest.raises(InputError, match="model.pt: domain 'B': batch-norm statistics do not fit the network"):
        load_model(path)
