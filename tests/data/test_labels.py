"""The label store: only what was labelled is known, at tile centres, inside the image."""

import numpy as np
import pytest

from microal.data.datasets import WindowSource
from microal.data.labels import LabelStore
from microal.data.tiles import load_tiles
from microal.data.tiling import IGNORE_INDEX
from microal.errors import MicroalError


def test_label_store_reveals_only_tile_centres(tiled, tmp_path):
    ws, _, _ = tiled
    tileset = load_tiles(ws.tiles)
    store = LabelStore(tmp_path / "labels", tileset)
    tile = tileset.tiles.iloc[4]
    store.reveal_from_truth(tileset.tiles.iloc[[4]])
    stored = np.load(store.path(tile.image_id))
    truth = tileset.mask_array(tile.image_id)
    grid = tileset.grid(tile.image_id)
    m, t = grid.margin, grid.tile_size
    centre = (slice(tile.y + m, tile.y + m + t), slice(tile.x + m, tile.x + m + t))
    np.testing.assert_array_equal(stored[centre], truth[centre])
    outside = np.ones(stored.shape, dtype=bool)
    outside[centre] = False
    assert (stored[outside] == IGNORE_INDEX).all()  # nothing else revealed

    painted = np.full((t, t), 2, np.uint8)
    store.write(tile, painted)
    np.testing.assert_array_equal(store.centre(tile)[truth[centre] != IGNORE_INDEX], 2)
    with pytest.raises(MicroalError, match="is not"):
        store.write(tile, np.zeros((3, 3), np.uint8))


def test_datasets_read_labels_from_the_store_and_nothing_else(tiled, tmp_path):
    ws, _, _ = tiled
    tileset = load_tiles(ws.tiles)
    store = LabelStore(tmp_path / "labels", tileset)
    first, second = tileset.tiles.image_id.unique()[:2]
    assert store.read(first) is None  # nothing labelled yet
    store.reveal_from_truth(tileset.tiles[tileset.tiles.image_id == first].iloc[[0]])
    source = WindowSource(tileset, [first, second], labels=store)
    tile = tileset.tiles[tileset.tiles.image_id == first].iloc[0]
    _, mask = source.cut(first, int(tile.y), int(tile.x))
    np.testing.assert_array_equal(mask, store.read(first)[tileset.grid(first).window_slice(int(tile.y), int(tile.x))])
    assert source.cut(second, 0, 0)[1] is None  # an image with no labelled tile has no mask at all
