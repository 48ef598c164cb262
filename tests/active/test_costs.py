"""Label cost in expert time: boundary length, the oracle's simulated cost, the cost table and
the estimate selection uses."""

import numpy as np
import pandas as pd
import pytest

from microal.active.costs import CostEstimate, CostTable, SimulatedCost, boundary_pixels
from microal.data.tiling import IGNORE_INDEX


def test_boundary_pixels_count_neighbouring_pairs_of_different_labelled_classes():
    mask = np.zeros((4, 6), np.uint8)
    assert boundary_pixels(mask) == 0
    mask[:, 3:] = 1  # a vertical boundary 4 rows long
    assert boundary_pixels(mask) == 4
    mask[2:, :] = 2  # and a horizontal one across 6 columns, the vertical one now 2 rows
    assert boundary_pixels(mask) == 2 + 6
    mask[:, :1] = IGNORE_INDEX  # unknown pixels border nothing
    assert boundary_pixels(mask) == 2 + 5


def test_the_oracle_cost_grows_with_the_boundary():
    cost = SimulatedCost(seconds_per_tile=30, seconds_per_100_boundary_px=10)
    mask = np.zeros((50, 50), np.uint8)
    assert cost.seconds(mask) == 30
    mask[:, 25:] = 1  # 50 px of boundary
    assert cost.seconds(mask) == pytest.approx(35)


def test_the_table_keeps_one_cost_per_tile_and_annotator(tmp_path):
    table = CostTable(tmp_path / "costs.parquet")
    assert table.read().empty and table.seconds_by_tile().empty
    row = {"tile_id": "t1", "annotator": "ann", "round": 1, "seconds": 40.0, "source": "label studio"}
    table.record([row, {**row, "annotator": "bob", "seconds": 20.0}])
    table.record([{**row, "seconds": 50.0}])  # ann changed her annotation: the latest counts
    assert len(table.read()) == 2
    assert table.seconds_by_tile().to_dict() == {"t1": 70.0}


def test_the_estimate_is_fitted_once_enough_tiles_have_a_cost():
    prior = SimulatedCost(30, 10)
    nothing = CostEstimate.from_labelled(pd.Series(dtype=float), pd.Series(dtype=float), prior)
    assert (nothing.seconds_per_tile, nothing.seconds_per_100_boundary_px) == (30, 10) and "prior" in nothing.basis
    boundary = pd.Series([0, 100, 200, 400, 800, 50], index=[f"t{i}" for i in range(6)], dtype=float)
    seconds = 45 + 12 * boundary / 100  # an expert who takes 45 s plus 12 s per 100 px
    fitted = CostEstimate.from_labelled(seconds, boundary, prior)
    assert fitted.seconds_per_tile == pytest.approx(45) and fitted.seconds_per_100_boundary_px == pytest.approx(12)
    assert fitted.seconds([0, 100]) == pytest.approx([45, 57])
    few = CostEstimate.from_labelled(seconds.head(3), boundary, prior)  # too few to fit a line
    assert few.seconds_per_100_boundary_px == 0 and few.seconds_per_tile == pytest.approx(seconds.head(3).mean())
    faster_with_more = CostEstimate.from_labelled(100 - boundary / 10, boundary, prior)
    assert faster_with_more.seconds_per_100_boundary_px == 0  # a falling line is not believed
