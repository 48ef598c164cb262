"""The open set: a Gaussian mixture per class on the descriptors of its training crops, and a
log-likelihood threshold below which a crop belongs to none of the classes.

A crop's class probabilities are the mixtures' likelihoods normalised over the classes (equal
priors: a class's share of the training images says nothing about a new micrograph). Its
"none of these" test is its best class log-likelihood: below the threshold, the crop lies far
from every class. The threshold is the `none_quantile` quantile of the best log-likelihoods of
validation crops of known classes (default 0.05: 95% of known crops are accepted), so it is set
on images the mixtures were not fitted on. Without validation images it falls back to the
training crops, which accepts more unknown crops (said when it happens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture

MIN_CROPS_PER_COMPONENT = 10  # fewer crops than this per component: fewer components


@dataclass
class OpenSet:
    classes: list[str]  # the trained classes, in class-index order
    mixtures: list[GaussianMixture | None]  # None: the class had no training crops
    threshold: float  # best-class log-likelihood below which a crop is "none of these"
    threshold_from: str  # "validation" or "training" crops

    def log_likelihoods(self, descriptors: np.ndarray) -> np.ndarray:
        """(crops x classes) log-likelihood of each crop under each class's mixture."""
        descriptors = np.asarray(descriptors, dtype=np.float64)
        columns = [
            m.score_samples(descriptors) if m is not None else np.full(len(descriptors), -np.inf) for m in self.mixtures
        ]
        return np.stack(columns, axis=1)

    def class_log_likelihood_torch(self, descriptors, index: int):
        """A class's mixture log-likelihood of each descriptor as a differentiable torch tensor
        (Grad-CAM's target): the same value score_samples gives, from the fitted parameters."""
        import torch

        mixture = self.mixtures[index]
        if mixture is None:
            raise ValueError(f"class {self.classes[index]!r} has no mixture (no training crops)")
        x = descriptors.double()
        terms = []
        for weight, mean, cholesky in zip(mixture.weights_, mixture.means_, mixture.precisions_cholesky_, strict=True):
            cholesky = torch.as_tensor(cholesky, dtype=torch.float64)
            y = (x - torch.as_tensor(mean, dtype=torch.float64)) @ cholesky
            log_det = torch.log(torch.diagonal(cholesky)).sum()
            terms.append(np.log(weight) - 0.5 * (x.shape[1] * np.log(2 * np.pi) + (y**2).sum(dim=1)) + log_det)
        return torch.logsumexp(torch.stack(terms, dim=1), dim=1)

    def crop_distribution(self, descriptors: np.ndarray) -> np.ndarray:
        """(crops x classes+1): class probabilities of each crop, or all its mass on the last
        column ("none") when its best log-likelihood is below the threshold."""
        loglik = self.log_likelihoods(descriptors)
        posterior = np.exp(loglik - logsumexp(loglik, axis=1, keepdims=True))
        none = loglik.max(axis=1) < self.threshold
        return np.concatenate([posterior * ~none[:, None], none[:, None].astype(float)], axis=1)


def fit_open_set(
    descriptors: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    components: int,
    none_quantile: float,
    val_descriptors: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    seed: int = 0,
) -> OpenSet:
    """Mixtures on training crops' descriptors (labels: class indices), threshold on validation crops."""
    descriptors, labels = np.asarray(descriptors, dtype=np.float64), np.asarray(labels)
    mixtures: list[GaussianMixture | None] = []
    for index in range(len(classes)):
        own = descriptors[labels == index]
        if len(own) < 2:
            mixtures.append(None)
            continue
        n = max(1, min(components, len(own) // MIN_CROPS_PER_COMPONENT))
        # A little covariance regularisation relative to the class's spread keeps a tight cluster finite.
        spread = float(np.mean(np.var(own, axis=0))) or 1.0
        mixture = GaussianMixture(n, covariance_type="full", reg_covar=1e-3 * spread, random_state=seed, n_init=2)
        mixtures.append(mixture.fit(own))
    if all(m is None for m in mixtures):
        raise ValueError("no class has training crops to fit a mixture on")
    partial = OpenSet(classes, mixtures, -np.inf, "training")

    def of_trained_classes(crops, crop_labels):
        keep = np.array([mixtures[i] is not None for i in np.asarray(crop_labels)], dtype=bool)
        return np.asarray(crops, dtype=np.float64).reshape(-1, descriptors.shape[1])[keep]

    # Validation crops of classes that have a mixture set the threshold; without any (no
    # validation images, or only of classes nothing trained on), the training crops do.
    reference = of_trained_classes(val_descriptors, val_labels) if val_descriptors is not None else descriptors[:0]
    known = len(reference) > 0
    if not known:
        reference = of_trained_classes(descriptors, labels)
    best = partial.log_likelihoods(reference).max(axis=1)
    threshold = float(np.quantile(best, none_quantile)) if none_quantile > 0 else -np.inf
    return OpenSet(classes, mixtures, threshold, "validation" if known else "training")
