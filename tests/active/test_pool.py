import pytest

from microal.active.pool import LABELLED, QUEUED, REJECTED, UNLABELLED, Pool
from microal.data.tiles import load_tiles
from microal.errors import MicroalError


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
