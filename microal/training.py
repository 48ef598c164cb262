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
from microal.models import build_model, load_model_weights, parameter_groups
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


class SegmentationLoss(torch.nn.Module):
    """(Weighted) cross-entropy + dice_weight x Dice, both ignoring pixels outside the image."""

    def __init__(self, dice_weight: float, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.dice_weight = dice_weight
        self.dice = smp.losses.DiceLoss(mode="multiclass", ignore_index=IGNORE_INDEX)
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not bool((target != IGNORE_INDEX).any()):
            # Nothing labelled in the batch: a zero loss (cross-entropy's mean would be 0/0 = nan).
            return logits.sum() * 0.0
        loss = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=IGNORE_INDEX)
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, target)
        return loss


def class_weights(cfg: ProjectConfig, train_set: TileDataset) -> torch.Tensor | None:
    """The cross-entropy weights the config asks for; `balanced` uses the training masks."""
    setting = cfg.training.class_weights
    if setting == "none":
        return None
    if isinstance(setting, list):
        return torch.tensor(setting, dtype=torch.float32)
    share = train_set.source.class_pixel_counts(cfg.num_classes).astype(np.float64)
    share /= max(share.sum(), 1)
    present = share > 0
    weights = np.zeros_like(share)
    weights[present] = share[present] ** -0.5
    weights[~present] = weights[present].max() if present.any() else 1.0
    weights /= max(float((weights * share).sum()), 1e-12)  # an average pixel keeps weight 1
    return torch.tensor(weights, dtype=torch.float32)


def make_loss(cfg: ProjectConfig, train_set: TileDataset, device: torch.device) -> SegmentationLoss:
    return SegmentationLoss(cfg.training.dice_weight, class_weights(cfg, train_set)).to(device)


def centre(array: torch.Tensor, margin: int) -> torch.Tensor:
    if margin == 0:
        return array
    return array[..., margin:-margin, margin:-margin]


def save_model_file(
    path: Path,
    net: torch.nn.Module,
    config: ProjectConfig | dict,
    epoch: int,
    metrics: dict,
    history: list,
    domain_stats: dict[str, tuple[float, float]] | None = None,
) -> None:
    """A self-contained model file: weights, the project config, and the per-domain intensity
    statistics that `preprocess.normalize: domain` standardises new images with."""
    module = unwrap(net)
    config_dict = config if isinstance(config, dict) else config.model_dump(mode="json")
    torch.save(
        {
            "format": MODEL_FORMAT,
            "state_dict": module.state_dict(),
            "config": config_dict,
            "epoch": epoch,
            "metrics": metrics,
            "history": history,
            "domain_stats": domain_stats or {},
        },
        path,
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


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel (or the module itself)."""
    return getattr(module, "module", module)


@torch.no_grad()
def validate(forward, dataset, cfg: ProjectConfig, session: WorkerSession, loss_fn, prefix: str = "val") -> dict[str, float]:
    """Loss, mIoU and per-class IoU on tile centres, summed exactly over all workers' shards."""
    margin = cfg.tiling.margin
    counts = PixelCounts.zeros(cfg.num_classes)
    loss_sum, pixel_sum = 0.0, 0
    for images, masks in shard_batches(dataset, cfg.training.batch_size, session.world_rank, session.world_size):
        images, masks = images.to(session.device), masks.to(session.device)
        logits, masks = centre(forward(images), margin), centre(masks, margin)
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
        model = torch.load(checkpoint_dir / MODEL_FILE, map_location="cpu", weights_only=False)
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
    cfg: ProjectConfig,
    metrics: dict,
    history: list[dict],
    net: torch.nn.Module,
    stateful: dict[str, Any],
    domain_stats: dict | None,
    extra_files: dict[str, Any] | None = None,
    epochs: int | None = None,
) -> None:
    """Print the progress line and report metrics with a checkpoint (written by rank 0 only)."""
    if session.world_rank != 0:
        session.report(metrics, None)
        return
    print(progress_line(metrics, history, epochs or cfg.training.epochs), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        save_model_file(directory / MODEL_FILE, net, cfg, int(metrics["epoch"]), metrics, history, domain_stats)
        torch.save(
            {k: (unwrap(v) if isinstance(v, torch.nn.Module) else v).state_dict() for k, v in stateful.items()},
            directory / STATE_FILE,
        )
        for name, blob in (extra_files or {}).items():
            torch.save(blob, directory / name)
        session.report(metrics, directory)


def begin_epoch(epoch: int, datasets: list, loaders: list) -> None:
    """New random windows and a new shuffle for this epoch (the same on a resumed run)."""
    for dataset in datasets:
        dataset.set_epoch(epoch)
    for loader in loaders:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


def fit_epoch(net: torch.nn.Module, loader, optimizer: torch.optim.Optimizer, batch_loss, session: WorkerSession) -> float:
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


def training_datasets(job: TrainJob, cfg: ProjectConfig, tileset, rank: int) -> tuple[TileDataset, TileDataset | None]:
    """The labelled train windows (augmented, sampled as configured) and the validation tiles."""
    training = cfg.training
    tiles = tileset.tiles
    # Active learning names tiles (labelled ones) and a label store; otherwise whole images.
    mask_root = job.extra.get("mask_root")
    if "train_tiles" in job.extra:
        train_tiles = tiles[tiles.tile_id.isin(job.extra["train_tiles"])].assign(labelled=True)
        val_tiles = tiles[tiles.tile_id.isin(job.extra.get("val_tiles", []))].assign(labelled=True)
    else:
        train_tiles = tiles[tiles.image_id.isin(job.train_images) & tiles.labelled]
        val_tiles = tiles[tiles.image_id.isin(job.val_images) & tiles.labelled]
    train_set = TileDataset(
        tileset,
        train_tiles,
        augment=load_pipeline(training.augmentation, seed=training.seed + rank),
        sampling=training.sampling,
        samples_per_epoch=training.samples_per_epoch if training.sampling == "random" else None,
        seed=training.seed + 1000 * rank,
        mask_root=mask_root,
        # Named tiles (active learning) carry the only labels of their images.
        around="tile" if "train_tiles" in job.extra else "image",
    )
    val_set = TileDataset(tileset, val_tiles, mask_root=mask_root) if len(val_tiles) else None
    return train_set, val_set


def train_worker(job: TrainJob, session: WorkerSession) -> None:
    cfg = parse_config(job.config, source="training job")
    training = cfg.training
    torch.set_num_threads(max(1, job.cpus_per_worker))
    torch.manual_seed(training.seed)  # same initial weights on every worker
    tileset = load_tiles(job.tiles_root)

    net = build_model(cfg.model, cfg.num_classes)
    if job.init_model:
        load_model_weights(net, job.init_model)
    net = session.prepare_model(net)
    optimizer = torch.optim.AdamW(
        parameter_groups(net, training.lr, training.encoder_lr_factor), weight_decay=training.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=training.epochs)
    train_set, val_set = training_datasets(job, cfg, tileset, session.world_rank)
    loss_fn = make_loss(cfg, train_set, session.device)
    loader = session.prepare_loader(
        DataLoader(train_set, batch_size=training.batch_size, shuffle=True, drop_last=len(train_set) > training.batch_size)
    )

    stateful = {"optimizer": optimizer, "scheduler": scheduler}
    start_epoch, history = restore_state(session, net, stateful)
    attempt = next_attempt(history)
    margin = cfg.tiling.margin

    def batch_loss(images, masks):
        return loss_fn(centre(net(images), margin), centre(masks, margin))

    for epoch in range(start_epoch, training.epochs):
        started = time.time()
        begin_epoch(epoch, [train_set], [loader])
        metrics: dict[str, float] = {"epoch": epoch + 1, "train_loss": fit_epoch(net, loader, optimizer, batch_loss, session)}
        scheduler.step()
        if val_set is not None:
            net.eval()
            metrics.update(validate(net, val_set, cfg, session, loss_fn))
        else:
            metrics["val_miou"] = float("nan")
        metrics.update(epoch_seconds=time.time() - started, lr=optimizer.param_groups[1]["lr"], attempt=attempt)
        history.append(metrics)
        report_epoch(session, cfg, metrics, history, net, stateful, tileset.domain_stats())


def progress_line(metrics: dict, history: list[dict], epochs: int, width: int = 20) -> str:
    """One line per epoch: a bar, the losses, validation mIoU and the time left."""
    epoch = int(metrics["epoch"])
    done = round(width * epoch / epochs)
    seconds = float(np.mean([h["epoch_seconds"] for h in history])) if history else metrics["epoch_seconds"]
    line = f"epoch {epoch}/{epochs} [{'#' * done}{'.' * (width - done)}]"
    line += "".join(f" {k} {metrics[k]:.4f}" for k in metrics if k.startswith("train_") and "loss" in k)
    if not math.isnan(metrics.get("val_miou", float("nan"))):
        line += f"  val_loss {metrics['val_loss']:.4f}  val_mIoU {metrics['val_miou']:.4f}"
    if "val_accuracy" in metrics:
        line += f"  val_accuracy {metrics['val_accuracy']:.3f}"
    if not math.isnan(metrics.get("target_miou", float("nan"))):
        line += f"  target_mIoU {metrics['target_miou']:.4f}"
    return line + f"  {seconds:.0f} s/epoch, ~{seconds * (epochs - epoch):.0f} s left"
