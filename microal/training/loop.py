"""What every training loop shares, whichever job it runs: the worker session it is handed,
the device's precision, the data loaders, exact metric sums over workers, validation (every n-th
epoch, on all or a seeded subset of the validation tiles), checkpoints (every n-th epoch, the last,
and every new best) with their resume, and the epoch line.

The loops know nothing about Ray: the backend hands them a ``WorkerSession`` (rank, device, DDP
wrapping, reporting, the checkpoint to resume from), so they read as plain PyTorch. Loss and
metrics are taken on tile centres only; the margin is context.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from microal.config import ProjectConfig, TrainingConfig
from microal.console import say
from microal.data.tiling import IGNORE_INDEX, crop_centre
from microal.models.compute import autocast, channels_last, grad_scaler, resolve_precision
from microal.models.metrics import PixelCounts
from microal.models.model_file import MODEL_FILE, read_model_file, save_model_file, unwrap
from microal.training.payloads import TrainJob

STATE_FILE = "training_state.pt"  # optimizer and scheduler state, beside the model file in a checkpoint
# How a metric is named in the epoch line, where it differs from its key.
METRIC_LABELS = {"val_miou": "val_mIoU", "target_miou": "target_mIoU"}


class WorkerSession(Protocol):
    cpus: int  # CPUs the worker holds (its torch threads)
    world_rank: int
    world_size: int
    device: torch.device

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...
    def restored_checkpoint(self) -> AbstractContextManager[Path | None]: ...
    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...


@dataclass
class Compute:
    """The device a worker trains on and the precision it computes in (see models/compute.py)."""

    device: torch.device
    precision: str  # fp32, bf16 or fp16

    def __post_init__(self):
        self.scaler = grad_scaler(self.device, self.precision)

    def autocast(self) -> AbstractContextManager:
        return autocast(self.device, self.precision)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=True)


def worker_compute(session: WorkerSession, training: TrainingConfig) -> Compute:
    return Compute(session.device, resolve_precision(training.precision, session.device))


def prepare_network(session: WorkerSession, net: torch.nn.Module) -> torch.nn.Module:
    """Channels-last weights, then the session's placement (device, DDP)."""
    return session.prepare_model(channels_last(net))


class EpochSampler(Sampler):
    """This worker's share of a dataset, shuffled anew each epoch from (seed, epoch) and padded
    so every worker gets as many items (DDP steps in lockstep). It yields (epoch, index): the
    dataset in a loader process knows the epoch without being told, and a resumed run draws
    exactly what the uninterrupted one did."""

    def __init__(self, length: int, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True):
        self.length, self.rank, self.world, self.seed, self.shuffle = length, rank, world, seed, shuffle
        self.epoch = 0
        self.per_rank = math.ceil(length / world) if length else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if not self.length:
            return iter(())
        order = np.arange(self.length)
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.length)
        order = np.resize(order, self.per_rank * self.world)  # pads by repeating from the start
        return iter([(self.epoch, int(i)) for i in order[self.rank :: self.world]])


def announce(session: WorkerSession, compute: Compute, *loaders: DataLoader) -> None:
    """Say once how the run computes: device, precision, loader processes."""
    if session.world_rank == 0:
        workers = max((loader.num_workers for loader in loaders), default=0)
        say(
            f"computing on {compute.device.type} in {compute.precision} (channels-last), "
            f"{workers} loader process(es) per worker"
        )


def default_loader_workers(cpus: int) -> int:
    return min(8, cpus // 4)


def _one_thread(worker_id: int) -> None:
    torch.set_num_threads(1)  # a loader process cuts windows; the worker's threads run the network


def make_loader(
    dataset: Dataset,
    batch_size: int,
    session: WorkerSession,
    training: TrainingConfig,
    seed: int,
    drop_last: bool = True,
) -> DataLoader:
    """Training batches: this worker's shard, loader processes (training.loader_workers) kept
    across epochs, pinned memory for a GPU."""
    workers = training.loader_workers
    workers = default_loader_workers(session.cpus) if workers is None else workers
    sampler = EpochSampler(len(dataset), session.world_rank, session.world_size, seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last and len(sampler) > batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=session.device.type == "cuda",
        worker_init_fn=_one_thread if workers else None,
    )


def all_reduce_sum(array: np.ndarray, device: torch.device) -> np.ndarray:
    if not (dist.is_available() and dist.is_initialized()):
        return array
    tensor = torch.as_tensor(array, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def shard_batches(dataset, batch_size: int, rank: int, world: int):
    """Validation shards without the padding DistributedSampler adds, so counts are exact."""
    indices = list(range(rank, len(dataset), world))
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        yield torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


@torch.no_grad()
def validate(
    forward,
    dataset,
    cfg: ProjectConfig,
    session: WorkerSession,
    loss_fn,
    prefix: str = "val",
    *,
    compute: Compute,
) -> dict[str, float]:
    """Loss, mIoU and per-class IoU on tile centres, summed exactly over all workers' shards."""
    margin = cfg.tiling.margin
    counts = PixelCounts.zeros(cfg.num_classes)
    loss_sum, pixel_sum = 0.0, 0
    for images, masks in shard_batches(dataset, cfg.training.batch_size, session.world_rank, session.world_size):
        images, masks = compute.to_device(images), compute.to_device(masks)
        with compute.autocast():
            logits = forward(images)
        logits, masks = crop_centre(logits.float(), margin), crop_centre(masks, margin)
        valid = int((masks != IGNORE_INDEX).sum())
        loss_sum += float(loss_fn(logits, masks)) * valid
        pixel_sum += valid
        counts = counts + PixelCounts.from_masks(logits.argmax(1), masks, cfg.num_classes)  # counted on the device
    totals = all_reduce_sum(np.concatenate([counts.as_array().ravel(), [loss_sum, pixel_sum]]), session.device)
    counts = PixelCounts.from_array(totals[:-2].reshape(3, cfg.num_classes))
    metrics = {f"{prefix}_loss": float(totals[-2] / max(totals[-1], 1)), f"{prefix}_miou": counts.miou()}
    metrics.update({f"{prefix}_iou_c{i}": float(v) for i, v in enumerate(counts.iou())})
    return metrics


def validation_subset(tiles: pd.DataFrame, training: TrainingConfig) -> pd.DataFrame:
    """The validation tiles, or a fixed seeded subset of training.val_windows of them."""
    n = training.val_windows
    if n is None or len(tiles) <= n:
        return tiles
    return tiles.sample(n=n, random_state=training.seed).sort_index()


class EpochPlan:
    """Which epochs validate and which write a checkpoint (epochs count from 1).

    Validation: every training.validate_every-th epoch and the last. Checkpoints: every
    training.checkpoint_every-th epoch, the last, and every epoch whose selection metric beats
    all earlier ones, so the best model is never lost between checkpoints. A resumed run
    passes its history, so it knows the best so far."""

    def __init__(self, training: TrainingConfig, epochs: int, selection: tuple[str, str], history: list[dict]):
        self.validate_every, self.checkpoint_every, self.epochs = (
            training.validate_every,
            training.checkpoint_every,
            epochs,
        )
        self.metric, self.mode = selection
        self.best: float | None = None
        for row in history:
            self._improves(row)

    def validates(self, epoch: int) -> bool:
        return epoch % self.validate_every == 0 or epoch == self.epochs

    def _improves(self, metrics: dict) -> bool:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return False
        if self.best is not None and not (value > self.best if self.mode == "max" else value < self.best):
            return False
        self.best = float(value)
        return True

    def checkpoints(self, metrics: dict) -> bool:
        """Whether this epoch (its metrics just measured) writes a checkpoint."""
        epoch = int(metrics["epoch"])
        improved = self._improves(metrics)
        return improved or epoch % self.checkpoint_every == 0 or epoch == self.epochs


def restore_state(session: WorkerSession, net: torch.nn.Module, stateful: dict[str, Any]) -> tuple[int, list[dict]]:
    """Load the latest checkpoint (if Ray hands one over): weights, then each stateful object.

    Returns the number of epochs already done and their history.
    """
    with session.restored_checkpoint() as checkpoint_dir:
        if checkpoint_dir is None:
            return 0, []
        model = read_model_file(checkpoint_dir / MODEL_FILE)
        state = torch.load(checkpoint_dir / STATE_FILE, map_location="cpu", weights_only=False)
        unwrap(net).load_state_dict(model["state_dict"])
        for key, obj in stateful.items():
            if key in state:  # (a checkpoint of an older microal has no loss scaler state)
                (unwrap(obj) if isinstance(obj, torch.nn.Module) else obj).load_state_dict(state[key])
        if session.world_rank == 0:
            say(f"resumed from the checkpoint after epoch {model['epoch']}")
        return int(model["epoch"]), list(model["history"])


def next_attempt(history: list[dict]) -> int:
    """0 for a fresh run, +1 after each restore: history rows show which attempt ran each epoch."""
    return int(history[-1].get("attempt", 0)) + 1 if history else 0


def report_epoch(
    session: WorkerSession,
    job: TrainJob,
    metrics: dict,
    history: list[dict],
    net: torch.nn.Module,
    stateful: dict[str, Any],
    domain_stats: dict | None,
    extra_files: dict[str, Callable[[Path], None]] | None = None,  # file name -> its writer
    epochs: int | None = None,
    checkpoint: bool = True,
) -> None:
    """Print the epoch line (the job's progress fields) and report metrics, with a checkpoint
    (written by rank 0 only) when `checkpoint`. The selection metric is always reported (nan on
    an epoch that did not measure it), so Ray can rank every checkpoint."""
    cfg = job.config
    metrics.setdefault(job.selection[0], float("nan"))
    if session.world_rank != 0 or not checkpoint:
        if session.world_rank == 0:
            say(progress_line(metrics, history, epochs or cfg.training.epochs, job.progress))
        session.report(metrics, None)
        return
    say(progress_line(metrics, history, epochs or cfg.training.epochs, job.progress))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        save_model_file(directory / MODEL_FILE, net, cfg, int(metrics["epoch"]), metrics, history, domain_stats)
        torch.save(
            {k: (unwrap(v) if isinstance(v, torch.nn.Module) else v).state_dict() for k, v in stateful.items()},
            directory / STATE_FILE,
        )
        for name, write in (extra_files or {}).items():
            write(directory / name)
        session.report(metrics, directory)


class WarmupCosine:
    """The learning-rate factor of each epoch: a linear warm-up over `warmup` of the epochs, then
    cosine decay to zero at the last (warmup 0: plain cosine annealing). An object, not a
    closure, so a checkpoint keeps its number of epochs (a time budget decides it)."""

    def __init__(self, epochs: int, warmup: float):
        self.epochs, self.warmup = epochs, warmup

    def __call__(self, epoch: int) -> float:
        warm = math.ceil(self.warmup * self.epochs) if self.warmup > 0 else 0
        if epoch < warm:
            return (epoch + 1) / (warm + 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - warm) / max(1, self.epochs - warm)))


def warmup_cosine(optimizer: torch.optim.Optimizer, epochs: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(epochs, warmup))


def set_schedule_epochs(scheduler: torch.optim.lr_scheduler.LambdaLR, epochs: int) -> None:
    """Stretch a WarmupCosine schedule to `epochs` (known only after a budget's probe), and set the
    optimizer's rates for the epoch it is at."""
    schedule = scheduler.lr_lambdas[0]
    schedule.epochs = epochs
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * schedule(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def begin_epoch(epoch: int, loaders: list[DataLoader]) -> None:
    """New random windows and a new shuffle for this epoch (the same on a resumed run): the
    loaders' EpochSamplers hand the epoch to the datasets with every index."""
    for loader in loaders:
        loader.sampler.set_epoch(epoch)


def fit_epoch(net: torch.nn.Module, loader, optimizer: torch.optim.Optimizer, batch_loss, compute: Compute) -> float:
    """One pass over the loader; `batch_loss(*batch)` gives each batch's loss (its forward pass
    runs in the compute's precision). Returns the mean loss over all workers' batches."""
    net.train()
    scaler = compute.scaler
    loss_sum = torch.zeros((), dtype=torch.float64, device=compute.device)  # summed on the device: no sync per step
    batches = 0
    for batch in loader:
        with compute.autocast():
            loss = batch_loss(*(compute.to_device(t) for t in batch))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach().double()
        batches += 1
    total, count = all_reduce_sum(np.array([float(loss_sum), batches], dtype=np.float64), compute.device)
    return float(total / max(count, 1))


def progress_line(metrics: dict, history: list[dict], epochs: int, fields: tuple[str, ...], width: int = 20) -> str:
    """One line per epoch: a bar, the training losses, the job kind's `fields` (those measured
    this epoch) and the time left."""
    epoch = int(metrics["epoch"])
    done = round(width * epoch / epochs)
    seconds = float(np.mean([h["epoch_seconds"] for h in history])) if history else metrics["epoch_seconds"]
    line = f"epoch {epoch}/{epochs} [{'#' * done}{'.' * (width - done)}]"
    validated = [h["val_seconds"] for h in history if h.get("val_seconds", 0) > 0]
    line += "".join(f" {k} {metrics[k]:.4f}" for k in metrics if k.startswith("train_") and "loss" in k)
    for key in fields:
        value = metrics.get(key, float("nan"))
        if not math.isnan(value):
            digits = 3 if key.endswith("accuracy") else 4
            line += f"  {METRIC_LABELS.get(key, key)} {value:.{digits}f}"
    share = f" (validation {np.mean(validated):.1f} s)" if validated else ""
    return line + f"  {seconds:.0f} s/epoch{share}, ~{seconds * (epochs - epoch):.0f} s left"
