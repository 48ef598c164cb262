"""End-to-end check of the expert loop, on data microal generates.

Starts a local Label Studio (its own venv), makes a synthetic set where only two micrographs come
with masks (benchmarks/expert_loop.py: the pool holds both imaging domains), then: ingest -> tile
-> `microal al init` -> `microal al run` (a subprocess, polling) trains the round-0 ensemble,
scores the pool and pushes a batch with pre-annotations. This script plays the expert: it
annotates every queued task through the API with the true masks (and a lead time), the loop
pulls them, retrains and pushes the next batch, twice. Half-way, `microal al run` is killed and
started again. Last line:

    ls_loop rounds=<n> pushed=<n> pulled=<n> duplicates=<n> lost=<n> miou_round0=<x> miou_round1=<x>
        miou_round2=<y> minutes=<m>       (one line)

duplicates: tasks for a tile that already had one; lost: annotations made here that are missing
from microal's record or whose mask differs from the label store.

Usage: python benchmarks/labelstudio_loop.py [--out bench-out/labelstudio_loop] [--rounds 2]
"""

from __future__ import annotations

import sys
import time

from common import fresh, parser


def main() -> int:
    args_parser = parser(__doc__, "labelstudio_loop")
    args_parser.add_argument("--rounds", type=int, default=2)
    args = args_parser.parse_args()

    import numpy as np
    import pandas as pd
    from expert_loop import start

    from microal.active.folders import ProjectFolders
    from microal.active.pool import Pool
    from microal.data.labels import LabelStore
    from microal.labelstudio.config import label_config

    started = time.time()
    out = fresh(args.out)
    loop = start(
        out,
        training={"epochs": 12, "samples_per_epoch": 96},
        al={"members": 2, "batch_size": 8, "acquisition": "bald", "score_batch_size": 64},
        min_new_annotations=8,
    )
    try:
        loop.start_al_run(args.rounds)
        for round_ in range(1, args.rounds + 1):
            batch = loop.wait_for_batch(round_)
            if round_ == 1:  # kill the loop once, between rounds, and start it again
                loop.kill_al_run()
                loop.start_al_run(args.rounds)
            loop.annotate(batch)
            print(f"round {round_}: annotated {len(batch)} tasks", flush=True)
        loop.finish()
        project_id = loop.client.ensure_project("microal loop", label_config(loop.config))
        task_tiles = [tile for tile, _ in loop.client.task_tiles(project_id)]  # as Label Studio has them
    finally:
        loop.close()

    root = loop.project_root
    pool = Pool.load(root / "pool.parquet").table
    record = pd.read_parquet(ProjectFolders(root).annotations)
    store = LabelStore(root / "labels", loop.tileset)
    tiles = loop.tileset.tiles.set_index("tile_id", drop=False)
    lost = sum(1 for t in loop.annotated if t not in set(record.tile_id)) + sum(
        1 for t, m in loop.annotated.items() if not np.array_equal(store.centre(tiles.loc[t]), m)
    )
    pushed = int(pool.task_id.notna().sum())
    reports = {r: pd.read_csv(root / "rounds" / f"round-{r}" / "report.csv") for r in range(args.rounds + 1)}
    miou = {r: float(rep.miou.iloc[0]) for r, rep in reports.items()}
    domains = pool[pool.state == "labelled"].groupby("round").domain.value_counts().unstack(fill_value=0)
    print(f"labelled tiles by round and domain:\n{domains.to_string()}")
    print(f"held-out mIoU by round: {', '.join(f'{r}: {v:.3f}' for r, v in miou.items())}")
    minutes = (time.time() - started) / 60
    print(
        f"ls_loop rounds={args.rounds} pushed={pushed} pulled={len(record)} "
        f"duplicates={len(task_tiles) - len(set(task_tiles))} lost={lost} miou_round0={miou[0]:.3f} "
        f"miou_round1={miou[1]:.3f} miou_round2={miou[min(2, args.rounds)]:.3f} minutes={minutes:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
