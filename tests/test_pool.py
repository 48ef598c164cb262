import numpy as np
import pytest

from microal.errors import MicroalError
from microal.pool import LABELLED, QUEUED, REJECTED, UNLABELLED, LabelStore, Pool
from microal.tileset import load_tiles
from microal.tiling import IGNORE_INDEX


def test_pool_states_persist_and_never_queue_twice(tiled, tmp_path):
    ws, _, _ = tiled
    tiles = load_tiles(ws.tiles).tiles
    pool = Pool.create(tmp_path / "pool.parquet", tiles)
    ids = tiles.tile_id.tolist()
    pool.mark_queued(ids[:3], 1, task_ids=[11, 12, 13])
    pool.mark_labelled(ids[:2], 1)
    pool.mark_rejected(ids[2:3], 1, note="beam shadow")
    with pytest.raises(MicroalError, match="never queued twice"):
        pool.mark_queued(ids[1:4], 2)

    again = Pool.load(tmp_path / "pool.parquet")  # as after a restart
    assert again.counts() == {UNLABELLED: len(ids) - 3, QUEUED: 0, LABELLED: 2, REJECTED: 1}
    row = again.table.set_index("tile_id").loc[ids[2]]
    assert row.state == REJECTED and row.note == "beam shadow" and row.task_id == 13 and row["round"] == 1
    assert again.ids(LABELLED) == ids[:2]
    with pytest.raises(MicroalError, match="a pool already exists"):
        Pool.create(tmp_path / "pool.parquet", tiles)


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
