"""The supervised training loop that runs on every Ray Train worker.

It knows nothing about Ray: the Ray backend hands it a ``WorkerSession`` (rank, device,
DDP wrapping, reporting, the checkpoint to resume from), so the loop reads as plain
PyTorch. Loss and metrics are taken on tile centres only; the margin is context.
"""

from __future__ import annotations

import math
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from microal.augment import load_pipeline
from microal.config import ProjectConfig, parse_config
from microal.data import TileDataset
from microal.metrics import PixelCounts
from microal.models import build_model, parameter_groups
from microal.tiling import IGNORE_INDEX
from microal.tileset import load_tiles

MODEL_FILE = "model.pt"
STATE_FILE = "training_state.pt"
MODEL_FORMAT = "microal-model/1"


@dataclass
class TrainJob:
    """Everything a worker needs; plain data so Ray can ship it."""

    config: dict[str, Any]
    tiles_root: str
    train_images: list[str]
    val_images: list[str]
    init_model: str | None = None  # a microal model file to start from (fine-tuning)
    cpus_per_worker: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


class WorkerSession(Protocol):
    world_rank: int
    world_size: int
    device: torch.device

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...
    def prepare_loader(self, loader: DataLoader) -> DataLoader: ...
    def restored_checkpoint(self) -> AbstractContextManager[Path | None]: ...
    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...


def metric_key(index: int) -> str:
    return f"val_iou_c{index}"


class SegmentationLoss(torch.nn.Module):
    """Cross-entropy + dice_weight x Dice, both ignoring pixels outside the image."""

    def __init__(self, dice_weight: float):
        super().__init__()
        self.dice_weight = dice_weight
        self.dice = smp.losses.DiceLoss(mode="multiclass", ignore_index=IGNORE_INDEX)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, target)
        return loss


def centre(array: torch.Tensor, margin: int) -> torch.Tensor:
    if margin == 0:
        return array
    return array[..., margin:-margin, margin:-margin]


def save_model_file(path: Path, net: torch.nn.Module, config: ProjectConfig | dict, epoch: int, metrics: dict, history: list) -> None:
    module = getattr(net, "module", net)
    config_dict = config if isinstance(config, dict) else config.model_dump(mode="json")
    torch.save(
        {
            "format": MODEL_FORMAT,
            "state_dict": module.state_dict(),
            "config": config_dict,
            "epoch": epoch,
            "metrics": metrics,
            "history": history,
        },
        path,
    )


def _all_reduce_sum(array: np.ndarray, device: torch.device) -> np.ndarray:
    if not (dist.is_available() and dist.is_initialized()):
        return array
    tensor = torch.as_tensor(array, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def _batches(dataset, batch_size: int, rank: int, world: int):
    """Validation shards without the padding DistributedSampler adds, so counts are exact."""
    indices = list(range(rank, len(dataset), world))
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        yield torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


@torch.no_grad()
def validate(net, dataset, cfg: ProjectConfig, session: WorkerSession, loss_fn) -> dict[str, float]:
    net.eval()
    margin = cfg.tiling.margin
    counts = PixelCounts.zeros(cfg.num_classes)
    loss_sum, pixel_sum = 0.0, 0
    for images, masks in _batches(dataset, cfg.training.batch_size, session.world_rank, session.world_size):
        images, masks = images.to(session.device), masks.to(session.device)
        logits, masks = centre(net(images), margin), centre(masks, margin)
        valid = int((masks != IGNORE_INDEX).sum())
        loss_sum += float(loss_fn(logits, masks)) * valid
        pixel_sum += valid
        counts = counts + PixelCounts.from_masks(logits.argmax(1).cpu(), masks.cpu(), cfg.num_classes)
    totals = _all_reduce_sum(np.concatenate([counts.as_array().ravel(), [loss_sum, pixel_sum]]), session.device)
    counts = PixelCounts.from_array(totals[:-2].reshape(3, cfg.num_classes))
    metrics = {"val_loss": float(totals[-2] / max(totals[-1], 1)), "val_miou": counts.miou()}
    metrics.update({metric_key(i): float(v) for i, v in enumerate(counts.iou())})
    return metrics


def _restore(session: WorkerSession, net, optimizer, scheduler) -> tuple[int, list[dict]]:
    with session.restored_checkpoint() as checkpoint_dir:
        if checkpoint_dir is None:
            return 0, []
        model = torch.load(checkpoint_dir / MODEL_FILE, map_location="cpu", weights_only=False)
        state = torch.load(checkpoint_dir / STATE_FILE, map_location="cpu", weights_only=False)
        getattr(net, "module", net).load_state_dict(model["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if session.world_rank == 0:
            print(f"resumed from checkpoint after epoch {model['epoch']}", flush=True)
        return int(model["epoch"]), list(model["history"])


def train_worker(job: TrainJob, session: WorkerSession) -> None:
    cfg = parse_config(job.config, source="training job")
    training = cfg.training
    torch.set_num_threads(max(1, job.cpus_per_worker))
    torch.manual_seed(training.seed)  # same initial weights on every worker
    tileset = load_tiles(job.tiles_root)

    net = build_model(cfg.model, cfg.num_classes)
    if job.init_model:
        net.load_state_dict(torch.load(job.init_model, map_location="cpu", weights_only=False)["state_dict"])
    net = session.prepare_model(net)
    optimizer = torch.optim.AdamW(
        parameter_groups(net, training.lr, training.encoder_lr_factor), weight_decay=training.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=training.epochs)
    loss_fn = SegmentationLoss(training.dice_weight)

    tiles = tileset.tiles
    train_tiles = tiles[tiles.image_id.isin(job.train_images) & tiles.labelled]
    val_tiles = tiles[tiles.image_id.isin(job.val_images) & tiles.labelled]
    train_set = TileDataset(
        tileset,
        train_tiles,
        augment=load_pipeline(training.augmentation, seed=training.seed + session.world_rank),
        sampling=training.sampling,
        samples_per_epoch=training.samples_per_epoch if training.sampling == "random" else None,
        seed=training.seed,
    )
    val_set = TileDataset(tileset, val_tiles) if len(val_tiles) else None
    loader = session.prepare_loader(
        DataLoader(train_set, batch_size=training.batch_size, shuffle=True, drop_last=len(train_set) > training.batch_size)
    )

    start_epoch, history = _restore(session, net, optimizer, scheduler)
    margin = cfg.tiling.margin
    for epoch in range(start_epoch, training.epochs):
        started = time.time()
        train_set.set_epoch(epoch)
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        net.train()
        loss_sum, batches = 0.0, 0
        for images, masks in loader:
            images, masks = images.to(session.device), masks.to(session.device)
            loss = loss_fn(centre(net(images), margin), centre(masks, margin))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
            batches += 1
        scheduler.step()
        loss_total, batch_total = _all_reduce_sum(np.array([loss_sum, batches], dtype=np.float64), session.device)
        metrics: dict[str, float] = {"epoch": epoch + 1, "train_loss": float(loss_total / max(batch_total, 1))}
        if val_set is not None:
            metrics.update(validate(net, val_set, cfg, session, loss_fn))
        else:
            metrics["val_miou"] = float("nan")
        metrics["epoch_seconds"] = time.time() - started
        metrics["lr"] = optimizer.param_groups[1]["lr"]
        history.append(metrics)
        _report_epoch(session, net, optimizer, scheduler, cfg, metrics, history)


def progress_line(metrics: dict, history: list[dict], epochs: int, width: int = 20) -> str:
    """One line per epoch: a bar, the losses, validation mIoU and the time left."""
    epoch = int(metrics["epoch"])
    done = round(width * epoch / epochs)
    seconds = float(np.mean([h["epoch_seconds"] for h in history])) if history else metrics["epoch_seconds"]
    line = f"epoch {epoch}/{epochs} [{'#' * done}{'.' * (width - done)}] train_loss {metrics['train_loss']:.4f}"
    if not math.isnan(metrics.get("val_miou", float("nan"))):
        line += f"  val_loss {metrics['val_loss']:.4f}  val_mIoU {metrics['val_miou']:.4f}"
    return line + f"  {seconds:.0f} s/epoch, ~{seconds * (epochs - epoch):.0f} s left"


def _report_epoch(session, net, optimizer, scheduler, cfg, metrics, history) -> None:
    epoch = int(metrics["epoch"])
    if session.world_rank != 0:
        session.report(metrics, None)
        return
    print(progress_line(metrics, history, cfg.training.epochs), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        save_model_file(directory / MODEL_FILE, net, cfg, epoch, metrics, history)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, directory / STATE_FILE)
        session.report(metrics, directory)
