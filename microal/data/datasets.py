"""Torch datasets over a tile set: windows cut from the padded arrays, augmented, standardised."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from microal.data.labels import LabelStore
from microal.data.tiles import TileSet
from microal.data.tiling import IGNORE_INDEX, class_pixel_counts


def standardise(window: np.ndarray, mean: float, std: float) -> np.ndarray:
    return ((window - mean) / std).astype(np.float32)


def sample_seed(*parts: int) -> int:
    """One 32-bit seed from several integers (run seed, epoch, index)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def epoch_and_index(key, epoch: int) -> tuple[int, int]:
    """A dataset key is an index, or (epoch, index) from a sampler that knows the epoch: loader
    processes hold their own copy of the dataset, so its `epoch` attribute may be stale there."""
    if isinstance(key, tuple | list):
        return int(key[0]), int(key[1])
    return epoch, int(key)


def augment_sample(augment, seed: int, image: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Apply an albumentations pipeline seeded for this one sample, so a window's augmentation
    depends on (seed, epoch, index) only: not on which loader process cuts it, nor on a resume."""
    augment.set_random_seed(seed)
    return augment(image=image) if mask is None else augment(image=image, mask=mask)


class WindowSource:
    """Loads each image's padded arrays once and cuts windows from them."""

    def __init__(
        self, tileset: TileSet, image_ids: list[str], mask_ids: set[str] | None = None, labels: LabelStore | None = None
    ):
        """Masks are loaded for `mask_ids` only (default: all): a UDA target never sees its labels.
        With `labels` (an active-learning label store) masks come from there instead of the
        tile set, so only labels revealed so far are used."""
        self.tileset = tileset
        self.window = tileset.tiling.window
        self._images = {i: tileset.image_array(i, mmap=False) for i in image_ids}
        mask_ids = set(image_ids) if mask_ids is None else mask_ids
        self._masks = {i: self._mask(i, labels) if i in mask_ids else None for i in image_ids}
        self._stats = {
            i: (float(tileset.images.loc[i, "mean"]), float(tileset.images.loc[i, "std"])) for i in image_ids
        }

    def _mask(self, image_id: str, labels: LabelStore | None) -> np.ndarray | None:
        if labels is None:
            return self.tileset.mask_array(image_id, mmap=False)
        return labels.read(image_id)

    def cut(self, image_id: str, y: int, x: int) -> tuple[np.ndarray, np.ndarray | None]:
        sl = (slice(y, y + self.window), slice(x, x + self.window))
        mask = self._masks[image_id]
        return self._images[image_id][sl], None if mask is None else mask[sl]

    def stats(self, image_id: str) -> tuple[float, float]:
        return self._stats[image_id]

    def mask(self, image_id: str) -> np.ndarray | None:
        """The image's whole padded mask (None where its labels are not used)."""
        return self._masks[image_id]

    def class_pixel_counts(self, num_classes: int) -> np.ndarray:
        """Labelled pixels of each class over all loaded images (padding excluded)."""
        counts = np.zeros(num_classes, dtype=np.int64)
        for mask in self._masks.values():
            if mask is not None:
                counts += class_pixel_counts(mask, num_classes)
        return counts


# Class-centred windows draw from at most this many pixels of each class (a seeded sample), so a
# large image set costs little memory in the dataset and in each loader process's copy of it.
CLASS_PIXELS_KEPT = 200_000


class TileDataset(Dataset):
    """Labelled windows for training or validation.

    ``sampling="grid"`` yields each tile of the table once; ``"random"`` yields
    ``samples_per_epoch`` windows re-drawn every epoch via ``set_epoch``: with ``around="image"``
    anywhere in the listed tiles' images (more variety from a handful of whole-image masks), with
    ``around="tile"`` within half a tile of a listed tile, for labels that exist at those tiles only
    (an active-learning label store: a window anywhere in the image would mostly cover unlabelled,
    ignored pixels). With ``class_windows`` > 0, that fraction of the random windows instead has a
    pixel of a class other than the most common one in its centre (the class drawn uniformly
    among those labelled, the pixel uniformly among the class's labelled pixels of the listed
    images, or of the listed tiles' centres with ``around="tile"``; nnU-Net's foreground
    oversampling): a phase of 2 % of the pixels is then in the loss far more often.
    """

    def __init__(
        self,
        tileset: TileSet,
        tiles: pd.DataFrame,
        augment=None,
        sampling: str = "grid",
        samples_per_epoch: int | None = None,
        seed: int = 0,
        labels: LabelStore | None = None,
        around: str = "image",
        class_windows: float = 0.0,
    ):
        if around not in ("image", "tile"):
            raise ValueError(f"around must be 'image' or 'tile', not {around!r}")
        if not 0 <= class_windows <= 1:
            raise ValueError(f"class_windows must be a fraction in [0, 1], not {class_windows}")
        self.tiles = tiles.reset_index(drop=True)
        labelled = set(self.tiles.image_id[self.tiles.labelled.astype(bool)])
        self.source = WindowSource(tileset, sorted(self.tiles.image_id.unique()), mask_ids=labelled, labels=labels)
        self.augment = augment
        self.sampling = sampling
        self.samples_per_epoch = samples_per_epoch or len(self.tiles)
        self.seed = seed
        self.around = around
        self.tile_size = tileset.tiling.tile_size
        self.epoch = 0
        # Largest window corner per image: random windows stay inside the padded array.
        self._extent = self.tiles.groupby("image_id")[["y", "x"]].max()
        self.margin = tileset.tiling.margin
        self._images = sorted(self._extent.index)  # class-centred windows name images by number
        self.class_windows = class_windows if sampling == "random" else 0.0
        self._class_pixels = self._pixels_by_class(seed) if self.class_windows else {}

    def _pixels_by_class(self, seed: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per class other than the most common (only those with labelled pixels): the image
        number (in self._images) and the flat padded-array index of each of its labelled pixels
        where windows may be centred, at most CLASS_PIXELS_KEPT of them (seeded)."""
        found: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for number, image_id in enumerate(self._images):
            mask = self.source.mask(image_id)
            if mask is None:
                continue
            mask = np.asarray(mask)
            if self.around == "tile":  # only the listed tiles' centres carry this dataset's labels
                allowed = np.zeros(mask.shape, dtype=bool)
                grid = self.source.tileset.grid(image_id)
                for y, x in self.tiles.loc[self.tiles.image_id == image_id, ["y", "x"]].itertuples(index=False):
                    allowed[grid.centre_slices(int(y), int(x))] = True
                values = np.where(allowed, mask, IGNORE_INDEX).ravel()
            else:
                values = mask.ravel()
            for value in np.unique(values[values != IGNORE_INDEX]):
                flat = np.flatnonzero(values == value)
                found.setdefault(int(value), []).append((np.full(len(flat), number, np.int32), flat))
        counts = {c: sum(len(flat) for _, flat in parts) for c, parts in found.items()}
        if len(counts) < 2:
            return {}  # one class only: nothing rarer to centre windows on
        matrix = max(counts, key=counts.get)
        rng = np.random.default_rng((seed, 7919))
        pixels = {}
        for value, parts in sorted(found.items()):
            if value == matrix:
                continue
            numbers, flat = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            if len(flat) > CLASS_PIXELS_KEPT:
                keep = np.sort(rng.choice(len(flat), CLASS_PIXELS_KEPT, replace=False))
                numbers, flat = numbers[keep], flat[keep]
            pixels[value] = (numbers, flat)
        return pixels

    def _class_centred(self, rng: np.random.Generator) -> tuple[str, int, int]:
        classes = sorted(self._class_pixels)
        numbers, flat = self._class_pixels[classes[int(rng.integers(len(classes)))]]
        pick = int(rng.integers(len(flat)))
        image_id = self._images[int(numbers[pick])]
        width = self.source.mask(image_id).shape[1]
        py, px = divmod(int(flat[pick]), width)
        y_max, x_max = (int(v) for v in self._extent.loc[image_id])
        # The pixel lands anywhere in the window's centre (the part the loss sees), not always mid-window.
        y = int(np.clip(py - self.margin - rng.integers(self.tile_size), 0, y_max))
        x = int(np.clip(px - self.margin - rng.integers(self.tile_size), 0, x_max))
        return image_id, y, x

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_epoch if self.sampling == "random" else len(self.tiles)

    def _position(self, epoch: int, index: int) -> tuple[str, int, int]:
        if self.sampling == "grid":
            tile = self.tiles.iloc[index]
            return tile.image_id, int(tile.y), int(tile.x)
        rng = np.random.default_rng((self.seed, epoch, index))
        if self._class_pixels and rng.random() < self.class_windows:
            return self._class_centred(rng)
        tile = self.tiles.iloc[int(rng.integers(len(self.tiles)))]
        y_max, x_max = (int(v) for v in self._extent.loc[tile.image_id])
        if self.around == "image":  # centres fall anywhere in the (padded) image
            return tile.image_id, int(rng.integers(0, y_max + 1)), int(rng.integers(0, x_max + 1))
        # Within half a tile of the tile: at least a quarter of the centre stays on its labels.
        half = self.tile_size // 2
        y = int(np.clip(int(tile.y) + rng.integers(-half, half + 1), 0, y_max))
        x = int(np.clip(int(tile.x) + rng.integers(-half, half + 1), 0, x_max))
        return tile.image_id, y, x

    def __getitem__(self, key):
        epoch, index = epoch_and_index(key, self.epoch)
        image_id, y, x = self._position(epoch, index)
        image, mask = self.source.cut(image_id, y, x)
        image = np.array(image)
        # Unlabelled images (a UDA target, a pool) get an all-ignore mask.
        mask = np.full(image.shape, IGNORE_INDEX, np.uint8) if mask is None else np.array(mask)
        if self.augment is not None:
            out = augment_sample(self.augment, sample_seed(self.seed, epoch, index), image, mask)
            image, mask = out["image"], out["mask"]
        mean, std = self.source.stats(image_id)
        return torch.from_numpy(standardise(image, mean, std)[None]), torch.from_numpy(mask.astype(np.int64))
