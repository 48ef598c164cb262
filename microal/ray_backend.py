"""Everything that touches Ray lives here (the one module that imports ``ray``).

Local use: ``ray.init()`` starts an embedded cluster; with an address (``auto`` or
``ray://host:10001``) the same code runs on a cluster started with ``ray up``.
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from microal.errors import MicroalError
from microal.training import MODEL_FILE, TrainJob, train_worker

# Ray Train checks worker health every 2 s by default; short jobs spend most of their
# start-up waiting on it. 0.2 s costs nothing measurable and saves seconds per run.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# Ray Train both tees and logs a worker's print(); one copy of each progress line is enough.
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (address) or start an embedded one; a no-op when already connected."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = {"address": address, "log_to_driver": True}
    if address is None and num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(**kwargs)
    except ConnectionError as error:
        raise MicroalError(f"cannot connect to the Ray cluster at {address!r}: {error}") from None


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()


def cluster_cpus() -> int:
    return int(ray.cluster_resources().get("CPU", 1))


class RayWorkerSession:
    """The WorkerSession the training loop sees inside a Ray Train worker."""

    def __init__(self):
        # Ray Train logs every report and checkpoint at INFO; the loop prints its own epoch line.
        logging.getLogger("ray.train").setLevel(logging.WARNING)
        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)

    def prepare_loader(self, loader):
        return ray.train.torch.prepare_data_loader(loader)

    @contextmanager
    def restored_checkpoint(self) -> Iterator[Path | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


def _train_loop_per_worker(config: dict) -> None:
    train_worker(config["job"], RayWorkerSession())


@dataclass
class FitOutcome:
    best_model: Path
    last_model: Path
    best_metrics: dict
    last_metrics: dict


def _copy_model_file(checkpoint: ray.train.Checkpoint, dest: Path) -> None:
    with checkpoint.as_directory() as directory:
        shutil.copyfile(Path(directory) / MODEL_FILE, dest)


def fit_supervised(
    job: TrainJob,
    storage_path: Path,
    name: str,
    run_dir: Path,
    num_workers: int,
    use_gpu: bool,
    cpus_per_worker: int,
    max_failures: int = 0,
) -> FitOutcome:
    """Run the training loop as a TorchTrainer; copy the best and last model files into run_dir.

    A run with the same storage_path/name resumes from its latest checkpoint (Ray Train
    finds the run's snapshot there); `microal train` guards against doing so by accident.
    """
    job.cpus_per_worker = cpus_per_worker
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_miou", checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as error:
        raise MicroalError(f"training failed: {error}") from None
    if result.checkpoint is None:
        raise MicroalError("training finished without a checkpoint (no epoch completed)")
    run_dir.mkdir(parents=True, exist_ok=True)
    best_checkpoint, best_metrics = _best(result)
    _copy_model_file(best_checkpoint, run_dir / "best_model.pt")
    _copy_model_file(result.checkpoint, run_dir / "last_model.pt")
    return FitOutcome(run_dir / "best_model.pt", run_dir / "last_model.pt", best_metrics, dict(result.metrics or {}))


def _best(result) -> tuple[ray.train.Checkpoint, dict]:
    candidates = [(c, m) for c, m in (result.best_checkpoints or []) if m.get("val_miou") == m.get("val_miou")]
    if not candidates:  # no validation set: the last epoch is the model
        return result.checkpoint, dict(result.metrics or {})
    checkpoint, metrics = max(candidates, key=lambda cm: cm[1]["val_miou"])
    return checkpoint, dict(metrics)
