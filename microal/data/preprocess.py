"""Intensity preparation shared by tiling and prediction: inversion per domain and the
statistics inputs are standardised with (per image or per domain)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from microal.config import PreprocessConfig


def prepare_intensities(image: np.ndarray, domain: str, preprocess: PreprocessConfig) -> np.ndarray:
    """Invert images of the configured domains (bright-field light-optical -> SEM-like)."""
    if domain in preprocess.invert_domains:
        return (1.0 - image).astype(np.float32)
    return image


def image_stats(image: np.ndarray) -> tuple[float, float]:
    return float(image.mean()), float(max(image.std(), 1e-6))


def domain_stats(images: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Pixel-weighted mean and std of each domain, from per-image means and stds."""
    stats = {}
    for domain, group in images.groupby("domain"):
        pixels = (group.height_resampled * group.width_resampled).astype(float)
        mean = float(np.average(group["image_mean"], weights=pixels))
        second = np.average(group["image_std"] ** 2 + group["image_mean"] ** 2, weights=pixels)
        stats[str(domain)] = (mean, float(max(np.sqrt(max(second - mean**2, 0.0)), 1e-6)))
    return stats


def normalisation_table(images: pd.DataFrame, preprocess: PreprocessConfig) -> tuple[pd.Series, pd.Series]:
    """The mean and std each image is standardised with, as the config says."""
    if preprocess.normalize == "domain":
        stats = domain_stats(images)
        return images.domain.map(lambda d: stats[str(d)][0]), images.domain.map(lambda d: stats[str(d)][1])
    return images["image_mean"], images["image_std"]
