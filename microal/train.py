"""`microal train`: split the tile set, run supervised training on Ray Train, export the run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from microal import ray_backend
from microal.config import ProjectConfig, save_config
from microal.errors import MicroalError
from microal.files import atomic_path
from microal.plots import learning_curve
from microal.splits import TRAIN, VAL, assign_splits
from microal.tileset import load_tiles
from microal.training import TrainJob


@dataclass
class TrainSummary:
    run_dir: Path
    best_model: Path
    best_metrics: dict
    history: pd.DataFrame


def _storage_exists(storage_path: str, name: str) -> bool:
    return "://" not in storage_path and (Path(storage_path) / name).exists()


def train(
    config: ProjectConfig,
    tiles_root: Path,
    run_dir: Path,
    storage_path: str,
    name: str,
    resume: bool = False,
    address: str | None = None,
    init_model: str | None = None,
) -> TrainSummary:
    """Train on the split's train images, validate on its val images, keep the best epoch."""
    exists = _storage_exists(storage_path, name)
    if exists and not resume:
        raise MicroalError(f"run {name!r} already exists in {storage_path}; pass --resume to continue it or --name for a new run")
    if resume and not exists and "://" not in storage_path:
        raise MicroalError(f"--resume: no run {name!r} in {storage_path}")
    tileset = load_tiles(tiles_root)
    splits = assign_splits(tileset.images, config.split)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    split_table = pd.DataFrame({"image_id": tileset.images.image_id, "image_name": tileset.images.image_name,
                                "sample": tileset.images["sample"], "split": splits.values})
    with atomic_path(run_dir / "splits.csv") as tmp:
        split_table.to_csv(tmp, index=False)

    job = TrainJob(
        config=config.model_dump(mode="json"),
        tiles_root=str(Path(tiles_root).resolve()),
        train_images=split_table.image_id[split_table.split == TRAIN].tolist(),
        val_images=split_table.image_id[split_table.split == VAL].tolist(),
        init_model=str(Path(init_model).resolve()) if init_model else None,
    )
    training = config.training
    ray_backend.init_ray(address)
    cpus = training.cpus_per_worker or max(1, ray_backend.cluster_cpus() // training.num_workers)
    print(
        f"training {name}: {len(job.train_images)} train / {len(job.val_images)} val images, "
        f"{training.num_workers} worker(s) x {cpus} CPU{', GPU' if training.use_gpu else ''}",
        flush=True,
    )
    outcome = ray_backend.fit_supervised(
        job, storage_path, name, run_dir, training.num_workers, training.use_gpu, cpus, training.max_failures
    )
    history = pd.DataFrame(torch.load(outcome.last_model, map_location="cpu", weights_only=False)["history"])
    with atomic_path(run_dir / "history.csv") as tmp:
        history.to_csv(tmp, index=False)
    learning_curve(history, config.class_names, run_dir / "learning_curve.png", title=name)
    return TrainSummary(run_dir, outcome.best_model, outcome.best_metrics, history)
