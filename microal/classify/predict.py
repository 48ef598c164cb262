"""`microal classify predict`: each micrograph's class from many crops.

Every image gives classify.predict_crops crops (the same ones every time, at the training's
range of scales), embedded in batches; each crop gets its class probabilities or "none of these"
from the open set, and the image's distribution is their mean. The decision is the most probable
of the classes and "none". `novelty` (the share of "none" crops) and `entropy` (of the averaged
distribution, over log of its size) are what image-level active learning ranks by.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader
from tqdm import tqdm

from microal.classify.classifier_file import Classifier
from microal.classify.labels import NONE_CLASS
from microal.data.crops import FixedCrops, ImageStore
from microal.errors import MicroalError
from microal.files import atomic_path

PREDICTION_SEED = 303
PREDICTIONS_FILE = "classes.csv"


def image_distribution(classifier: Classifier, row: pd.Series, crops: int, batch_size: int) -> np.ndarray:
    """The mean crop distribution (classes..., none) of one catalog image."""
    if classifier.open_set is None:
        raise MicroalError(f"{classifier.path}: no open set in the classifier file (its training did not finish)")
    config = classifier.config
    store = ImageStore(pd.DataFrame([row]), config.ingest)
    dataset = FixedCrops(store, crops, config.classify, seed=PREDICTION_SEED)
    total = np.zeros(len(classifier.classes) + 1)
    for batch, density, _ in DataLoader(dataset, batch_size=batch_size):
        total += classifier.open_set.crop_distribution(classifier.describe(batch, density).numpy()).sum(axis=0)
    return total / len(dataset)


def predict_images(
    classifier: Classifier, images: pd.DataFrame, crops: int | None = None, progress: bool = True
) -> pd.DataFrame:
    """One row per image: p_<class> and p_none, decision, novelty, entropy."""
    settings = classifier.config.classify
    crops = crops or settings.predict_crops
    names = [*classifier.classes, NONE_CLASS]
    rows = []
    for _, row in tqdm(images.iterrows(), total=len(images), desc="classify", unit="image", disable=not progress):
        distribution = image_distribution(classifier, row, crops, settings.predict_batch_size)
        positive = distribution[distribution > 0]
        entropy = float(-(positive * np.log(positive)).sum() / np.log(len(distribution)))
        rows.append(
            {
                "image_id": row.image_id,
                "image_name": row.image_name,
                **{f"p_{name}": float(p) for name, p in zip(names, distribution, strict=True)},
                "decision": names[int(np.argmax(distribution))],
                "novelty": float(distribution[-1]),
                "entropy": entropy,
                "crops": crops,
            }
        )
    return pd.DataFrame(rows)


def write_predictions(table: pd.DataFrame, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PREDICTIONS_FILE
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path
