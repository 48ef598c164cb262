"""Scoring tiles with an ensemble: in-process, and through Ray actors (same numbers)."""

from functools import partial

import numpy as np
import pytest
import torch

from microal.active.scoring import ScorerFactory, TileScorer, model_version, score_table
from microal.backend import ray as ray_backend
from microal.data.tiles import load_tiles
from microal.models.factory import build_model
from microal.models.model_file import save_model_file


@pytest.fixture(scope="module")
def members(tiled, tmp_path_factory):
    _, _, config = tiled
    folder = tmp_path_factory.mktemp("members")
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        path = folder / f"m{seed}.pt"
        save_model_file(path, build_model(config.model, config.num_classes), config, 1, {}, [])
        paths.append(str(path))
    return paths


def test_scores_embeddings_and_masks(tiled, members):
    ws, _, config = tiled
    tiles = load_tiles(ws.tiles).tiles
    ids = tiles.tile_id.head(6).tolist()
    scorer = TileScorer(members, str(ws.tiles))
    batch = scorer.score(ids, ["entropy", "bald", "random"], reduction="mean")
    assert set(batch.scores) == {"entropy/mean", "bald/mean", "random/mean"}
    assert all(v.shape == (6,) and (v >= 0).all() for v in batch.scores.values())
    assert batch.embeddings.shape[0] == 6 and batch.embeddings.shape[1] == 512  # resnet18's deepest features
    masks = scorer.ensemble_masks(ids)
    assert masks.shape == (6, 32, 32) and masks.max() < config.num_classes
    # What an expert is shown: the pre-annotation, and uncertainty whose tile mean ranks like entropy.
    images, previews, uncertainty = scorer.previews(ids)
    assert images.shape == previews.shape == uncertainty.shape == (6, 32, 32)
    np.testing.assert_array_equal(previews, masks)
    assert 0 <= uncertainty.min() and uncertainty.max() <= 1 + 1e-6
    np.testing.assert_allclose(
        uncertainty.mean(axis=(1, 2)) * np.log(config.num_classes), batch.scores["entropy/mean"], rtol=1e-3
    )
    counts = scorer.pixel_counts(ids)
    assert counts.shape == (4, 3, config.num_classes)  # ensemble + 3 members
    # Every labelled centre pixel is counted once per model: tp + fn over classes = pixels.
    assert len({int(c[0].sum() + c[2].sum()) for c in counts}) == 1

    table, embeddings = score_table([batch], tiles, "v1")
    assert len(table) == 18 and set(table.columns) >= {
        "tile_id",
        "acquisition",
        "reduction",
        "score",
        "model_version",
        "image_id",
        "domain",
    }
    assert list(embeddings.index) == ids


def test_ray_actors_give_the_same_scores(ray_local, tiled, members):
    ws, _, _ = tiled
    ids = load_tiles(ws.tiles).tiles.tile_id.tolist()[:20]
    local = TileScorer(members, str(ws.tiles)).score(ids, ["bald"])
    score = partial(TileScorer.score, acquisitions=["bald"])
    remote = ray_backend.map_batches(ScorerFactory(tuple(members), str(ws.tiles)), score, ids, batch_size=7, actors=2)
    assert [t for b in remote for t in b.tile_ids] == ids  # order kept across batches and actors
    np.testing.assert_allclose(
        np.concatenate([b.scores["bald/mean"] for b in remote]), local.scores["bald/mean"], rtol=1e-4, atol=1e-6
    )


def test_model_version_follows_the_files(members, tmp_path):
    assert model_version(members) == model_version(list(members))
    assert model_version(members) != model_version(members[:2])
