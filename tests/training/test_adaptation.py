"""Domain adaptation: the pieces in-process, and whole AdaptSegNet / ADVENT jobs on a local Ray."""

import pandas as pd
import pytest
import torch
from conftest import uda_config_dict

from microal.config import ModelConfig, UdaConfig, parse_config
from microal.errors import ConfigError
from microal.inference.predict import predict_catalog
from microal.models.factory import build_model
from microal.models.model_file import DOMAIN_BN_KEY
from microal.training.adaptation import (
    Discriminators,
    MultiLevelSegmenter,
    adaptation_step,
    entropy_map,
    mean_entropy,
    poly_lr,
)
from microal.training.supervised import SegmentationLoss

SMALL = ModelConfig(options={"decoder_channels": [32, 16, 8, 8, 8]})


def test_entropy_map_bounds():
    uniform = torch.zeros(2, 3, 4, 4)
    assert torch.allclose(entropy_map(uniform).sum(1), torch.ones(2, 4, 4))
    confident = torch.zeros(2, 3, 4, 4)
    confident[:, 1] = 50.0
    assert float(mean_entropy(confident)) < 1e-6


def test_auxiliary_output_matches_the_main_one_in_shape():
    segmenter = MultiLevelSegmenter(build_model(SMALL, 3), 3, aux_level=-2)
    main, aux = segmenter(torch.zeros(2, 1, 64, 64))
    assert main.shape == aux.shape == (2, 3, 64, 64)


def test_poly_schedule():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    poly_lr(optimizer, [0.01], step=50, total=100, power=0.9)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**0.9)


@pytest.mark.parametrize("method", ["adaptsegnet", "advent", "source_only"])
def test_step_freezes_discriminators_while_the_segmenter_learns(method):
    torch.manual_seed(0)
    uda = UdaConfig(method=method, weight_adv=0.01, weight_adv_aux=0.002, target_domains=["B"])
    segmenter = MultiLevelSegmenter(build_model(SMALL, 3), 3)
    discriminators = Discriminators(3, 8)
    frozen_when_called = []
    discriminators.main.register_forward_pre_hook(
        lambda module, args: frozen_when_called.append(not any(p.requires_grad for p in module.parameters()))
    )
    seg_opt = torch.optim.SGD(segmenter.parameters(), lr=0.1)
    disc_opt = torch.optim.SGD(discriminators.parameters(), lr=0.1)
    seg_before = [p.detach().clone() for p in segmenter.parameters()]
    disc_before = [p.detach().clone() for p in discriminators.parameters()]
    xs, xt = torch.randn(2, 1, 64, 64), torch.randn(2, 1, 64, 64)
    ys = torch.randint(0, 3, (2, 64, 64))
    sums = adaptation_step(
        segmenter, discriminators, seg_opt, disc_opt, SegmentationLoss(1.0), xs, ys, xt, uda, margin=0
    )

    assert any(not torch.equal(a, b) for a, b in zip(seg_before, segmenter.parameters()))
    disc_changed = any(not torch.equal(a, b) for a, b in zip(disc_before, discriminators.parameters()))
    if method == "source_only":
        assert frozen_when_called == [] and not disc_changed and sums[1] == 0
    else:
        # First call: the segmenter's adversarial loss, discriminator frozen; second: its own update.
        assert frozen_when_called == [True, False]
        assert disc_changed and sums[1] > 0 and 0 <= sums[4] <= sums[5]
        assert all(p.requires_grad for p in discriminators.parameters())
    assert (sums[2] > 0) == (method == "advent")


def test_source_only_never_sees_the_target():
    """Not even in batch-norm statistics: the baseline must not be adapted by the back door."""
    uda = UdaConfig(method="source_only", target_domains=["B"])
    xs, ys = torch.randn(2, 1, 64, 64), torch.randint(0, 3, (2, 64, 64))
    states = []
    for xt in (torch.zeros(2, 1, 64, 64), 5 + 3 * torch.randn(2, 1, 64, 64)):
        torch.manual_seed(0)
        segmenter, discriminators = MultiLevelSegmenter(build_model(SMALL, 3), 3), Discriminators(3, 8)
        seg_opt = torch.optim.SGD(segmenter.parameters(), lr=0.1)
        disc_opt = torch.optim.SGD(discriminators.parameters(), lr=0.1)
        adaptation_step(segmenter, discriminators, seg_opt, disc_opt, SegmentationLoss(1.0), xs, ys, xt, uda, margin=0)
        states.append(segmenter.state_dict())
    assert states[0].keys() == states[1].keys()
    assert any(k.endswith("running_mean") for k in states[0])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def _uda_config(synth_dir, **uda):
    return parse_config(uda_config_dict(synth_dir, **uda))


def test_adaptsegnet_job_with_a_labelled_target_set(ray_local, tiled, synth_dir):
    ws, catalog, _ = tiled
    from microal.training.jobs import adapt

    b_images = catalog[catalog.domain == "B"].image_name.tolist()
    config = _uda_config(synth_dir, target_val={"column": "image_name", "values": b_images[:1]})
    summary = adapt(config, ws.tiles, ws.run("uda"), str(ws.ray_storage), "uda")
    history = summary.history
    assert history.epoch.tolist() == [1, 2]
    assert history.disc_accuracy.between(0, 1).all() and (history.train_adv_loss > 0).all()
    assert history.target_entropy.between(0, 1).all() and history.target_miou.between(0, 1).all()
    splits = pd.read_csv(ws.run("uda") / "splits.csv")
    assert set(splits[splits.domain == "B"].split) == {"target"}
    assert set(splits[splits.split == "train"].domain) == {"A"}
    # Both kept models carry batch-norm statistics of the target domain, estimated on its windows.
    for model_file in (summary.best_model, ws.run("uda") / "last_model.pt"):
        blob = torch.load(model_file, map_location="cpu", weights_only=False)
        target = blob[DOMAIN_BN_KEY]["B"]
        assert set(blob[DOMAIN_BN_KEY]) == {"B"} and set(target) < set(blob["state_dict"])
        assert not torch.equal(target["encoder.bn1.running_mean"], blob["state_dict"]["encoder.bn1.running_mean"])
    # The model file is a plain segmentation model: predict uses it as any other.
    table = predict_catalog(summary.best_model, catalog[catalog.domain == "B"], ws.predictions("uda"), progress=False)
    assert len(table) == len(b_images)


# ADVENT on two DDP workers (and its Train controller killed): tests/training/test_jobs.py.


def test_adaptation_config_errors(tiled, synth_dir):
    ws, _, _ = tiled
    from microal.training.jobs import adapt

    with pytest.raises(ConfigError, match="uda.target_domains: name the domain"):
        adapt(_uda_config(synth_dir, target_domains=[]), ws.tiles, ws.run("x"), str(ws.ray_storage), "x")
    with pytest.raises(ConfigError, match=r"domain\(s\) \['C'\] not in the tile set"):
        adapt(_uda_config(synth_dir, target_domains=["C"]), ws.tiles, ws.run("y"), str(ws.ray_storage), "y")
    with pytest.raises(ConfigError, match="target_miou needs uda.target_val"):
        adapt(_uda_config(synth_dir, select_by="target_miou"), ws.tiles, ws.run("z"), str(ws.ray_storage), "z")
