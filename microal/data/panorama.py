"""Large stitched panoramas, read lazily, and candidate sites in them.

A panorama is opened as a zarr array over the TIFF (tifffile's `aszarr`): only the rows being
looked at are decoded. Sites are found block by block: pixels past a threshold (darker for
`polarity: dark`), connected components (scikit-image), kept within an area range in µm². Blocks
overlap by the largest site's extent (at most half a block), and a component belongs to the block
whose core holds its centroid, so a site on a block boundary is found once and whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.filters import threshold_otsu
from skimage.measure import label, regionprops

from microal.config import SitesConfig
from microal.errors import InputError

THUMBNAIL_SIDE = 1024  # pixels of the longer side of the thumbnail the Otsu threshold is found on


@dataclass
class Panorama:
    path: Path
    array: object  # zarr array (rows, cols), read lazily
    um_per_px: float

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.array.shape[:2])

    @property
    def full_scale(self) -> float:
        """The dtype's range: intensities are read as fractions of it."""
        dtype = np.dtype(self.array.dtype)
        return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32 in 0..1."""
        return np.asarray(self.array[start:stop], dtype=np.float32) / self.full_scale

    def window(self, top: int, left: int, size: int) -> np.ndarray:
        """A square of `size` pixels (mirror-padded where it leaves the panorama), 0..1."""
        height, width = self.shape
        y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + size, height), min(left + size, width)
        part = np.asarray(self.array[y0:y1, x0:x1], dtype=np.float32) / self.full_scale
        pads = ((y0 - top, top + size - y1), (x0 - left, left + size - x1))
        return np.pad(part, pads, mode="reflect" if min(part.shape) > 1 else "edge")

    @property
    def thumbnail_step(self) -> int:
        """The thumbnail takes every n-th pixel: about THUMBNAIL_SIDE pixels along the longer side."""
        return max(1, math.ceil(max(self.shape) / THUMBNAIL_SIDE))

    def thumbnail(self) -> np.ndarray:
        """Every thumbnail_step-th pixel (strided: decodes the rows it passes through, a block at a time)."""
        step = self.thumbnail_step
        return np.concatenate(
            [
                self.rows(start, min(start + 256 * step, self.shape[0]))[::step, ::step]
                for start in range(0, self.shape[0], 256 * step)
            ]
        )


def open_panorama(path: str | Path, um_per_px: float) -> Panorama:
    import tifffile
    import zarr

    path = Path(path)
    if not path.exists():
        raise InputError(path, "panorama does not exist")
    if not um_per_px > 0:
        raise InputError(path, f"pixel size must be > 0 µm/px, got {um_per_px}")
    try:
        array = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    except Exception as error:  # tifffile and zarr raise several types for a foreign file
        raise InputError(path, f"cannot open as a TIFF panorama ({error})") from None
    if array.ndim != 2:
        raise InputError(path, f"expected one grey channel, got an array of shape {array.shape}")
    return Panorama(path, array, float(um_per_px))


def site_threshold(panorama: Panorama, settings: SitesConfig) -> float:
    if settings.threshold == "otsu":
        return float(threshold_otsu(panorama.thumbnail()))
    return float(settings.threshold)


def find_sites(panorama: Panorama, settings: SitesConfig) -> pd.DataFrame:
    """One row per site: y, x (centroid, panorama pixels), area_um2, and its bounding box."""
    height, _ = panorama.shape
    threshold = site_threshold(panorama, settings)
    px_area = panorama.um_per_px**2
    max_area_px = settings.max_area_um2 / px_area if settings.max_area_um2 else None
    # Overlap: a kept site of at most max_area_px pixels reaches less than that from its centroid;
    # at most half a block (longer sites across a block edge would be cut there).
    overlap = int(min(max_area_px or settings.block_px, settings.block_px // 2))
    rows = []
    for core_start in range(0, height, settings.block_px):
        core_stop = min(core_start + settings.block_px, height)
        start, stop = max(0, core_start - overlap), min(height, core_stop + overlap)
        block = panorama.rows(start, stop)
        candidates = block < threshold if settings.polarity == "dark" else block > threshold
        for region in regionprops(label(candidates, connectivity=2)):
            area_um2 = region.area * px_area
            if area_um2 < settings.min_area_um2 or (settings.max_area_um2 and area_um2 > settings.max_area_um2):
                continue
            y, x = region.centroid
            y += start
            if not core_start <= y < core_stop:
                continue  # another block's core holds it
            top, left, bottom, right = region.bbox
            rows.append(
                {
                    "y": float(y),
                    "x": float(x),
                    "area_um2": float(area_um2),
                    "bbox": f"{top + start},{left},{bottom + start},{right}",
                }
            )
    columns = ["y", "x", "area_um2", "bbox"]
    return pd.DataFrame(rows, columns=columns).sort_values(["y", "x"], ignore_index=True)
