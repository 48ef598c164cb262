"""Scoring throughput benchmark: the same ensemble scoring the same tiles through Ray
(2 actors, one thread each) and in one process (torch using both cores), in one run.

Ray's gain comes from more nodes and GPUs; on 2 cores this measures what it costs. Both runs
include loading the members; the Ray run includes starting its actors. Last line:

    score tiles=<n> tiles_per_s_ray=<x> tiles_per_s_single=<y> ratio=<x/y>

Usage: python benchmarks/score_throughput.py [--tiles 4000] [--members 3] [--out bench-out/score_throughput]
"""

from __future__ import annotations

import sys
import time

from common import fresh, parser


def main() -> int:
    args_parser = parser(__doc__, "score_throughput")
    args_parser.add_argument("--tiles", type=int, default=4000)
    args_parser.add_argument("--members", type=int, default=3)
    args_parser.add_argument("--batch-size", type=int, default=64)
    args = args_parser.parse_args()

    from functools import partial

    import numpy as np
    import torch

    from microal.active.scoring import ScorerFactory, TileScorer
    from microal.backend import ray as ray_backend
    from microal.config import load_config
    from microal.data.catalog import ingest
    from microal.data.synth import generate
    from microal.data.tiles import build_tiles
    from microal.models.factory import build_model
    from microal.models.model_file import save_model_file

    out = fresh(args.out)
    generate(out / "data", n_per_domain=(30, 10))
    config = load_config(out / "data" / "microal.yaml")
    catalog, _ = ingest(out / "data" / "manifest.csv", config, out / "catalog.parquet", progress=False)
    tileset = build_tiles(catalog, config, out / "tiles", progress=False)
    members = []
    for seed in range(args.members):
        torch.manual_seed(seed)
        path = out / f"member-{seed}.pt"
        save_model_file(path, build_model(config.model, config.num_classes), config, 1, {}, [])
        members.append(str(path))
    ids = tileset.tiles.tile_id.tolist()
    tile_ids = [ids[i % len(ids)] for i in range(args.tiles)]  # the pool, repeated to N tiles
    acquisitions = ["bald", "entropy"]

    # Single process: torch uses both cores.
    started = time.time()
    scorer = TileScorer(members, str(out / "tiles"), threads=2)
    single = [
        scorer.score(tile_ids[i : i + args.batch_size], acquisitions).scores["bald/mean"]
        for i in range(0, len(tile_ids), args.batch_size)
    ]
    single_seconds = time.time() - started
    del scorer

    # Ray: two actors with one thread each, the same batches.
    ray_backend.init_ray(num_cpus=2)
    started = time.time()
    batches = ray_backend.map_batches(
        ScorerFactory(tuple(members), str(out / "tiles"), threads=1),
        partial(TileScorer.score, acquisitions=acquisitions),
        tile_ids,
        batch_size=args.batch_size,
        actors=2,
        threads_per_actor=1,
    )
    ray_seconds = time.time() - started
    ray_backend.shutdown_ray()

    same = np.allclose(
        np.concatenate(single), np.concatenate([b.scores["bald/mean"] for b in batches]), rtol=1e-4, atol=1e-6
    )
    print(f"single process: {single_seconds:.1f} s; Ray: {ray_seconds:.1f} s; same scores: {same}")
    x, y = len(tile_ids) / ray_seconds, len(tile_ids) / single_seconds
    print(f"score tiles={len(tile_ids)} tiles_per_s_ray={x:.1f} tiles_per_s_single={y:.1f} ratio={x / y:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
