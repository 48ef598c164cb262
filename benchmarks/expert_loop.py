"""What the two Label Studio benchmarks share (labelstudio_loop.py, round_latency.py): a synthetic
set where two micrographs come with masks, a real Label Studio server, `microal al run` as a
subprocess, and an expert played through the API, who paints each queued tile's true mask.

The pool holds both imaging domains: the SEM-like images of samples A-s1..A-s3 and the
light-optical-like images of B-s0; held out are A-s4 and B-s1. Only A-s0 comes with masks, so
round 0's ensemble has never seen a light-optical label and the loop can show that it learns
from what the experts paint. (The benchmark's first version held out every light-optical image:
two thirds of its held-out set was a domain no round could ever label, and held-out mIoU could
not move.)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

HELD_OUT = ["A-s4", "B-s1"]
STARTING_SAMPLE = "A-s0"  # the only sample that comes with masks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ExpertLoop:
    out: Path
    config_path: Path
    work: Path
    config: object
    tileset: object
    truth_masks: dict
    server: object
    client: object
    env: dict
    log: object = None
    runner: subprocess.Popen | None = None
    annotated: dict = field(default_factory=dict)

    @property
    def project_root(self) -> Path:
        return self.work / "al" / "loop"

    def expert_mask(self, tile_id: str) -> np.ndarray:
        """What an expert paints: the true mask of the tile, at the tile's scale."""
        from microal.data.imageio import read_mask
        from microal.data.tiling import resample_mask

        tile = self.tileset.tiles.set_index("tile_id").loc[tile_id]
        image = self.tileset.images.loc[tile.image_id]
        truth = read_mask(self.truth_masks[image.image_name], self.config.classes, self.config.ingest)
        grid = self.tileset.grid(tile.image_id)
        padded = grid.pad_mask(resample_mask(truth, shape=(grid.height, grid.width)))
        y, x = int(tile.y) + grid.margin, int(tile.x) + grid.margin
        return padded[y : y + grid.tile_size, x : x + grid.tile_size]

    def start_al_run(self, until_round: int) -> None:
        command = [sys.executable, "-m", "microal.cli", "al", "run", "-c", str(self.config_path)]
        command += ["-w", str(self.work), "--name", "loop", "--until-round", str(until_round)]
        self.runner = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )

    def kill_al_run(self) -> None:
        os.killpg(self.runner.pid, signal.SIGKILL)
        self.runner.wait()

    def wait_for_batch(self, round_: int, timeout: float = 900) -> pd.DataFrame:
        """The tiles queued for this round, once the whole batch is in Label Studio."""
        from microal.active.pool import Pool

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.runner.poll() is not None:
                raise RuntimeError(f"microal al run ended early (code {self.runner.returncode}); see {self.log.name}")
            pool = Pool.load(self.project_root / "pool.parquet").table
            batch = pool[(pool.state == "queued") & (pool["round"] == round_)]
            if len(batch) == self.config.al.batch_size:
                return batch
            time.sleep(0.5)
        raise TimeoutError(f"round {round_}: no batch was pushed")

    def annotate(self, batch: pd.DataFrame) -> None:
        """Paint every queued tile's true mask, as an expert would, with a lead time."""
        from microal.labelstudio.client import mask_to_results

        for tile_id, task_id in zip(batch.tile_id, batch.task_id.astype(int)):
            mask = self.expert_mask(tile_id)
            lead_time = float(np.random.default_rng(task_id).uniform(40, 120))
            self.client.annotate(task_id, mask_to_results(mask, self.config.class_names), lead_time=lead_time)
            self.annotated[tile_id] = mask

    def finish(self, timeout: float = 900) -> None:
        self.runner.wait(timeout=timeout)
        if self.runner.returncode != 0:
            raise RuntimeError(f"microal al run failed (code {self.runner.returncode}); see {self.log.name}")

    def close(self) -> None:
        if self.runner is not None and self.runner.poll() is None:
            os.killpg(self.runner.pid, signal.SIGTERM)
        if self.log is not None:
            self.log.close()
        self.server.stop()


def start(out: Path, training: dict, al: dict, min_new_annotations: int) -> ExpertLoop:
    """Data, config, ingest and tiles, `al init`, and a Label Studio server."""
    from microal.config import parse_config
    from microal.data.catalog import ingest
    from microal.data.synth import generate
    from microal.data.tiles import build_tiles, load_tiles
    from microal.labelstudio.client import LabelStudioClient
    from microal.labelstudio.server import new_token_file, start_server

    work = out / "work"
    work.mkdir()
    data = out / "data"
    generate(data, n_per_domain=(10, 4))  # 5 SEM-like samples of 2 images, 2 light-optical-like
    manifest = pd.read_csv(data / "manifest.csv")
    truth_masks = dict(zip(manifest.image.map(lambda p: Path(p).name), manifest["mask"].map(lambda p: str(data / p))))
    raw = yaml.safe_load((data / "microal.yaml").read_text())
    raw["split"]["test"]["values"] = HELD_OUT
    in_pool = ~manifest["sample"].isin(HELD_OUT)
    manifest.loc[in_pool & (manifest["sample"] != STARTING_SAMPLE), "mask"] = ""  # the pool: no masks
    manifest.to_csv(data / "manifest.csv", index=False)
    raw["training"].update(training)
    raw["al"] = al
    token = new_token_file(out / "ls" / "token")
    port = free_port()
    raw["labelstudio"] = {
        "min_new_annotations": min_new_annotations,
        "poll_seconds": 1.0,
        "files_root": str(work),
        "url": f"http://127.0.0.1:{port}",
    }
    config_path = out / "microal.yaml"
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = parse_config(raw)
    catalog, _ = ingest(data / "manifest.csv", config, work / "catalog.parquet", progress=False)
    build_tiles(catalog, config, work / "tiles", progress=False)
    env = {**os.environ, "LABEL_STUDIO_TOKEN": token, "RAY_ADDRESS": ""}
    subprocess.run(
        [sys.executable, "-m", "microal.cli", "al", "init", "-c", str(config_path), "-w", str(work), "--name", "loop"],
        check=True,
        env=env,
    )
    print(f"starting Label Studio on 127.0.0.1:{port} ...", flush=True)
    server = start_server(out / "ls" / "data", port, work, token)
    loop = ExpertLoop(
        out, config_path, work, config, load_tiles(work / "tiles"), truth_masks, server,
        LabelStudioClient(server.url, token), env,
    )  # fmt: skip
    loop.log = open(out / "al-run.log", "w")
    return loop
