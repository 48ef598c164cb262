"""`microal train`, `adapt` and `pretrain`: build the job (who trains on what), run its loop on
Ray Train, export the run (best and last files, history, learning curve, splits, config).

Building a job is separate from running it, so a search (`microal tune`) can run the same job
with other settings in every trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from microal import ray_backend
from microal.config import ProjectConfig, save_config
from microal.errors import ConfigError, MicroalError
from microal.files import atomic_path
from microal.plots import learning_curve
from microal.splits import TRAIN, VAL, assign_splits
from microal.tileset import TileSet, load_tiles
from microal.training import MODEL_FILE, TrainJob, train_worker


@dataclass
class JobSpec:
    """A job ready to run: the loop, its data, how to pick the best epoch, what to export."""

    kind: str
    loop: Callable
    job: TrainJob
    splits: pd.DataFrame
    score: tuple[str, str] = ("val_miou", "max")
    files: tuple[str, ...] = (MODEL_FILE,)
    label: str = "training"


@dataclass
class TrainSummary:
    run_dir: Path
    best_model: Path
    best_metrics: dict
    history: pd.DataFrame


def check_run_name(storage_path: str, name: str, resume: bool) -> None:
    """Ray resumes a run whose folder exists; make that an explicit choice."""
    if "://" in storage_path:
        return  # remote storage: Ray decides
    exists = (Path(storage_path) / name).exists()
    if exists and not resume:
        raise MicroalError(f"run {name!r} already exists in {storage_path}; pass --resume to continue it or --name for a new run")
    if resume and not exists:
        raise MicroalError(f"--resume: no run {name!r} in {storage_path}")


def split_table(tileset: TileSet, config: ProjectConfig) -> pd.DataFrame:
    """Each image's role in a run: train, val, test, excluded, unlabelled (and target for UDA)."""
    splits = assign_splits(tileset.images, config.split)
    return pd.DataFrame(
        {
            "image_id": tileset.images.image_id,
            "image_name": tileset.images.image_name,
            "domain": tileset.images.domain,
            "sample": tileset.images["sample"],
            "split": splits.values,
        }
    )


def save_splits(splits: pd.DataFrame, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "splits.csv") as tmp:
        splits.to_csv(tmp, index=False)


def _train_job(config: ProjectConfig, tiles_root: Path, splits: pd.DataFrame, init_model: str | None, **extra) -> TrainJob:
    return TrainJob(
        config=config.model_dump(mode="json"),
        tiles_root=str(Path(tiles_root).resolve()),
        train_images=splits.image_id[splits.split == TRAIN].tolist(),
        val_images=splits.image_id[splits.split == VAL].tolist(),
        init_model=str(Path(init_model).resolve()) if init_model else None,
        extra=extra,
    )


def supervised_job(config: ProjectConfig, tiles_root: Path, init_model: str | None = None) -> JobSpec:
    """Train on the split's train images, validate on its val images."""
    splits = split_table(load_tiles(tiles_root), config)
    return JobSpec("supervised", train_worker, _train_job(config, tiles_root, splits, init_model), splits)


def adaptation_job(config: ProjectConfig, tiles_root: Path, init_model: str | None = None) -> JobSpec:
    """Labelled source-domain images, unlabelled target-domain images."""
    from microal.adaptation import adapt_worker

    uda = config.uda
    tileset = load_tiles(tiles_root)
    domains = set(tileset.images.domain.astype(str))
    if not uda.target_domains:
        raise ConfigError("uda.target_domains: name the domain(s) to adapt to")
    unknown = sorted(set(uda.target_domains + uda.source_domains) - domains)
    if unknown:
        raise ConfigError(f"uda: domain(s) {unknown} not in the tile set (domains: {sorted(domains)})")
    labelled_domains = set(tileset.images.domain[tileset.images.labelled].astype(str))
    source = set(uda.source_domains) or (labelled_domains - set(uda.target_domains))
    splits = split_table(tileset, config)
    # Target images are trained on without their masks: their role is "target", whatever the split said.
    is_target = splits.domain.astype(str).isin(uda.target_domains)
    in_source = splits.domain.astype(str).isin(source)
    splits.loc[is_target, "split"] = "target"
    splits.loc[~is_target & ~in_source & splits.split.isin([TRAIN, VAL]), "split"] = "excluded"
    if not (splits.split == TRAIN).any():
        raise ConfigError(f"uda: no labelled training image in the source domain(s) {sorted(source)}")
    images = tileset.images
    target_images = images.image_id[images.domain.astype(str).isin(uda.target_domains)].tolist()
    target_val = []
    if uda.target_val is not None:
        chosen = images[images[uda.target_val.column].astype(str).isin(uda.target_val.values) & images.labelled]
        target_val = chosen.image_id[chosen.image_id.isin(target_images)].tolist()
        if not target_val:
            raise ConfigError(f"uda.target_val: no labelled target image has {uda.target_val.column} in {uda.target_val.values}")
    if uda.select_by == "target_miou" and not target_val:
        raise ConfigError("uda.select_by: target_miou needs uda.target_val (a small labelled target set)")
    job = _train_job(config, tiles_root, splits, init_model, target_images=target_images, target_val_images=target_val)
    score = {"val_miou": ("val_miou", "max"), "target_miou": ("target_miou", "max"),
             "target_entropy": ("target_entropy", "min")}[uda.select_by]
    return JobSpec("uda", adapt_worker, job, splits, score=score, label=f"adaptation ({uda.method})")


def pretraining_job(config: ProjectConfig, tiles_root: Path, init_model: str | None = None) -> JobSpec:
    """Encoder pre-training. Held-out test images (and images excluded with them) are never
    used, not even unlabelled."""
    from microal.pretraining import ENCODER_FILE, pretrain_worker

    pre = config.pretrain
    tileset = load_tiles(tiles_root)
    splits = split_table(tileset, config)
    usable = splits.split.isin([TRAIN, "unlabelled"] if pre.use_unlabelled else [TRAIN])
    labels = None
    if pre.method == "classification":
        column = pre.label_column
        if column not in tileset.images:
            raise ConfigError(f"pretrain.label_column: the catalog has no column {column!r}")
        values = tileset.images[column].astype(str).where(tileset.images[column].notna())
        classes = sorted(values.dropna().unique())
        if len(classes) < 2:
            raise ConfigError(f"pretrain.label_column: {column!r} needs at least two distinct values, has {classes}")
        labels = {i: classes.index(v) for i, v in zip(tileset.images.image_id, values) if isinstance(v, str)}
        usable &= splits.image_id.isin(labels)
    job = TrainJob(
        config=config.model_dump(mode="json"),
        tiles_root=str(Path(tiles_root).resolve()),
        train_images=splits.image_id[usable].tolist(),
        val_images=splits.image_id[splits.split == VAL].tolist() if labels else [],
        extra={"labels": labels},
    )
    if not job.train_images:
        raise ConfigError("pretrain: no image to pre-train on")
    score = ("val_accuracy", "max") if labels and job.val_images else ("train_loss", "min")
    return JobSpec("pretrain", pretrain_worker, job, splits, score=score, files=(ENCODER_FILE,),
                   label=f"pre-training ({pre.method})")


JOB_BUILDERS = {"supervised": supervised_job, "uda": adaptation_job, "pretrain": pretraining_job}


def run_job(spec: JobSpec, config: ProjectConfig, run_dir: Path, storage_path: str, name: str, address: str | None) -> TrainSummary:
    """Start (or reach) Ray, run the job as a TorchTrainer, export history and learning curve."""
    training = config.training
    save_splits(spec.splits, run_dir)
    save_config(config, run_dir / "config.yaml")
    ray_backend.init_ray(address)
    cpus = training.cpus_per_worker or max(1, ray_backend.cluster_cpus() // training.num_workers)
    print(
        f"{spec.label} {name}: {len(spec.job.train_images)} train / {len(spec.job.val_images)} val images, "
        f"{training.num_workers} worker(s) x {cpus} CPU{', GPU' if training.use_gpu else ''}",
        flush=True,
    )
    outcome = ray_backend.fit(
        spec.loop, spec.job, storage_path, name, run_dir, training.num_workers, training.use_gpu, cpus,
        training.max_failures, score=spec.score, files=spec.files,
    )
    first = spec.files[0]
    history = pd.DataFrame(torch.load(run_dir / f"last_{first}", map_location="cpu", weights_only=False)["history"])
    with atomic_path(run_dir / "history.csv") as tmp:
        history.to_csv(tmp, index=False)
    learning_curve(history, config.class_names, run_dir / "learning_curve.png", title=name)
    return TrainSummary(run_dir, run_dir / f"best_{first}", outcome.best_metrics, history)


def _run(kind: str, config, tiles_root, run_dir, storage_path, name, resume, address, init_model=None) -> TrainSummary:
    check_run_name(storage_path, name, resume)
    spec = JOB_BUILDERS[kind](config, tiles_root, init_model)
    return run_job(spec, config, run_dir, storage_path, name, address)


def train(config: ProjectConfig, tiles_root: Path, run_dir: Path, storage_path: str, name: str,
          resume: bool = False, address: str | None = None, init_model: str | None = None) -> TrainSummary:
    """Supervised training; keeps the epoch with the best validation mIoU."""
    return _run("supervised", config, tiles_root, run_dir, storage_path, name, resume, address, init_model)


def adapt(config: ProjectConfig, tiles_root: Path, run_dir: Path, storage_path: str, name: str,
          resume: bool = False, address: str | None = None, init_model: str | None = None) -> TrainSummary:
    """Domain adaptation (uda.method); keeps the best epoch by uda.select_by. An adapted model
    then gets batch-norm statistics of each target domain (uda.target_bn_statistics)."""
    summary = _run("uda", config, tiles_root, run_dir, storage_path, name, resume, address, init_model)
    if config.uda.target_bn_statistics and config.uda.method != "source_only":
        used = add_target_bn_statistics([summary.best_model, run_dir / "last_model.pt"], config, tiles_root)
        print(f"{name}: batch-norm statistics of the target domain(s) "
              f"{', '.join(f'{d} ({n} windows)' for d, n in used.items())} kept in its model files", flush=True)
    return summary


BN_BATCH = 16  # windows per forward pass when estimating batch-norm statistics


def add_target_bn_statistics(model_files: list[Path], config: ProjectConfig, tiles_root: Path) -> dict[str, int]:
    """Batch-norm statistics of each uda.target_domains domain, estimated on uda.bn_windows
    random windows of its images (masks unused), written into each model file (domain_bn).
    Returns the windows used per domain."""
    from torch.utils.data import DataLoader

    from microal.data import TileDataset
    from microal.domain_bn import DOMAIN_BN_KEY, estimate_statistics
    from microal.predict import load_model

    tileset = load_tiles(tiles_root)
    windows = {}  # the same target windows for every model file
    for domain in config.uda.target_domains:
        image_ids = tileset.images.image_id[tileset.images.domain.astype(str) == domain]
        tiles = tileset.tiles[tileset.tiles.image_id.isin(image_ids)]
        if tiles.empty:
            raise ConfigError(f"uda.target_domains: domain {domain!r} has no tiles in {tiles_root}")
        windows[domain] = TileDataset(tileset, tiles.assign(labelled=False), sampling="random",
                                      samples_per_epoch=config.uda.bn_windows, seed=config.training.seed)
    for model_file in model_files:
        net = load_model(model_file).net
        statistics = {domain: estimate_statistics(net, (images for images, _ in DataLoader(data, batch_size=BN_BATCH)))
                      for domain, data in windows.items()}
        blob = torch.load(model_file, map_location="cpu", weights_only=False)
        blob[DOMAIN_BN_KEY] = statistics
        with atomic_path(model_file) as tmp:
            torch.save(blob, tmp)
    return {domain: len(data) for domain, data in windows.items()}


def pretrain(config: ProjectConfig, tiles_root: Path, run_dir: Path, storage_path: str, name: str,
             resume: bool = False, address: str | None = None) -> TrainSummary:
    """Encoder pre-training; writes best_encoder.pt and last_encoder.pt into the run folder."""
    return _run("pretrain", config, tiles_root, run_dir, storage_path, name, resume, address)
