"""Pieces of the training loop that need no Ray: losses, class weights, datasets, progress."""

import numpy as np
import pytest
import torch
from conftest import quick_config_dict

from microal.config import parse_config
from microal.data.datasets import TileDataset
from microal.data.labels import LabelStore
from microal.data.tiles import load_tiles
from microal.data.tiling import IGNORE_INDEX
from microal.errors import ConfigError
from microal.training.supervised import SegmentationLoss, class_weights


def test_balanced_class_weights_favour_rare_phases(tiled, synth_dir):
    ws, catalog, _ = tiled
    tileset = load_tiles(ws.tiles)
    dataset = TileDataset(tileset, tileset.tiles[tileset.tiles.labelled])
    counts = dataset.source.class_pixel_counts(3)
    share = counts / counts.sum()
    config = parse_config(quick_config_dict(synth_dir, class_weights="balanced"))
    weights = class_weights(config, dataset).numpy()
    assert np.argmax(weights) == np.argmin(share) and np.argmin(weights) == np.argmax(share)
    assert float((weights * share).sum()) == pytest.approx(1.0)
    assert class_weights(parse_config(quick_config_dict(synth_dir)), dataset) is None


def test_weighted_loss_ignores_padding():
    logits = torch.zeros(1, 2, 2, 2, requires_grad=True)
    target = torch.tensor([[[0, 1], [IGNORE_INDEX, IGNORE_INDEX]]])
    plain = SegmentationLoss(0.0)(logits, target)
    assert float(plain) == pytest.approx(np.log(2))  # uniform prediction, only two pixels count
    weighted = SegmentationLoss(0.0, torch.tensor([3.0, 1.0]))(logits, target)
    assert float(weighted) == pytest.approx(np.log(2))  # a weighted mean of equal losses


def test_a_batch_with_no_labelled_pixel_gives_a_zero_loss_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE_INDEX)
    loss = SegmentationLoss(1.0, torch.tensor([1.0, 2.0, 3.0]))(logits, target)
    loss.backward()
    assert float(loss) == 0.0 and torch.isfinite(logits.grad).all() and float(logits.grad.abs().sum()) == 0.0


def test_windows_around_tiles_stay_on_the_labels_of_a_label_store(tiled, tmp_path):
    """Active learning labels single tiles of an image: windows drawn around those tiles always
    cover some of their labels; windows anywhere in the image mostly do not."""
    ws, _, _ = tiled
    tileset = load_tiles(ws.tiles)
    tiles = tileset.tiles
    image_id = tiles.image_id.iloc[0]
    tile = tiles[tiles.image_id == image_id].iloc[len(tiles[tiles.image_id == image_id]) // 2]
    grid = tileset.grid(image_id)
    store = np.full(grid.padded_shape, IGNORE_INDEX, np.uint8)
    centre = (
        slice(int(tile.y) + grid.margin, int(tile.y) + grid.margin + grid.tile_size),
        slice(int(tile.x) + grid.margin, int(tile.x) + grid.margin + grid.tile_size),
    )
    store[centre] = 1
    labels = LabelStore(tmp_path, tileset)
    np.save(labels.path(image_id), store)
    chosen = tiles[tiles.tile_id == tile.tile_id].assign(labelled=True)

    def labelled_share(around):
        dataset = TileDataset(
            tileset, chosen, sampling="random", samples_per_epoch=40, seed=1, labels=labels, around=around
        )
        inner = slice(grid.margin, grid.margin + grid.tile_size)  # the part of a window the loss sees
        return [float((dataset[i][1][inner, inner] != IGNORE_INDEX).float().mean()) for i in range(40)]

    near = labelled_share("tile")
    assert min(near) >= 0.24  # at most half a tile off in each direction: a quarter of the centre or more
    anywhere = labelled_share("image")
    assert sum(share == 0 for share in anywhere) > 10
    with pytest.raises(ValueError, match="around"):
        TileDataset(tileset, chosen, around="tiles")


def test_random_windows_are_reproducible_and_unlabelled_tiles_are_ignored(tiled):
    ws, _, _ = tiled
    tileset = load_tiles(ws.tiles)
    dataset = TileDataset(tileset, tileset.tiles, sampling="random", samples_per_epoch=5, seed=3)
    first = [dataset[i][0] for i in range(5)]
    assert all(torch.equal(a, dataset[i][0]) for i, a in enumerate(first))
    dataset.set_epoch(1)
    assert not all(torch.equal(a, dataset[i][0]) for i, a in enumerate(first))
    unlabelled = TileDataset(tileset, tileset.tiles.assign(labelled=False).head(2))  # as a UDA target
    _, mask = unlabelled[0]
    assert (mask == IGNORE_INDEX).all()


def _centres(dataset, grid, windows=200):
    """The part of each window the loss sees: its centre's labels."""
    inner = slice(grid.margin, grid.margin + grid.tile_size)
    return [dataset[i][1][inner, inner].numpy() for i in range(windows)]


def test_class_centred_windows_show_the_rarer_classes_more_often(tiled, synth_dir):
    ws, _, _ = tiled
    tileset = load_tiles(ws.tiles)
    labelled = tileset.tiles[tileset.tiles.labelled]
    grid = tileset.grid(labelled.image_id.iloc[0])

    def dataset(fraction):
        return TileDataset(tileset, labelled, sampling="random", samples_per_epoch=200, seed=5, class_windows=fraction)

    counts = dataset(0.0).source.class_pixel_counts(3)
    matrix, rarest = int(np.argmax(counts)), int(np.argmin(counts))
    plain, centred = _centres(dataset(0.0), grid), _centres(dataset(1.0), grid)
    # Every class-centred window has a pixel of a class other than the matrix where the loss sees it.
    assert all(((c != matrix) & (c != IGNORE_INDEX)).any() for c in centred)
    assert sum((c == rarest).any() for c in centred) > sum((c == rarest).any() for c in plain)

    def share(centres, value):
        return np.mean([(c == value).sum() / (c != IGNORE_INDEX).sum() for c in centres])

    assert share(centred, matrix) < share(plain, matrix) - 0.05
    # Reproducible, and without class windows the draws are exactly those of plain random sampling.
    assert all(torch.equal(dataset(1.0)[i][1], dataset(1.0)[i][1]) for i in range(5))
    unchanged = TileDataset(tileset, labelled, sampling="random", samples_per_epoch=200, seed=5)
    assert all(torch.equal(unchanged[i][0], dataset(0.0)[i][0]) for i in range(5))
    with pytest.raises(ValueError, match="class_windows"):
        dataset(1.5)
    with pytest.raises(ConfigError, match="class_windows needs training.sampling: random"):
        parse_config(quick_config_dict(synth_dir, sampling="grid", class_windows=0.3))
