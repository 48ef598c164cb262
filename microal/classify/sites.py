"""Sites in a panorama, classified (the damage seed, after Kerzel et al., TMS 2021): each site found
by data/panorama.py is cut at one physical size (classify.sites.crop_um) around its centre,
resampled to the classifier's crop size and classified with its pixel density, as whole images
are. A class for artefacts (e.g. "shadow") is an ordinary class of the classifier's table.

Writes the sites table (position in the panorama, area, class, probability, "none" share) and the
density of each class per mm² of the panorama.
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from microal.classify.classifier_file import Classifier
from microal.classify.labels import NONE_CLASS
from microal.config import SitesConfig
from microal.data.crops import log_density
from microal.data.datasets import standardise
from microal.data.panorama import Panorama


def classify_sites(
    classifier: Classifier, panorama: Panorama, sites: pd.DataFrame, settings: SitesConfig, progress: bool = True
) -> pd.DataFrame:
    """The sites with class, probability and the "none" share of each."""
    crop_size = classifier.config.classify.crop_size
    side = max(2, int(round(settings.crop_um / panorama.um_per_px)))
    density = log_density(side, panorama.um_per_px, crop_size)
    names = [*classifier.classes, NONE_CLASS]
    batch = classifier.config.classify.predict_batch_size
    distributions = []
    for start in tqdm(range(0, len(sites), batch), desc="sites", unit="batch", disable=not progress):
        chunk = sites.iloc[start : start + batch]
        crops = []
        for y, x in zip(chunk.y, chunk.x, strict=True):
            window = panorama.window(int(round(y)) - side // 2, int(round(x)) - side // 2, side)
            resized = cv2.resize(
                window, (crop_size, crop_size), interpolation=cv2.INTER_AREA if side > crop_size else cv2.INTER_LINEAR
            )
            crops.append(standardise(resized, float(resized.mean()), float(resized.std()) or 1.0))
        tensors = torch.from_numpy(np.stack(crops)[:, None])
        descriptors = classifier.describe(tensors, torch.full((len(crops), 1), density)).numpy()
        distributions.append(classifier.open_set.crop_distribution(descriptors))
    dist = np.concatenate(distributions) if distributions else np.zeros((0, len(names)))
    decided = dist.argmax(axis=1) if len(dist) else np.zeros(0, dtype=int)
    return sites.assign(
        y_um=sites.y * panorama.um_per_px,
        x_um=sites.x * panorama.um_per_px,
        **{"class": [names[i] for i in decided]},
        probability=dist.max(axis=1) if len(dist) else [],
        none_share=dist[:, -1] if len(dist) else [],
    )


def site_densities(classified: pd.DataFrame, panorama: Panorama, classes: list[str]) -> pd.DataFrame:
    """Sites per mm² of the panorama for each class (and "none"), with their counts."""
    height, width = panorama.shape
    area_mm2 = height * width * panorama.um_per_px**2 / 1e6
    counts = classified["class"].value_counts().reindex([*classes, NONE_CLASS], fill_value=0)
    return pd.DataFrame(
        {
            "class": counts.index,
            "sites": counts.to_numpy(),
            "per_mm2": counts.to_numpy() / area_mm2,
            "area_mm2": area_mm2,
        }
    )
