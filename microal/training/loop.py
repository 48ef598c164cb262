"""What every training loop shares, whichever job it runs: the worker session it is handed,
exact metric sums over workers, validation, checkpoints with their resume, and the epoch line.

The loops know nothing about Ray: the backend hands them a ``WorkerSession`` (rank, device, DDP
wrapping, reporting, the checkpoint to resume from), so they read as plain PyTorch. Loss and
metrics are taken on tile centres only; the margin is context.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from microal.config import ProjectConfig
from microal.data.tiling import IGNORE_INDEX, crop_centre
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
    def prepare_loader(self, loader: DataLoader) -> DataLoader: ...
    def restored_checkpoint(self) -> AbstractContextManager[Path | None]: ...
    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...


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
    forward, dataset, cfg: ProjectConfig, session: WorkerSession, loss_fn, prefix: str = "val"
) -> dict[str, float]:
    """Loss, mIoU and per-class IoU on tile centres, summed exactly over all workers' shards."""
    margin = cfg.tiling.margin
    counts = PixelCounts.zeros(cfg.num_classes)
    loss_sum, pixel_sum = 0.0, 0
    for images, masks in shard_batches(dataset, cfg.training.batch_size, session.world_rank, session.world_size):
        images, masks = images.to(session.device), masks.to(session.device)
        logits, masks = crop_centre(forward(images), margin), crop_centre(masks, margin)
        valid = int((masks != IGNORE_INDEX).sum())
        loss_sum += float(loss_fn(logits, masks)) * valid
        pixel_sum += valid
        counts = counts + PixelCounts.from_masks(logits.argmax(1).cpu(), masks.cpu(), cfg.num_classes)
    totals = all_reduce_sum(np.concatenate([counts.as_array().ravel(), [loss_sum, pixel_sum]]), session.device)
    counts = PixelCounts.from_array(totals[:-2].reshape(3, cfg.num_classes))
    metrics = {f"{prefix}_loss": float(totals[-2] / max(totals[-1], 1)), f"{prefix}_miou": counts.miou()}
    metrics.update({f"{prefix}_iou_c{i}": float(v) for i, v in enumerate(counts.iou())})
    return metrics


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
            (unwrap(obj) if isinstance(obj, torch.nn.Module) else obj).load_state_dict(state[key])
        if session.world_rank == 0:
            print(f"resumed from the checkpoint after epoch {model['epoch']}", flush=True)
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
) -> None:
    """Print the epoch line (the job's progress fields) and report metrics with a checkpoint
    (written by rank 0 only)."""
    cfg = job.config
    if session.world_rank != 0:
        session.report(metrics, None)
        return
    print(progress_line(metrics, history, epochs or cfg.training.epochs, job.progress), flush=True)
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


def begin_epoch(epoch: int, datasets: list, loaders: list) -> None:
    """New random windows and a new shuffle for this epoch (the same on a resumed run)."""
    for dataset in datasets:
        dataset.set_epoch(epoch)
    for loader in loaders:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


def fit_epoch(
    net: torch.nn.Module, loader, optimizer: torch.optim.Optimizer, batch_loss, session: WorkerSession
) -> float:
    """One pass over the loader; `batch_loss(*batch)` gives each batch's loss. Returns the mean
    loss over all workers' batches."""
    net.train()
    loss_sum, batches = 0.0, 0
    for batch in loader:
        loss = batch_loss(*(t.to(session.device) for t in batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach())
        batches += 1
    total, count = all_reduce_sum(np.array([loss_sum, batches], dtype=np.float64), session.device)
    return float(total / max(count, 1))


def progress_line(metrics: dict, history: list[dict], epochs: int, fields: tuple[str, ...], width: int = 20) -> str:
    """One line per epoch: a bar, the training losses, the job kind's `fields` (those measured
    this epoch) and the time left."""
    epoch = int(metrics["epoch"])
    done = round(width * epoch / epochs)
    seconds = float(np.mean([h["epoch_seconds"] for h in history])) if history else metrics["epoch_seconds"]
    line = f"epoch {epoch}/{epochs} [{'#' * done}{'.' * (width - done)}]"
    line += "".join(f" {k} {metrics[k]:.4f}" for k in metrics if k.startswith("train_") and "loss" in k)
    for key in fields:
        value = metrics.get(key, float("nan"))
        if not math.isnan(value):
            digits = 3 if key.endswith("accuracy") else 4
            line += f"  {METRIC_LABELS.get(key, key)} {value:.{digits}f}"
    return line + f"  {seconds:.0f} s/epoch, ~{seconds * (epochs - epoch):.0f} s left"
