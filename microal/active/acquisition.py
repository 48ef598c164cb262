"""Acquisition heuristics: small pure functions over ensemble probabilities.

Shape, written down once:

    probs: float array [members, tiles, classes, H, W]   (softmax outputs of each member)

A heuristic maps probs to an uncertainty map [tiles, H, W] (higher = more worth labelling);
a reduction turns that map into one score per tile [tiles]. Both live in registries whose
errors list the valid names.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from microal.errors import ConfigError

EPS = 1e-12


def _check(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 5:
        raise ValueError(f"probs must be [members, tiles, classes, H, W], got shape {probs.shape}")
    return probs


def _entropy(p: np.ndarray, axis: int) -> np.ndarray:
    return -(p * np.log(p + EPS)).sum(axis=axis)


def entropy(probs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Predictive entropy of the ensemble mean (total uncertainty), in nats."""
    return _entropy(_check(probs).mean(axis=0), axis=1)


def bald(probs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Mutual information between prediction and member (BALD): H(mean) - mean(H(member)).

    Zero when all members agree, however uncertain they are: it asks for disagreement.
    """
    probs = _check(probs)
    expected = _entropy(probs, axis=2).mean(axis=0)
    return np.maximum(entropy(probs) - expected, 0.0)


def variance(probs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Variance across members, averaged over classes."""
    return _check(probs).var(axis=0).mean(axis=1)


def margin(probs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """1 - (top-1 minus top-2 probability of the mean): near 1 where two classes compete."""
    mean = np.sort(_check(probs).mean(axis=0), axis=1)
    return 1.0 - (mean[:, -1] - mean[:, -2])


def random(probs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """The baseline: uniform noise, seeded by the caller's generator."""
    probs = _check(probs)
    rng = rng if rng is not None else np.random.default_rng()
    return rng.random((probs.shape[1],) + probs.shape[3:])


ACQUISITIONS: dict[str, Callable[..., np.ndarray]] = {
    "entropy": entropy,
    "bald": bald,
    "variance": variance,
    "margin": margin,
    "random": random,
}

# These measure how members disagree: with one member they are zero everywhere.
NEEDS_MEMBERS = {"bald", "variance"}


def score_scale(name: str, num_classes: int) -> float:
    """The largest value an acquisition can take (so a score can be shown in [0, 1])."""
    get_acquisition(name)
    return {"entropy": np.log(num_classes), "bald": np.log(num_classes), "variance": 0.25}.get(name, 1.0)


def reduce_mean(uncertainty: np.ndarray, top_fraction: float = 0.1) -> np.ndarray:
    return uncertainty.reshape(len(uncertainty), -1).mean(axis=1)


def reduce_max(uncertainty: np.ndarray, top_fraction: float = 0.1) -> np.ndarray:
    return uncertainty.reshape(len(uncertainty), -1).max(axis=1)


def reduce_topk_mean(uncertainty: np.ndarray, top_fraction: float = 0.1) -> np.ndarray:
    """Mean of the most uncertain `top_fraction` of pixels: a small unsure region counts."""
    flat = uncertainty.reshape(len(uncertainty), -1)
    k = max(1, int(round(flat.shape[1] * top_fraction)))
    return np.sort(flat, axis=1)[:, -k:].mean(axis=1)


REDUCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "mean": reduce_mean,
    "max": reduce_max,
    "topk_mean": reduce_topk_mean,
}


def _lookup(registry: dict, name: str, what: str):
    if name not in registry:
        raise ConfigError(f"unknown {what} {name!r}; valid: {sorted(registry)}")
    return registry[name]


def get_acquisition(name: str) -> Callable[..., np.ndarray]:
    return _lookup(ACQUISITIONS, name, "acquisition")


def get_reduction(name: str) -> Callable[..., np.ndarray]:
    return _lookup(REDUCTIONS, name, "reduction")


def tile_scores(
    probs: np.ndarray,
    acquisition: str,
    reduction: str = "mean",
    top_fraction: float = 0.1,
    rng: np.random.Generator | None = None,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """One score per tile. `valid` [tiles, H, W] marks pixels inside the image (padding ignored)."""
    uncertainty = get_acquisition(acquisition)(probs, rng=rng)
    if valid is not None:
        # Padding pixels take the tile's lowest score, so they never raise a tile's rank.
        floor = np.where(valid, uncertainty, np.inf).reshape(len(uncertainty), -1).min(axis=1)
        floor = np.where(np.isfinite(floor), floor, 0.0)
        uncertainty = np.where(valid, uncertainty, floor[:, None, None])
    return get_reduction(reduction)(uncertainty, top_fraction)
