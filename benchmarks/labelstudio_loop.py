"""End-to-end check of the expert loop, on data microal generates.

Starts a local Label Studio (its own venv), makes a synthetic set where only two micrographs come
with masks, then: ingest -> tile -> `microal al init` -> `microal al run` (a subprocess, polling)
trains the round-0 ensemble, scores the pool and pushes a batch with pre-annotations. This script
plays the expert: it annotates every queued task through the API with the true masks (and a lead
time), the loop pulls them, retrains and pushes the next batch, twice. Half-way, `microal al run`
is killed and started again. Last line:

    ls_loop rounds=<n> pushed=<n> pulled=<n> duplicates=<n> lost=<n> miou_round1=<x> miou_round2=<y> minutes=<m>

duplicates: tasks for a tile that already had one; lost: annotations made here that are missing
from microal's record or whose mask differs from the label store.

Usage: python benchmarks/labelstudio_loop.py [--out bench-out/labelstudio_loop] [--rounds 2]
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from common import fresh, parser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    args_parser = parser(__doc__, "labelstudio_loop")
    args_parser.add_argument("--rounds", type=int, default=2)
    args = args_parser.parse_args()

    import numpy as np
    import pandas as pd
    import yaml

    from microal.active.folders import ProjectFolders
    from microal.active.pool import Pool
    from microal.config import parse_config
    from microal.data.catalog import ingest
    from microal.data.imageio import read_mask
    from microal.data.labels import LabelStore
    from microal.data.synth import generate
    from microal.data.tiles import build_tiles, load_tiles
    from microal.data.tiling import resample_mask
    from microal.labelstudio.client import LabelStudioClient, mask_to_results
    from microal.labelstudio.config import label_config
    from microal.labelstudio.server import new_token_file, start_server

    started = time.time()
    out = fresh(args.out)
    work = out / "work"
    work.mkdir()

    # Data: 10 SEM-like + 4 light-optical-like images; masks kept for two images only (the starting set).
    data = out / "data"
    generate(data, n_per_domain=(10, 4))
    manifest = pd.read_csv(data / "manifest.csv")
    truth_masks = dict(zip(manifest.image.map(lambda p: Path(p).name), manifest["mask"].map(lambda p: str(data / p))))
    raw = yaml.safe_load((data / "microal.yaml").read_text())
    test_samples = raw["split"]["test"]["values"]
    in_pool = ~manifest["sample"].isin(test_samples)
    manifest.loc[in_pool & (manifest["sample"] != "A-s0"), "mask"] = ""  # the pool: no masks
    manifest.to_csv(data / "manifest.csv", index=False)
    raw["training"].update({"epochs": 8, "samples_per_epoch": 64})
    raw["al"] = {"members": 2, "batch_size": 8, "acquisition": "bald", "score_batch_size": 64}
    raw["labelstudio"] = {"min_new_annotations": 8, "poll_seconds": 2.0, "files_root": str(work)}
    token = new_token_file(out / "ls" / "token")
    port = _free_port()
    raw["labelstudio"]["url"] = f"http://127.0.0.1:{port}"
    config_path = out / "microal.yaml"
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = parse_config(raw)

    catalog, _ = ingest(data / "manifest.csv", config, work / "catalog.parquet", progress=False)
    build_tiles(catalog, config, work / "tiles", progress=False)
    tileset = load_tiles(work / "tiles")

    def expert_mask(tile_id: str) -> np.ndarray:
        """What an expert paints: the true mask of the tile, at the tile's scale."""
        tile = tileset.tiles.set_index("tile_id").loc[tile_id]
        image = tileset.images.loc[tile.image_id]
        truth = read_mask(truth_masks[image.image_name], config.classes, config.ingest)
        grid = tileset.grid(tile.image_id)
        padded = grid.pad_mask(resample_mask(truth, shape=(grid.height, grid.width)))
        y, x = int(tile.y) + grid.margin, int(tile.x) + grid.margin
        return padded[y : y + grid.tile_size, x : x + grid.tile_size]

    env = {**os.environ, "LABEL_STUDIO_TOKEN": token, "RAY_ADDRESS": ""}
    microal = [sys.executable, "-m", "microal.cli"]
    subprocess.run(
        microal + ["al", "init", "-c", str(config_path), "-w", str(work), "--name", "loop"], check=True, env=env
    )
    print(f"starting Label Studio on 127.0.0.1:{port} ...", flush=True)
    server = start_server(out / "ls" / "data", port, work, token)
    client = LabelStudioClient(server.url, token)
    log = open(out / "al-run.log", "w")

    def al_run() -> subprocess.Popen:
        return subprocess.Popen(
            microal
            + [
                "al",
                "run",
                "-c",
                str(config_path),
                "-w",
                str(work),
                "--name",
                "loop",
                "--until-round",
                str(args.rounds),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    annotated: dict[str, np.ndarray] = {}
    pool_path = work / "al" / "loop" / "pool.parquet"
    runner = al_run()
    restarted = False
    try:
        for round_ in range(1, args.rounds + 1):
            # Wait for this round's batch in Label Studio, then annotate every task as an expert would.
            deadline = time.time() + 600
            while time.time() < deadline:
                if runner.poll() is not None:
                    raise RuntimeError(
                        f"microal al run ended early (code {runner.returncode}); see {out / 'al-run.log'}"
                    )
                pool = Pool.load(pool_path).table
                batch = pool[(pool.state == "queued") & (pool["round"] == round_)]
                if len(batch) == config.al.batch_size:
                    break
                time.sleep(1)
            else:
                raise TimeoutError(f"round {round_}: no batch was pushed")
            if not restarted:  # kill the loop once, between rounds, and start it again
                os.killpg(runner.pid, signal.SIGKILL)
                runner.wait()
                runner = al_run()
                restarted = True
            for tile_id, task_id in zip(batch.tile_id, batch.task_id.astype(int)):
                mask = expert_mask(tile_id)
                client.annotate(
                    task_id,
                    mask_to_results(mask, config.class_names),
                    lead_time=float(np.random.default_rng(task_id).uniform(40, 120)),
                )
                annotated[tile_id] = mask
            print(f"round {round_}: annotated {len(batch)} tasks", flush=True)
        runner.wait(timeout=900)
        if runner.returncode != 0:
            raise RuntimeError(f"microal al run failed (code {runner.returncode}); see {out / 'al-run.log'}")
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGTERM)
        log.close()

    project_id = client.ensure_project("microal loop", label_config(config))
    task_tiles = [tile for tile, _ in client.task_tiles(project_id)]  # as Label Studio has them
    server.stop()

    project_root = work / "al" / "loop"
    pool = Pool.load(project_root / "pool.parquet").table
    record = pd.read_parquet(ProjectFolders(project_root).annotations)
    store = LabelStore(project_root / "labels", tileset)
    tiles = tileset.tiles.set_index("tile_id", drop=False)
    lost = sum(1 for t in annotated if t not in set(record.tile_id)) + sum(
        1 for t, m in annotated.items() if not np.array_equal(store.centre(tiles.loc[t]), m)
    )
    pushed = int(pool.task_id.notna().sum())
    reports = {r: pd.read_csv(project_root / "rounds" / f"round-{r}" / "report.csv") for r in range(args.rounds + 1)}
    miou = {r: float(rep.miou.iloc[0]) for r, rep in reports.items()}
    minutes = (time.time() - started) / 60
    print(f"held-out mIoU by round: {', '.join(f'{r}: {v:.3f}' for r, v in miou.items())}")
    print(
        f"ls_loop rounds={args.rounds} pushed={pushed} pulled={len(record)} "
        f"duplicates={len(task_tiles) - len(set(task_tiles))} "
        f"lost={lost} miou_round1={miou[1]:.3f} miou_round2={miou[min(2, args.rounds)]:.3f} minutes={minutes:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
