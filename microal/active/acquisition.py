"""Acquisition heuristics: small pure functions over ensemble probabilities.

Shape, written down once:

    probs: float tensor [members, tiles, classes, H, W]   (softmax outputs of each member)

Written in torch, so maps are computed where the probabilities are (on the GPU when scoring
there); numpy arrays are accepted too. A heuristic maps probs to an uncertainty map
[tiles, H, W] (higher = more worth labelling); a reduction turns that map into one score per
tile [tiles]. Both live in registries whose errors list the valid names.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from microal.errors import ConfigError

EPS = 1e-12
Probabilities = torch.Tensor | np.ndarray


def _check(probs: Probabilities) -> torch.Tensor:
    """A tensor on the device it came on (a numpy array: on the CPU), in at least fp32."""
    probs = torch.as_tensor(probs)
    if probs.ndim != 5:
        raise ValueError(f"probs must be [members, tiles, classes, H, W], got shape {tuple(probs.shape)}")
    return probs.float() if probs.dtype in (torch.float16, torch.bfloat16) else probs


def _entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    return -(p * torch.log(p + EPS)).sum(dim=dim)


def entropy(probs: Probabilities, rng: np.random.Generator | None = None) -> torch.Tensor:
    """Predictive entropy of the ensemble mean (total uncertainty), in nats."""
    return _entropy(_check(probs).mean(dim=0), dim=1)


def bald(probs: Probabilities, rng: np.random.Generator | None = None) -> torch.Tensor:
    """Mutual information between prediction and member (BALD): H(mean) - mean(H(member)).

    Zero when all members agree, however uncertain they are: it asks for disagreement.
    """
    probs = _check(probs)
    expected = _entropy(probs, dim=2).mean(dim=0)
    return torch.clamp(entropy(probs) - expected, min=0.0)


def variance(probs: Probabilities, rng: np.random.Generator | None = None) -> torch.Tensor:
    """Variance across members, averaged over classes."""
    return _check(probs).var(dim=0, unbiased=False).mean(dim=1)


def margin(probs: Probabilities, rng: np.random.Generator | None = None) -> torch.Tensor:
    """1 - (top-1 minus top-2 probability of the mean): near 1 where two classes compete."""
    top2 = torch.topk(_check(probs).mean(dim=0), 2, dim=1).values
    return 1.0 - (top2[:, 0] - top2[:, 1])


def random(probs: Probabilities, rng: np.random.Generator | None = None) -> torch.Tensor:
    """The baseline: uniform noise, seeded by the caller's generator."""
    probs = _check(probs)
    rng = rng if rng is not None else np.random.default_rng()
    noise = rng.random((probs.shape[1],) + tuple(probs.shape[3:]))
    return torch.from_numpy(noise).to(device=probs.device, dtype=probs.dtype)


ACQUISITIONS: dict[str, Callable[..., torch.Tensor]] = {
    "entropy": entropy,
    "bald": bald,
    "variance": variance,
    "margin": margin,
    "random": random,
}

# These measure how members disagree: with one member they are zero everywhere.
NEEDS_MEMBERS = {"bald", "variance"}

# Acquisitions over the pool's embeddings, not over probabilities (active/selection.py):
# typiclust, the most typical tile of each cluster not yet covered by a label (Hacohen et al.,
# ICML 2022: at small budgets typical tiles teach more than uncertain ones).
EMBEDDING_ACQUISITIONS = {"typiclust"}


def score_scale(name: str, num_classes: int) -> float:
    """The largest value an acquisition can take (so a score can be shown in [0, 1])."""
    if name in EMBEDDING_ACQUISITIONS:
        return 1.0
    get_acquisition(name)
    return {"entropy": np.log(num_classes), "bald": np.log(num_classes), "variance": 0.25}.get(name, 1.0)


def class_weight_map(probs: Probabilities, class_weights: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[tiles, H, W]: each pixel's class weight as the ensemble expects it, sum_c mean_p(c) x w_c.

    Multiplying an uncertainty map by it is class-balanced acquisition (after Cai et al., CVPR
    2021): doubt about a phase that is rare among the labels so far counts more than doubt
    about the matrix, so rare phases reach the labelled set sooner; mIoU weighs every class the
    same, a pixel count does not."""
    mean = _check(probs).mean(dim=0)
    weights = torch.as_tensor(class_weights, device=mean.device, dtype=mean.dtype)
    if weights.shape != (mean.shape[1],):
        raise ValueError(f"class_weights must have one weight per class ({mean.shape[1]}), got {tuple(weights.shape)}")
    return torch.einsum("nchw,c->nhw", mean, weights)


def _flat(uncertainty: Probabilities) -> torch.Tensor:
    uncertainty = torch.as_tensor(uncertainty)
    return uncertainty.reshape(len(uncertainty), -1)


def reduce_mean(uncertainty: Probabilities, top_fraction: float = 0.1) -> torch.Tensor:
    return _flat(uncertainty).mean(dim=1)


def reduce_max(uncertainty: Probabilities, top_fraction: float = 0.1) -> torch.Tensor:
    return _flat(uncertainty).amax(dim=1)


def reduce_topk_mean(uncertainty: Probabilities, top_fraction: float = 0.1) -> torch.Tensor:
    """Mean of the most uncertain `top_fraction` of pixels: a small unsure region counts."""
    flat = _flat(uncertainty)
    k = max(1, int(round(flat.shape[1] * top_fraction)))
    return torch.topk(flat, k, dim=1).values.mean(dim=1)


REDUCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "mean": reduce_mean,
    "max": reduce_max,
    "topk_mean": reduce_topk_mean,
}


def _lookup(registry: dict, name: str, what: str):
    if name not in registry:
        raise ConfigError(f"unknown {what} {name!r}; valid: {sorted(registry)}")
    return registry[name]


def get_acquisition(name: str) -> Callable[..., torch.Tensor]:
    return _lookup(ACQUISITIONS, name, "acquisition")


def get_reduction(name: str) -> Callable[..., torch.Tensor]:
    return _lookup(REDUCTIONS, name, "reduction")


def tile_scores(
    probs: Probabilities,
    acquisition: str,
    reduction: str = "mean",
    top_fraction: float = 0.1,
    rng: np.random.Generator | None = None,
    valid: np.ndarray | torch.Tensor | None = None,
    class_weights: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """One score per tile (computed where `probs` lie, e.g. on the GPU; only the scores come
    back). `valid` [tiles, H, W] marks pixels inside the image (padding ignored). With
    `class_weights` [classes], each pixel's uncertainty is weighted by its expected class weight
    (class_weight_map); the random baseline stays uniform."""
    uncertainty = get_acquisition(acquisition)(probs, rng=rng)
    if class_weights is not None and acquisition != "random":
        uncertainty = uncertainty * class_weight_map(probs, class_weights)
    if valid is not None:
        valid = torch.as_tensor(valid, device=uncertainty.device, dtype=torch.bool)
        # Padding pixels take the tile's lowest score, so they never raise a tile's rank.
        inf = torch.full_like(uncertainty, float("inf"))
        floor = torch.where(valid, uncertainty, inf).reshape(len(uncertainty), -1).amin(dim=1)
        floor = torch.where(torch.isfinite(floor), floor, torch.zeros_like(floor))
        uncertainty = torch.where(valid, uncertainty, floor[:, None, None])
    return get_reduction(reduction)(uncertainty, top_fraction).cpu().numpy()
