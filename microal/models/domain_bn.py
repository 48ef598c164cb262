"""Batch-normalisation statistics per domain (AdaBN, Li et al. 2016).

A network's batch-norm layers normalise with running means and variances collected on the
training images. On another microscope or etching those statistics are off, and re-estimating
them on the target domain's own (unlabelled) windows is the cheapest adaptation there is. A model
file keeps one set per target domain (``model_file.add_domain_bn_statistics``); prediction swaps in the set of the
image's domain and leaves the source statistics for every other image.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _batchnorm_layers(net: torch.nn.Module) -> dict[str, torch.nn.modules.batchnorm._BatchNorm]:
    return {name: m for name, m in net.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


def current_statistics(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{buffer}": getattr(m, buffer).detach().clone()
        for name, m in _batchnorm_layers(net).items()
        for buffer in _BUFFERS
    }


def check_statistics(net: torch.nn.Module, stats: dict[str, torch.Tensor]) -> None:
    """ValueError unless `stats` has every batch-norm buffer of `net`, each of the right shape."""
    own = current_statistics(net)
    missing = sorted(k for k in own if k not in stats)
    wrong = sorted(k for k in own if k in stats and tuple(stats[k].shape) != tuple(own[k].shape))
    if missing or wrong:
        raise ValueError(
            f"batch-norm statistics do not fit the network (missing {missing[:3]}, wrong shape {wrong[:3]})"
        )


def load_statistics(net: torch.nn.Module, stats: dict[str, torch.Tensor]) -> None:
    check_statistics(net, stats)
    layers = _batchnorm_layers(net)
    for name, m in layers.items():
        for buffer in _BUFFERS:
            getattr(m, buffer).copy_(stats[f"{name}.{buffer}"])


@torch.no_grad()
def estimate_statistics(net: torch.nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Batch-norm statistics of the given input batches (an average over all of them); the
    network's own statistics, weights and mode are left as they were."""
    layers = _batchnorm_layers(net)
    saved, momenta, was_training = current_statistics(net), {n: m.momentum for n, m in layers.items()}, net.training
    try:
        for m in layers.values():
            m.reset_running_stats()
            m.momentum = None  # a cumulative average, not an exponential one
        net.train()
        seen = 0
        for images in batches:
            net(images)
            seen += len(images)
        if seen == 0:
            raise ValueError("no windows to estimate batch-norm statistics from")
        return current_statistics(net)
    finally:
        load_statistics(net, saved)
        for name, m in layers.items():
            m.momentum = momenta[name]
        net.train(was_training)


@contextmanager
def domain_statistics(net: torch.nn.Module, stats: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """Predict with a domain's statistics (none given: the network's own), restored afterwards."""
    if stats is None:
        yield
        return
    saved = current_statistics(net)
    load_statistics(net, stats)
    try:
        yield
    finally:
        load_statistics(net, saved)
