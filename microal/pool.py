"""The active-learning pool on disk: every tile's state, and the labels known so far.

State per tile: ``unlabelled``, ``queued`` (sent to an expert in round r), ``labelled``
(label known since round r), ``rejected`` (flagged unusable by an expert). Every change is
written at once and atomically, so a loop stopped half-way resumes from the file, and
"train on everything labelled so far" is a filter.

Labels live in a label store: one padded mask array per image at the tiling scale, 255
(ignore) wherever no tile has been labelled. Training reads masks from there, so only
labelled tile centres ever reach the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from microal.errors import InputError, MicroalError
from microal.files import atomic_path
from microal.tileset import TileSet
from microal.tiling import IGNORE_INDEX

UNLABELLED, QUEUED, LABELLED, REJECTED = "unlabelled", "queued", "labelled", "rejected"
STATES = (UNLABELLED, QUEUED, LABELLED, REJECTED)
POOL_COLUMNS = ["tile_id", "image_id", "domain", "row", "col", "state", "round", "task_id", "updated", "note"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Pool:
    path: Path
    table: pd.DataFrame

    @classmethod
    def create(cls, path: str | Path, tiles: pd.DataFrame) -> "Pool":
        """A new pool of the given tiles, all unlabelled; refuses to overwrite an existing one."""
        path = Path(path)
        if path.exists():
            raise MicroalError(f"{path}: a pool already exists here; load it to resume")
        table = pd.DataFrame(
            {
                "tile_id": tiles.tile_id.to_numpy(),
                "image_id": tiles.image_id.to_numpy(),
                "domain": tiles.domain.astype(str).to_numpy(),
                "row": tiles["row"].to_numpy(),
                "col": tiles["col"].to_numpy(),
                "state": UNLABELLED,
                "round": -1,
                "task_id": pd.array([pd.NA] * len(tiles), dtype="Int64"),
                "updated": _now(),
                "note": "",
            }
        )
        pool = cls(path, table[POOL_COLUMNS])
        pool.save()
        return pool

    @classmethod
    def load(cls, path: str | Path) -> "Pool":
        path = Path(path)
        if not path.exists():
            raise InputError(path, "no pool here")
        table = pd.read_parquet(path)
        missing = set(POOL_COLUMNS) - set(table.columns)
        if missing:
            raise InputError(path, f"not a pool file (missing columns {sorted(missing)})")
        return cls(path, table)

    def save(self) -> None:
        with atomic_path(self.path) as tmp:
            self.table.to_parquet(tmp, index=False)

    def _set(self, tile_ids, state: str, round_: int, note: str = "", task_ids=None) -> None:
        tile_ids = list(tile_ids)
        index = self.table.index[self.table.tile_id.isin(tile_ids)]
        if len(index) != len(set(tile_ids)):
            unknown = sorted(set(tile_ids) - set(self.table.tile_id))
            raise MicroalError(f"{self.path}: tiles not in the pool: {unknown[:5]}")
        self.table.loc[index, ["state", "round", "updated", "note"]] = [state, round_, _now(), note]
        if task_ids is not None:
            mapping = dict(zip(tile_ids, task_ids))
            self.table.loc[index, "task_id"] = self.table.loc[index, "tile_id"].map(mapping).astype("Int64")
        self.save()

    def mark_queued(self, tile_ids, round_: int, task_ids=None) -> None:
        busy = self.table[self.table.tile_id.isin(list(tile_ids)) & (self.table.state != UNLABELLED)]
        if not busy.empty:
            raise MicroalError(f"tiles already {sorted(set(busy.state))}: {busy.tile_id.tolist()[:5]}; never queued twice")
        self._set(tile_ids, QUEUED, round_, task_ids=task_ids)

    def mark_labelled(self, tile_ids, round_: int, note: str = "") -> None:
        self._set(tile_ids, LABELLED, round_, note)

    def mark_rejected(self, tile_ids, round_: int, note: str) -> None:
        self._set(tile_ids, REJECTED, round_, note)

    def ids(self, state: str) -> list[str]:
        return self.table.tile_id[self.table.state == state].tolist()

    def counts(self) -> dict[str, int]:
        return {state: int((self.table.state == state).sum()) for state in STATES}


class LabelStore:
    """Per-image padded mask arrays at the tiling scale; unknown pixels are 255 (ignored)."""

    def __init__(self, root: str | Path, tileset: TileSet):
        self.root = Path(root)
        self.tileset = tileset
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, image_id: str) -> Path:
        return self.root / f"{image_id}.mask.npy"

    def _load(self, image_id: str) -> np.ndarray:
        path = self.path(image_id)
        if path.exists():
            return np.load(path)
        return np.full(self.tileset.grid(image_id).padded_shape, IGNORE_INDEX, dtype=np.uint8)

    def _centre_slices(self, tile: pd.Series) -> tuple[slice, slice]:
        grid = self.tileset.grid(tile.image_id)
        y, x = int(tile.y) + grid.margin, int(tile.x) + grid.margin
        return slice(y, y + grid.tile_size), slice(x, x + grid.tile_size)

    def write(self, tile: pd.Series, centre_mask: np.ndarray) -> None:
        """Store a tile's centre mask (tile_size square; 255 where the expert left it open)."""
        grid = self.tileset.grid(tile.image_id)
        if centre_mask.shape != (grid.tile_size, grid.tile_size):
            raise MicroalError(f"tile {tile.tile_id}: mask {centre_mask.shape} is not {grid.tile_size}x{grid.tile_size}")
        array = self._load(tile.image_id)
        array[self._centre_slices(tile)] = centre_mask
        # Padding beyond the image stays ignored, whatever the mask said there.
        truth_frame = np.full(grid.padded_shape, True)
        (top, bottom), (left, right) = grid.pad_widths()
        truth_frame[top : top + grid.height, left : left + grid.width] = False
        array[truth_frame] = IGNORE_INDEX
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
