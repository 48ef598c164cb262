"""Every acquisition and reduction in the registries, on probabilities shaped [members, tiles, classes, H, W]."""

import numpy as np
import pytest
import torch

from microal.active.acquisition import ACQUISITIONS, REDUCTIONS, get_acquisition, get_reduction, tile_scores
from microal.errors import ConfigError

rng = np.random.default_rng(0)
M, N, C, H, W = 4, 5, 3, 6, 7


def _map(name, probs, **options):
    """The acquisition's uncertainty map (a torch tensor) as numpy."""
    return get_acquisition(name)(probs, **options).cpu().numpy()


def _random_probs(members=M):
    logits = rng.normal(size=(members, N, C, H, W)) * 2
    e = np.exp(logits)
    return e / e.sum(axis=2, keepdims=True)


@pytest.mark.parametrize("name", sorted(ACQUISITIONS))
def test_shape_and_non_negativity(name):
    uncertainty = _map(name, _random_probs(), rng=np.random.default_rng(1))
    assert uncertainty.shape == (N, H, W)
    assert np.all(uncertainty >= 0) and np.all(np.isfinite(uncertainty))


@pytest.mark.parametrize("name", sorted(ACQUISITIONS))
@pytest.mark.parametrize("reduction", sorted(REDUCTIONS))
def test_tile_scores_one_per_tile(name, reduction):
    scores = tile_scores(_random_probs(), name, reduction, rng=np.random.default_rng(2))
    assert scores.shape == (N,) and np.all(scores >= 0)


def test_identical_members_give_bald_and_variance_zero():
    one = _random_probs(members=1)
    same = np.repeat(one, M, axis=0)
    np.testing.assert_allclose(_map("bald", same), 0.0, atol=1e-9)
    np.testing.assert_allclose(_map("variance", same), 0.0, atol=1e-12)
    assert _map("entropy", same).max() > 0  # still uncertain, only not disagreeing


def test_uniform_probabilities_give_the_maximum_entropy_and_margin():
    uniform = np.full((M, N, C, H, W), 1.0 / C)
    np.testing.assert_allclose(_map("entropy", uniform), np.log(C))
    np.testing.assert_allclose(_map("margin", uniform), 1.0)
    for name in ("entropy", "margin"):
        assert _map(name, _random_probs()).max() <= _map(name, uniform).max() + 1e-9


def test_disagreement_raises_bald():
    confident_a = np.zeros((1, N, C, H, W))
    confident_a[:, :, 0] = 1.0
    confident_b = np.zeros((1, N, C, H, W))
    confident_b[:, :, 1] = 1.0
    split = np.concatenate([confident_a, confident_b])
    np.testing.assert_allclose(_map("bald", split), np.log(2), atol=1e-6)


def test_random_is_seeded():
    probs = _random_probs()
    first = _map("random", probs, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(first, _map("random", probs, rng=np.random.default_rng(7)))


def test_reductions():
    maps = torch.arange(2 * 10, dtype=torch.float64).reshape(2, 2, 5)
    assert get_reduction("mean")(maps).tolist() == [4.5, 14.5]
    assert get_reduction("max")(maps).tolist() == [9.0, 19.0]
    assert get_reduction("topk_mean")(maps, top_fraction=0.2).tolist() == [8.5, 18.5]


def test_padding_never_raises_a_score():
    probs = np.full((M, 2, C, H, W), 1.0 / C)
    probs[:, :, :, :, :3] = np.eye(C)[0][None, None, :, None, None]  # confident on the left part
    valid = np.zeros((2, H, W), dtype=bool)
    valid[:, :, :3] = True  # only the confident part is inside the image
    assert np.allclose(tile_scores(probs, "entropy", "max", valid=valid), 0.0, atol=1e-9)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(
        ConfigError, match=r"unknown acquisition 'bold'; valid: \['bald', 'entropy', 'margin', 'random', 'variance'\]"
    ):
        get_acquisition("bold")
    with pytest.raises(ConfigError, match="unknown reduction 'median'"):
        get_reduction("median")


def test_maps_are_computed_on_the_device_of_the_probabilities_and_match_numpy():
    probs = _random_probs()
    on_device = torch.as_tensor(probs, dtype=torch.float32)
    # The float64 numpy path and the float32 tensor path agree; a tensor stays a tensor.
    for name in ("entropy", "bald", "variance", "margin"):
        result = get_acquisition(name)(on_device)
        assert isinstance(result, torch.Tensor) and result.dtype == torch.float32
        np.testing.assert_allclose(result.numpy(), _map(name, probs), rtol=1e-4, atol=1e-6)
    half = get_acquisition("entropy")(on_device.to(torch.bfloat16))
    assert half.dtype == torch.float32  # reduced-precision probabilities are scored in fp32
    # Variance is the population variance over members, as numpy's default.
    np.testing.assert_allclose(_map("variance", probs), probs.var(axis=0).mean(axis=1), rtol=1e-12)


def test_class_balanced_scores_rank_doubt_about_a_rare_class_first():
    # Two tiles, equally uncertain: one between classes 0 and 1 (common), one between 0 and 2 (rare).
    probs = np.zeros((1, 2, C, H, W))
    probs[:, 0, 0], probs[:, 0, 1] = 0.5, 0.5
    probs[:, 1, 0], probs[:, 1, 2] = 0.5, 0.5
    plain = tile_scores(probs, "entropy")
    np.testing.assert_allclose(plain[0], plain[1])
    weights = np.array([0.5, 1.0, 4.0])
    balanced = tile_scores(probs, "entropy", class_weights=weights)
    assert balanced[1] > balanced[0]
    # Each pixel's weight is the class weight the mean prediction expects there.
    np.testing.assert_allclose(balanced, plain * np.array([0.75, 2.25]), rtol=1e-6)
    # The random baseline is not weighted: the same draws with or without weights.
    np.testing.assert_array_equal(
        tile_scores(probs, "random", rng=np.random.default_rng(3)),
        tile_scores(probs, "random", rng=np.random.default_rng(3), class_weights=weights),
    )
    with pytest.raises(ValueError, match="one weight per class"):
        tile_scores(probs, "entropy", class_weights=np.ones(C + 1))
