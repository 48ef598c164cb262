"""Encoder pre-training on Ray Train workers, for when labels are few.

- ``classification``: the encoder plus an auxiliary head (global average pooling, dropout 0.5,
  linear; smp's ClassificationHead) learns an image-level label (micrograph class, domain, ...),
  as in the two-stage ImageNet -> in-domain pre-training of Goetz et al. (npj Comput. Mater. 2022).
- ``simclr``: self-supervised on unlabelled windows: two augmented, shifted views of each window
  must find each other among the batch (NT-Xent loss on a projection of pooled features).

Both write ``encoder.pt`` (``model_file.save_encoder_file``), which ``model.encoder_weights`` accepts;
fine-tuning then keeps the encoder's learning rate low (``training.encoder_lr_factor``).
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base import ClassificationHead
from torch import nn
from torch.utils.data import Dataset

from microal.data.augment import load_pipeline
from microal.data.datasets import WindowSource, augment_sample, epoch_and_index, standardise
from microal.data.tiles import load_tiles
from microal.models.factory import build_model
from microal.models.model_file import ENCODER_FILE, save_encoder_file, unwrap
from microal.training.loop import (
    Compute,
    EpochPlan,
    WorkerSession,
    all_reduce_sum,
    announce,
    begin_epoch,
    fit_epoch,
    make_loader,
    next_attempt,
    prepare_network,
    report_epoch,
    restore_state,
    shard_batches,
    worker_compute,
)
from microal.training.payloads import TrainJob


class WindowViews(Dataset):
    """Random windows of the listed images: two augmented views (SimCLR) or one view and its label."""

    def __init__(self, tileset, tiles, labels: dict[str, int] | None, augment, samples: int, seed: int, shift: int):
        self.tiles = tiles.reset_index(drop=True)
        self.source = WindowSource(tileset, sorted(self.tiles.image_id.unique()), mask_ids=set())  # masks unused
        self.extent = self.tiles.groupby("image_id")[["y", "x"]].max()
        self.labels, self.augment, self.samples, self.seed, self.shift = labels, augment, samples, seed, shift
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples

    def _view(self, image_id: str, y: int, x: int, rng: np.random.Generator) -> torch.Tensor:
        y_max, x_max = (int(v) for v in self.extent.loc[image_id])
        dy, dx = rng.integers(-self.shift, self.shift + 1, size=2)
        y, x = int(np.clip(y + dy, 0, y_max)), int(np.clip(x + dx, 0, x_max))
        window = np.array(self.source.cut(image_id, y, x)[0])
        if self.augment is not None:
            window = augment_sample(self.augment, int(rng.integers(2**32)), window)["image"]
        mean, std = self.source.stats(image_id)
        return torch.from_numpy(standardise(window, mean, std)[None])

    def __getitem__(self, key):
        epoch, index = epoch_and_index(key, self.epoch)
        rng = np.random.default_rng((self.seed, epoch, index))
        tile = self.tiles.iloc[int(rng.integers(len(self.tiles)))]
        y_max, x_max = (int(v) for v in self.extent.loc[tile.image_id])
        y, x = int(rng.integers(0, y_max + 1)), int(rng.integers(0, x_max + 1))
        first = self._view(tile.image_id, y, x, rng)
        if self.labels is None:
            return first, self._view(tile.image_id, y, x, rng)
        return first, torch.tensor(self.labels[tile.image_id])


class PretrainNet(nn.Module):
    """An smp encoder with either a classification head or a SimCLR projection head."""

    def __init__(self, encoder: nn.Module, method: str, num_labels: int, projection_dim: int, dropout: float):
        super().__init__()
        self.encoder = encoder
        width = encoder.out_channels[-1]
        if method == "classification":
            self.head = ClassificationHead(width, num_labels, pooling="avg", dropout=dropout)
        else:
            self.head = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(width, width),
                nn.ReLU(inplace=True),
                nn.Linear(width, projection_dim),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[-1])


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view's partner is the positive, the other 2N-2 views the negatives."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = z @ z.t() / temperature
    similarity.fill_diagonal_(float("-inf"))
    n = len(z1)
    partners = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(similarity, partners)


def pretrain_worker(job: TrainJob, session: WorkerSession) -> None:
    cfg = job.config
    data = job.data
    pre = cfg.pretrain
    torch.set_num_threads(session.cpus)
    torch.manual_seed(cfg.training.seed)
    tileset = load_tiles(job.tiles_root)
    labels = data.labels
    num_labels = len(set(labels.values())) if labels else 0

    encoder = build_model(cfg.model, cfg.num_classes).encoder
    net = prepare_network(session, PretrainNet(encoder, pre.method, num_labels, pre.projection_dim, pre.dropout))
    compute = worker_compute(session, cfg.training)
    optimizer = torch.optim.AdamW(net.parameters(), lr=pre.lr, weight_decay=pre.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=pre.epochs)
    tiles = tileset.tiles
    window = tileset.tiling.window
    train_set = WindowViews(
        tileset,
        tiles[tiles.image_id.isin(data.train_images)],
        labels,
        load_pipeline(pre.augmentation, seed=cfg.training.seed + session.world_rank, key="pretrain.augmentation"),
        pre.samples_per_epoch,
        cfg.training.seed + 1000 * session.world_rank,
        shift=window // 4,
    )
    val_tiles = tiles[tiles.image_id.isin(data.val_images)]
    val_set = (
        WindowViews(tileset, val_tiles, labels, None, min(256, 8 * len(val_tiles)), seed=99, shift=0)
        if labels and len(val_tiles)
        else None
    )
    loader = make_loader(train_set, pre.batch_size, session, cfg.training, seed=cfg.training.seed)
    announce(session, compute, loader)

    stateful = {"optimizer": optimizer, "scheduler": scheduler, "scaler": compute.scaler}
    start_epoch, history = restore_state(session, net, stateful)
    attempt = next_attempt(history)
    plan = EpochPlan(cfg.training, pre.epochs, job.selection, history)

    def batch_loss(first, second):  # the heads' outputs enter the losses in fp32
        if labels is None:  # SimCLR: two views of the same windows
            return nt_xent(net(first).float(), net(second).float(), pre.temperature)
        return F.cross_entropy(net(first).float(), second)  # classification: a view and its image's label

    for epoch in range(start_epoch, pre.epochs):
        started = time.time()
        begin_epoch(epoch, [loader])
        metrics = {"epoch": epoch + 1, "train_loss": fit_epoch(net, loader, optimizer, batch_loss, compute)}
        scheduler.step()
        metrics["val_seconds"] = 0.0
        if val_set is not None and plan.validates(epoch + 1):
            validation_started = time.time()
            metrics["val_accuracy"] = _accuracy(net, val_set, pre.batch_size, session, compute)
            metrics["val_seconds"] = time.time() - validation_started
        metrics.update(epoch_seconds=time.time() - started, lr=optimizer.param_groups[0]["lr"], attempt=attempt)
        history.append(metrics)
        write_encoder = partial(
            save_encoder_file,
            encoder=unwrap(net).encoder,
            encoder_name=cfg.model.encoder,
            method=pre.method,
            labels=labels,
            epoch=epoch + 1,
            metrics=metrics,
            history=history,
        )
        report_epoch(
            session,
            job,
            metrics,
            history,
            net,
            stateful,
            None,
            extra_files={ENCODER_FILE: write_encoder},
            epochs=pre.epochs,
            checkpoint=plan.checkpoints(metrics),
        )


@torch.no_grad()
def _accuracy(net, dataset, batch_size: int, session, compute: Compute) -> float:
    net.eval()
    correct = total = 0
    for images, labels in shard_batches(dataset, batch_size, session.world_rank, session.world_size):
        with compute.autocast():
            predictions = net(compute.to_device(images)).float().argmax(1).cpu()
        correct += int((predictions == labels).sum())
        total += len(labels)
    correct, total = all_reduce_sum(np.array([correct, total], dtype=np.float64), session.device)
    return float(correct / max(total, 1))
