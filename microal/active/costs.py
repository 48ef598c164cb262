"""What labels cost in expert time: one row per tile and annotator, kept beside the pool.

Label Studio's lead time of each annotation is a real cost; an oracle's cost is simulated from
the tile's true mask (`SimulatedCost`), so the learning curves of a simulation can be read
against expert seconds as well as against tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from microal.data.tiling import IGNORE_INDEX
from microal.files import atomic_path

COST_COLUMNS = ["tile_id", "annotator", "round", "seconds", "source"]


def boundary_pixels(mask: np.ndarray) -> int:
    """Phase boundary length in pixels: neighbouring pixel pairs (4-connected) of different
    classes, where both are labelled."""
    mask = np.asarray(mask)
    total = 0
    for a, b in ((mask[1:, :], mask[:-1, :]), (mask[:, 1:], mask[:, :-1])):
        total += int(((a != b) & (a != IGNORE_INDEX) & (b != IGNORE_INDEX)).sum())
    return total


@dataclass(frozen=True)
class SimulatedCost:
    """An expert's seconds for a tile: a fixed share (look, decide, submit) plus painting along
    the phase boundaries, which is where the time goes when correcting a pre-annotation. The
    defaults are assumptions to be replaced by a lab's own lead times (`microal al pull` records
    them), not measurements."""

    seconds_per_tile: float = 30.0
    seconds_per_100_boundary_px: float = 10.0

    def seconds(self, mask: np.ndarray) -> float:
        return self.seconds_per_tile + self.seconds_per_100_boundary_px * boundary_pixels(mask) / 100


class CostTable:
    """costs.parquet: tile, annotator, round, seconds, source (label studio / simulated). A tile
    annotated again by the same annotator keeps the latest cost."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> pd.DataFrame:
        if not self.path.exists():
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(COST_COLUMNS, [str, str, int, float, str])})
        return pd.read_parquet(self.path)

    def record(self, rows: list[dict]) -> None:
        if not rows:
            return
        table = pd.concat([self.read(), pd.DataFrame(rows)[COST_COLUMNS]], ignore_index=True)
        table = table.drop_duplicates(["tile_id", "annotator"], keep="last").reset_index(drop=True)
        with atomic_path(self.path) as tmp:
            table.to_parquet(tmp, index=False)

    def seconds_by_tile(self) -> pd.Series:
        """Total expert seconds per tile (over its annotators)."""
        return self.read().groupby("tile_id").seconds.sum()


MIN_TILES_FOR_FIT = 5  # labelled tiles with a cost before their boundaries are fitted


@dataclass(frozen=True)
class CostEstimate:
    """Expected expert seconds of a tile from the boundary length its pre-annotation shows:
    seconds_per_tile + seconds_per_100_boundary_px x boundary / 100. `basis` says where the
    numbers came from."""

    seconds_per_tile: float
    seconds_per_100_boundary_px: float
    basis: str

    def seconds(self, boundary_px) -> np.ndarray:
        return self.seconds_per_tile + self.seconds_per_100_boundary_px * np.asarray(boundary_px, float) / 100

    @classmethod
    def from_labelled(cls, seconds: pd.Series, boundary_px: pd.Series, prior: SimulatedCost) -> CostEstimate:
        """From what labelled tiles cost (`seconds`, by tile) and the boundary length of their
        labels (`boundary_px`, by tile): a least-squares line once MIN_TILES_FOR_FIT tiles of
        different boundary lengths have a cost, the mean seconds per tile before that, and the
        `prior` while nothing has been paid. Neither term goes below 0."""
        both = pd.concat([seconds.rename("seconds"), boundary_px.rename("boundary")], axis=1, join="inner").dropna()
        if len(both) >= MIN_TILES_FOR_FIT and both.boundary.nunique() > 1:
            slope, intercept = np.polyfit(both.boundary.to_numpy() / 100, both.seconds.to_numpy(), 1)
            if slope < 0:  # more boundary is never faster: the mean is the better guess
                return cls(float(both.seconds.mean()), 0.0, f"mean of {len(both)} labelled tiles")
            if intercept < 0:
                intercept, slope = 0.0, float(both.seconds.sum() / max(both.boundary.sum() / 100, 1e-9))
            return cls(float(intercept), float(slope), f"fitted to {len(both)} labelled tiles")
        if len(both):
            return cls(float(both.seconds.mean()), 0.0, f"mean of {len(both)} labelled tiles")
        return cls(prior.seconds_per_tile, prior.seconds_per_100_boundary_px, "prior (nothing labelled has a cost)")
