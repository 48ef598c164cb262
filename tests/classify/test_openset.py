"""The open set: mixtures per class, a threshold set on validation crops, "none" far from all."""

import numpy as np
import pytest

from microal.classify.openset import fit_open_set


def _clusters(rng, n):
    a = rng.normal([0, 0], 0.3, size=(n, 2))
    b = rng.normal([4, 0], 0.3, size=(n, 2))
    return np.concatenate([a, b]), np.repeat([0, 1], n)


def test_crops_near_a_class_get_it_and_crops_far_from_all_are_none():
    rng = np.random.default_rng(0)
    x, y = _clusters(rng, 200)
    val_x, val_y = _clusters(rng, 100)
    open_set = fit_open_set(x, y, ["a", "b"], components=2, none_quantile=0.05, val_descriptors=val_x, val_labels=val_y)
    assert open_set.threshold_from == "validation"
    probe = np.array([[0.1, 0.0], [3.9, 0.1], [2.0, 6.0]])
    dist = open_set.crop_distribution(probe)
    assert dist.shape == (3, 3)
    assert dist[0].argmax() == 0 and dist[1].argmax() == 1 and dist[2].argmax() == 2  # last column: none
    assert np.allclose(dist.sum(axis=1), 1)
    # the threshold accepts about 95% of new crops of known classes
    fresh, _ = _clusters(rng, 1000)
    accepted = 1 - open_set.crop_distribution(fresh)[:, -1].mean()
    assert 0.9 < accepted < 0.99


def test_a_class_without_training_crops_is_never_chosen():
    rng = np.random.default_rng(1)
    x, y = _clusters(rng, 50)
    open_set = fit_open_set(x, y, ["a", "b", "c"], components=1, none_quantile=0.0)
    assert open_set.mixtures[2] is None and open_set.threshold == -np.inf and open_set.threshold_from == "training"
    assert open_set.crop_distribution(x)[:, 2].max() == 0


def test_the_none_quantile_moves_the_threshold():
    rng = np.random.default_rng(2)
    x, y = _clusters(rng, 200)
    loose = fit_open_set(x, y, ["a", "b"], 1, 0.01, x, y)
    strict = fit_open_set(x, y, ["a", "b"], 1, 0.3, x, y)
    assert strict.threshold > loose.threshold
    assert strict.crop_distribution(x)[:, -1].mean() == pytest.approx(0.3, abs=0.02)


def test_the_torch_log_likelihood_matches_the_mixture_and_has_gradients():
    import torch

    rng = np.random.default_rng(3)
    x, y = _clusters(rng, 100)
    open_set = fit_open_set(x, y, ["a", "b"], components=2, none_quantile=0.05)
    probe = torch.tensor(rng.normal(size=(5, 2)), requires_grad=True)
    value = open_set.class_log_likelihood_torch(probe, 1)
    np.testing.assert_allclose(value.detach().numpy(), open_set.log_likelihoods(probe.detach().numpy())[:, 1])
    value.sum().backward()
    assert probe.grad is not None and torch.isfinite(probe.grad).all()
