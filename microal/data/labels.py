"""The label store: the masks known so far, one padded array per image at the tiling scale, 255
(ignore) wherever no tile has been labelled.

Active learning writes experts' (or an oracle's) tile masks here; training and evaluation read
them through the datasets, so only labelled tile centres ever reach the loss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from microal.data.tiles import TileSet
from microal.data.tiling import IGNORE_INDEX
from microal.errors import MicroalError
from microal.files import atomic_path


class LabelStore:
    """Per-image padded mask arrays at the tiling scale; unknown pixels are 255 (ignored)."""

    def __init__(self, root: str | Path, tileset: TileSet):
        self.root = Path(root)
        self.tileset = tileset
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, image_id: str) -> Path:
        return self.root / f"{image_id}.mask.npy"

    def _load(self, image_id: str) -> np.ndarray:
        known = self.read(image_id)
        if known is not None:
            return known
        return np.full(self.tileset.grid(image_id).padded_shape, IGNORE_INDEX, dtype=np.uint8)

    def read(self, image_id: str) -> np.ndarray | None:
        """The image's known labels, or None when no tile of it has been labelled."""
        path = self.path(image_id)
        return np.load(path) if path.exists() else None

    def _centre_slices(self, tile: pd.Series) -> tuple[slice, slice]:
        return self.tileset.grid(tile.image_id).centre_slices(int(tile.y), int(tile.x))

    def write(self, tile: pd.Series, centre_mask: np.ndarray) -> None:
        """Store a tile's centre mask (tile_size square; 255 where the expert left it open)."""
        grid = self.tileset.grid(tile.image_id)
        if centre_mask.shape != (grid.tile_size, grid.tile_size):
            raise MicroalError(
                f"tile {tile.tile_id}: mask {centre_mask.shape} is not {grid.tile_size}x{grid.tile_size}"
            )
        array = self._load(tile.image_id)
        array[self._centre_slices(tile)] = centre_mask
        # Padding beyond the image stays ignored, whatever the mask said there.
        array[~grid.inside_mask()] = IGNORE_INDEX
        with atomic_path(self.path(tile.image_id)) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, array)

    def reveal_from_truth(self, tiles: pd.DataFrame) -> None:
        """Simulation: copy the hidden expert mask of each tile's centre into the store."""
        for _, tile in tiles.iterrows():
            truth = self.tileset.mask_array(tile.image_id)
            if truth is None:
                raise MicroalError(f"tile {tile.tile_id}: its image has no mask to reveal")
            self.write(tile, np.array(truth[self._centre_slices(tile)]))

    def centre(self, tile: pd.Series) -> np.ndarray:
        return self._load(tile.image_id)[self._centre_slices(tile)]
