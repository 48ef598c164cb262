"""A data set's fingerprint (as nnU-Net reads one before it plans): pixel sizes, image sizes,
intensities per domain, class frequencies and the typical width of each class's structures.

A structure's width is the diameter of the largest circle that fits inside it: a particle's
diameter, a lath's or a plate's thickness, the thickest arm of a network (whose extent, a whole
micrograph, says nothing about the context a pixel needs).

Only development images are read: the split's training images for everything taken from masks,
and training, validation and unlabelled images for sizes and intensities. Held-out test images
never inform a plan. At most `max_images` images per role are read (a seeded sample), so a
fingerprint of thousands of micrographs stays quick.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm import tqdm

from microal.config import ProjectConfig
from microal.data.imageio import read_catalog_image, read_catalog_mask
from microal.data.splits import NO_MASK, TRAIN, VAL, assign_splits
from microal.data.tiling import class_pixel_counts

# A class whose largest connected region covers this share of an image is a matrix (it surrounds
# the others): it has no object size of its own.
MATRIX_SHARE = 0.3


@dataclass
class ClassStats:
    name: str
    pixel_share: float  # of the labelled training pixels
    images_with_class: int
    width_px: float | None  # area-weighted median width of its structures; None for a matrix
    matrix: bool


@dataclass
class Fingerprint:
    images: int  # development images
    train_images: int
    val_images: int
    unlabelled_images: int
    um_per_px: list[float | None]  # per development image (None: unknown)
    heights: list[int]
    widths: list[int]
    train_pixels: int  # labelled pixels of the training images
    val_pixels: int
    domains: dict[str, dict[str, float]] = field(default_factory=dict)  # domain -> intensity statistics
    classes: list[ClassStats] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        # Per-image lists are long; the plan file keeps their summary.
        for key in ("um_per_px", "heights", "widths"):
            values = [v for v in data.pop(key) if v is not None]
            data[key] = _summary(values) if values else None
        data["um_per_px_unknown"] = sum(v is None for v in self.um_per_px)
        return data


def _summary(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    return {"min": float(array.min()), "median": float(np.median(array)), "max": float(array.max())}


def _sample(images: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    images = images.sort_values("image_id")
    return images if len(images) <= n else images.sample(n=n, random_state=seed).sort_values("image_id")


def structure_widths(mask: np.ndarray, label: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Widths (largest inscribed circle's diameter) and areas of the class's connected regions,
    and the largest region's share of the image."""
    inside = mask == label
    regions, count = ndimage.label(inside)
    if count == 0:
        return np.zeros(0), np.zeros(0), 0.0
    areas = np.bincount(regions.ravel())[1:].astype(float)
    # Outside the image counts as background: a region cut by the border is as wide as what is seen.
    depth = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
    widths = 2 * np.asarray(ndimage.maximum(depth, regions, index=np.arange(1, count + 1)), dtype=float) - 1
    return np.maximum(widths, 1.0), areas, float(areas.max() / mask.size)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def fingerprint(
    images: pd.DataFrame, config: ProjectConfig, max_images: int = 64, progress: bool = True
) -> Fingerprint:
    """The fingerprint of a catalog's (or tile set's) development images."""
    images = images.reset_index(drop=True)
    roles = assign_splits(images, config.split)
    seed = config.split.seed
    train = _sample(images[roles == TRAIN], max_images, seed)
    val = _sample(images[roles == VAL], max_images, seed)
    unlabelled = _sample(images[roles == NO_MASK], max_images, seed)
    development = images[roles.isin([TRAIN, VAL, NO_MASK])]
    n_classes = config.num_classes
    counts = np.zeros(n_classes, dtype=np.int64)
    present = np.zeros(n_classes, dtype=np.int64)
    diameters: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
    areas: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
    largest = np.zeros(n_classes)
    intensities: dict[str, list[np.ndarray]] = {}
    read = pd.concat([train, val, unlabelled])
    train_ids = set(train.image_id)  # masks are read for these only
    for _, row in tqdm(read.iterrows(), total=len(read), desc="fingerprint", unit="image", disable=not progress):
        image = read_catalog_image(row, config.ingest)
        step = max(1, int(math.sqrt(image.size / 65536)))  # intensities from at most ~65k pixels
        intensities.setdefault(str(row.domain), []).append(image[::step, ::step].ravel())
        if row.image_id not in train_ids:
            continue
        mask = read_catalog_mask(row, config.classes, config.ingest)
        counts += class_pixel_counts(mask, n_classes)
        for label in range(n_classes):
            d, a, share = structure_widths(mask, label)
            if len(d):
                present[label] += 1
                diameters[label].append(d)
                areas[label].append(a)
                largest[label] = max(largest[label], share)
    total = max(int(counts.sum()), 1)
    classes = []
    for label, spec in enumerate(config.classes):
        matrix = bool(largest[label] >= MATRIX_SHARE)
        size = None
        if diameters[label] and not matrix:
            size = weighted_median(np.concatenate(diameters[label]), np.concatenate(areas[label]))
        classes.append(ClassStats(spec.name, float(counts[label] / total), int(present[label]), size, matrix))
    domains = {}
    for domain, chunks in sorted(intensities.items()):
        values = np.concatenate(chunks)
        p1, p50, p99 = np.percentile(values, [1, 50, 99])
        domains[domain] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "p01": float(p1),
            "median": float(p50),
            "p99": float(p99),
        }

    def pixels(table: pd.DataFrame) -> int:
        return int((images.loc[table.index, "height"] * images.loc[table.index, "width"]).sum())

    return Fingerprint(
        images=len(development),
        train_images=int((roles == TRAIN).sum()),
        val_images=int((roles == VAL).sum()),
        unlabelled_images=int((roles == NO_MASK).sum()),
        um_per_px=[None if pd.isna(v) else float(v) for v in development.um_per_px],
        heights=[int(v) for v in development.height],
        widths=[int(v) for v in development.width],
        train_pixels=pixels(images[roles == TRAIN]),
        val_pixels=pixels(images[roles == VAL]),
        domains=domains,
        classes=classes,
    )
