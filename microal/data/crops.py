"""Crops of whole micrographs at many length scales, for image classification (microal classify).

A crop's physical side is drawn log-uniformly from a range in µm, clipped per image to what the
image holds: at most its short side, and at least crop_size / max_upsampling pixels (a crop is
never blown up into blur). It is resampled to crop_size pixels, and its pixel density after
resampling (px/µm) goes to the network beside it: the same structure seen at another
magnification is another input, and the network is told which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from microal.config import ClassifyConfig, IngestConfig
from microal.data.datasets import augment_sample, epoch_and_index, sample_seed, standardise
from microal.data.imageio import read_catalog_image
from microal.errors import InputError


@dataclass(frozen=True)
class CropRange:
    """An image's feasible crop sides in pixels of the stored image."""

    min_px: float
    max_px: float

    def draw(self, rng: np.random.Generator) -> float:
        return float(np.exp(rng.uniform(math.log(self.min_px), math.log(self.max_px))))


def crop_range(height: int, width: int, um_per_px: float, settings: ClassifyConfig) -> CropRange:
    """The crop sides (pixels) an image allows: the configured µm range (default: from
    min_crop_fraction of the short side to all of it) within [crop_size / max_upsampling, short side].
    When the configured range lies wholly outside, the nearest feasible side is used."""
    short = float(min(height, width))
    floor = min(short, settings.crop_size / settings.max_upsampling)
    if settings.crop_um is None:
        low, high = short * settings.min_crop_fraction, short
    else:
        low, high = settings.crop_um[0] / um_per_px, settings.crop_um[1] / um_per_px
    low, high = float(np.clip(low, floor, short)), float(np.clip(high, floor, short))
    return CropRange(low, high)


def log_density(crop_px: float, um_per_px: float, crop_size: int) -> float:
    """log10 of the pixel density (px/µm) a crop of `crop_px` stored pixels has at crop_size."""
    return math.log10(crop_size / (crop_px * um_per_px))


def crop_box(shape: tuple[int, int], side: float, centre_y: float, centre_x: float) -> tuple[int, int, int]:
    """(top, left, side) of a square of `side` pixels centred near (y, x), kept inside the image."""
    height, width = shape[:2]
    side_px = max(1, min(int(round(side)), height, width))
    top = int(np.clip(round(centre_y - side_px / 2), 0, height - side_px))
    left = int(np.clip(round(centre_x - side_px / 2), 0, width - side_px))
    return top, left, side_px


def cut_crop(image: np.ndarray, side: float, centre_y: float, centre_x: float, crop_size: int) -> np.ndarray:
    """A square of `side` pixels centred near (y, x), kept inside the image, resampled to crop_size."""
    top, left, side_px = crop_box(image.shape, side, centre_y, centre_x)
    patch = image[top : top + side_px, left : left + side_px]
    interpolation = cv2.INTER_AREA if side_px > crop_size else cv2.INTER_LINEAR
    return cv2.resize(patch, (crop_size, crop_size), interpolation=interpolation)


def check_pixel_sizes(images: pd.DataFrame) -> None:
    """Every image needs its pixel size: the network is told each crop's physical scale."""
    missing = images[~(pd.to_numeric(images.um_per_px, errors="coerce") > 0)]
    if len(missing):
        row = missing.iloc[0]
        raise InputError(
            row.image_path,
            f"no pixel size (um_per_px); classification gives each crop's physical scale to the network. "
            f"{len(missing)} image(s) lack it: give ingest.um_per_px, a manifest column or the magnification "
            "with ingest.calibration_um_per_px_at_1x",
        )


class ImageStore:
    """The listed catalog images, read once, as float arrays with their mean and spread."""

    def __init__(self, images: pd.DataFrame, ingest: IngestConfig):
        check_pixel_sizes(images)
        self.rows = images.reset_index(drop=True)
        self.arrays = [read_catalog_image(row, ingest) for row in self.rows.itertuples()]
        self.stats = [(float(a.mean()), float(a.std()) or 1.0) for a in self.arrays]

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, indices) -> ImageStore:
        """The store of these images only (their arrays shared, not read again)."""
        part = object.__new__(ImageStore)
        part.rows = self.rows.iloc[list(indices)].reset_index(drop=True)
        part.arrays = [self.arrays[i] for i in indices]
        part.stats = [self.stats[i] for i in indices]
        return part

    def crop(self, index: int, rng: np.random.Generator, settings: ClassifyConfig, augment=None) -> tuple:
        """One random crop of image `index`: (1 x S x S standardised tensor, log10 px/µm)."""
        image = self.arrays[index]
        um_per_px = float(self.rows.um_per_px[index])
        side = crop_range(*image.shape, um_per_px, settings).draw(rng)
        y, x = rng.uniform(0, image.shape[0]), rng.uniform(0, image.shape[1])
        crop = cut_crop(image, side, y, x, settings.crop_size)
        if augment is not None:
            crop = augment_sample(augment, int(rng.integers(2**32)), crop)["image"]
        mean, std = self.stats[index]
        tensor = torch.from_numpy(standardise(crop, mean, std)[None])
        return tensor, torch.tensor([log_density(side, um_per_px, settings.crop_size)], dtype=torch.float32)


class BalancedCrops(Dataset):
    """Training crops: item i belongs to class i mod C (every batch holds every class, which the
    triplet miner needs), from a random image of that class. Keyed by (epoch, index) so a crop
    depends only on (seed, epoch, index)."""

    def __init__(self, store: ImageStore, labels: list[int], settings: ClassifyConfig, augment, seed: int):
        self.store, self.settings, self.augment, self.seed = store, settings, augment, seed
        self.labels = np.asarray(labels)
        self.classes = sorted(set(self.labels.tolist()))
        self.by_class = {c: np.flatnonzero(self.labels == c) for c in self.classes}
        self.epoch = 0

    def __len__(self) -> int:
        return self.settings.crops_per_epoch

    def __getitem__(self, key):
        epoch, index = epoch_and_index(key, self.epoch)
        rng = np.random.default_rng(sample_seed(self.seed, epoch, index))
        label = self.classes[index % len(self.classes)]
        image = int(rng.choice(self.by_class[label]))
        crop, density = self.store.crop(image, rng, self.settings, self.augment)
        return crop, density, torch.tensor(label)


class FixedCrops(Dataset):
    """`per_image` crops of every image, the same ones every time (validation, references,
    prediction): item i is crop i mod per_image of image i // per_image."""

    def __init__(self, store: ImageStore, per_image: int, settings: ClassifyConfig, seed: int):
        self.store, self.per_image, self.settings, self.seed = store, per_image, settings, seed

    def __len__(self) -> int:
        return len(self.store) * self.per_image

    def __getitem__(self, index: int):
        image, number = divmod(int(index), self.per_image)
        # Seeded by the image's content id: an image gets the same crops in whatever company.
        image_key = int(str(self.store.rows.image_id[image])[:8], 16)
        rng = np.random.default_rng(sample_seed(self.seed, image_key, number))
        crop, density = self.store.crop(image, rng, self.settings)
        return crop, density, torch.tensor(image)
