"""One physical scale, mirror padding, overlapping tiles and stitching (pure array code).

Geometry: a tile is a window of ``tile_size + 2*margin`` pixels; the loss and the
stitched prediction use only its central ``tile_size`` square, the margin is context.
Centres tile the resampled image edge to edge, so every pixel is predicted exactly
once, always with ``margin`` pixels of context around it: no seams.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from microal.config import TilingConfig

IGNORE_INDEX = 255  # mask value outside the real image: no loss, no metric


def class_pixel_counts(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Labelled pixels of each class in a mask (IGNORE_INDEX pixels left out)."""
    values = np.asarray(mask).ravel()
    values = values[values != IGNORE_INDEX]
    return np.bincount(values.astype(np.int64), minlength=num_classes)[:num_classes]


def scale_factor(um_per_px: float | None, tiling: TilingConfig) -> float | None:
    """Factor that brings an image to the tiling scale; None when its pixel size is unknown but needed."""
    if tiling.target_um_per_px is None:
        return tiling.scale
    if um_per_px is None or not um_per_px > 0 or math.isnan(um_per_px):
        return None
    return um_per_px / tiling.target_um_per_px


def resampled_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def resample_image(image: np.ndarray, factor: float, interpolation: str = "area") -> np.ndarray:
    if factor == 1.0:
        return image
    h, w = resampled_shape(image.shape, factor)
    # Area averaging avoids aliasing when shrinking; it equals bilinear when enlarging.
    flag = cv2.INTER_AREA if interpolation == "area" and factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=flag)


def resample_mask(mask: np.ndarray, factor: float | None = None, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Nearest neighbour, so class indices stay class indices."""
    h, w = shape if shape is not None else resampled_shape(mask.shape, factor or 1.0)
    if (h, w) == mask.shape:
        return mask
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)


def resample_probabilities(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """[C, h, w] -> [C, H, W] bilinear, then labels are taken by argmax at full size."""
    if probs.shape[1:] == tuple(shape):
        return probs
    return np.stack([cv2.resize(p, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) for p in probs])


def crop_centre(array, margin: int):
    """The centre of windows (last two axes) without their `margin` of context: numpy arrays and
    torch tensors alike."""
    if margin == 0:
        return array
    return array[..., margin:-margin, margin:-margin]


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one (resampled) image sit."""

    height: int
    width: int
    tile_size: int
    margin: int

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.tile_size)

    @property
    def cols(self) -> int:
        return math.ceil(self.width / self.tile_size)

    @property
    def window(self) -> int:
        return self.tile_size + 2 * self.margin

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.rows * self.tile_size + 2 * self.margin, self.cols * self.tile_size + 2 * self.margin

    def pad_widths(self) -> tuple[tuple[int, int], tuple[int, int]]:
        ph, pw = self.padded_shape
        return (self.margin, ph - self.height - self.margin), (self.margin, pw - self.width - self.margin)

    def pad_image(self, image: np.ndarray) -> np.ndarray:
        """Mirror padding: the context beyond the edge looks like the micrograph, not like a black bar."""
        return _mirror_pad(image, self.pad_widths())

    def pad_mask(self, mask: np.ndarray) -> np.ndarray:
        return np.pad(mask, self.pad_widths(), mode="constant", constant_values=IGNORE_INDEX)

    def positions(self) -> Iterator[tuple[int, int, int, int]]:
        """(row, col, y, x): the window's top-left corner in padded coordinates."""
        for row in range(self.rows):
            for col in range(self.cols):
                yield row, col, row * self.tile_size, col * self.tile_size

    def window_slice(self, y: int, x: int) -> tuple[slice, slice]:
        return slice(y, y + self.window), slice(x, x + self.window)

    def centre(self, window_array: np.ndarray) -> np.ndarray:
        """The central tile_size square of a window (last two axes)."""
        return crop_centre(window_array, self.margin)

    def centre_slices(self, y: int, x: int) -> tuple[slice, slice]:
        """The centre of the window at (y, x), in padded coordinates: what a tile labels and predicts."""
        m, t = self.margin, self.tile_size
        return slice(y + m, y + m + t), slice(x + m, x + m + t)

    def _inside(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        (top, _), (left, _) = self.pad_widths()
        return ((rows >= top) & (rows < top + self.height))[:, None] & ((cols >= left) & (cols < left + self.width))[
            None, :
        ]

    def inside_mask(self) -> np.ndarray:
        """True where the padded array shows the image itself, False on the padding."""
        height, width = self.padded_shape
        return self._inside(np.arange(height), np.arange(width))

    def centre_inside(self, y: int, x: int) -> np.ndarray:
        """inside_mask() over the centre of the window at (y, x) (a tile_size square)."""
        rows, cols = self.centre_slices(y, x)
        return self._inside(np.arange(rows.start, rows.stop), np.arange(cols.start, cols.stop))

    def stitch(self, centres: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
        """Place each tile's centre (…, T, T) back; crop to the resampled image."""
        first = next(iter(centres.values()))
        lead = first.shape[:-2]
        t = self.tile_size
        canvas = np.zeros(lead + (self.rows * t, self.cols * t), dtype=first.dtype)
        for (row, col), centre in centres.items():
            canvas[..., row * t : (row + 1) * t, col * t : (col + 1) * t] = centre
        return canvas[..., : self.height, : self.width]


def _mirror_pad(image: np.ndarray, widths: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    # numpy's reflect mode needs the image to be larger than the pad; small images are
    # reflected repeatedly until the padding is reached.
    out = image
    remaining = [list(w) for w in widths]
    while any(w > 0 for pair in remaining for w in pair):
        step = [
            (min(before, out.shape[axis] - 1), min(after, out.shape[axis] - 1))
            for axis, (before, after) in enumerate(remaining)
        ]
        if all(s == (0, 0) for s in step):  # a 1-pixel-wide image: repeat it
            return np.pad(out, [tuple(w) for w in remaining], mode="edge")
        out = np.pad(out, step, mode="reflect")
        remaining = [[b - s[0], a - s[1]] for (b, a), s in zip(remaining, step)]
    return out
