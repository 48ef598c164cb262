"""Unsupervised domain adaptation on Ray Train workers: AdaptSegNet (multi-level output-space
adversarial) and its ADVENT variant (entropy maps to the discriminators plus direct entropy
minimisation), with a source-only run of the same loop as the baseline.

Per step, on a source batch (with masks) and a target batch (without):
  1. segmenter: seg + w_seg_aux * seg_aux on the source, and on the target fool the
     discriminators (w_adv, w_adv_aux; ADVENT adds w_entropy * entropy) while the
     discriminators' weights are frozen;
  2. discriminators: tell source outputs (label 0) from target outputs (label 1), on detached
     outputs of both levels.
Learning rates follow the poly schedule lr * (1 - step/steps)^power for both networks.
"""

from __future__ import annotations

import math
import time
from itertools import cycle

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from microal.config import ProjectConfig
from microal.data.datasets import TileDataset
from microal.data.tiles import load_tiles
from microal.data.tiling import crop_centre
from microal.models.factory import build_model, load_model_weights, parameter_groups
from microal.models.model_file import unwrap
from microal.training.loop import (
    Compute,
    EpochPlan,
    WorkerSession,
    all_reduce_sum,
    announce,
    begin_epoch,
    make_loader,
    next_attempt,
    prepare_network,
    report_epoch,
    restore_state,
    shard_batches,
    validate,
    validation_subset,
    worker_compute,
)
from microal.training.payloads import AdaptationData, TrainJob
from microal.training.supervised import make_loss, training_datasets

SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0
SIGNAL_TILES = 64  # target tiles on which the mean prediction entropy is measured each epoch


class MultiLevelSegmenter(nn.Module):
    """An smp model plus an auxiliary segmentation output from an intermediate encoder level."""

    def __init__(self, net: nn.Module, num_classes: int, aux_level: int = -2, hidden: int = 128):
        super().__init__()
        self.net = net
        self.aux_level = aux_level
        channels = net.encoder.out_channels[aux_level]
        self.aux_head = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, num_classes, 1)
        )
        self._features: list[torch.Tensor] | None = None
        # The smp model computes the encoder features once; keep them for the auxiliary head.
        net.encoder.register_forward_hook(self._keep_features)

    def _keep_features(self, module, inputs, output) -> None:
        self._features = output

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        main = self.net(x)
        aux = self.aux_head(self._features[self.aux_level])
        return main, F.interpolate(aux, size=main.shape[-2:], mode="bilinear", align_corners=False)


def fc_discriminator(in_channels: int, channels: int) -> nn.Sequential:
    """AdaptSegNet's fully-convolutional discriminator: 4x4 stride-2 convolutions, leaky ReLU."""
    layers: list[nn.Module] = []
    width = in_channels
    for out in (channels, channels * 2, channels * 4, channels * 8):
        layers += [nn.Conv2d(width, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        width = out
    layers.append(nn.Conv2d(width, 1, 4, stride=2, padding=1))
    return nn.Sequential(*layers)


class Discriminators(nn.Module):
    """One discriminator per output level, in one module so DDP wraps them together."""

    def __init__(self, num_classes: int, channels: int):
        super().__init__()
        self.main = fc_discriminator(num_classes, channels)
        self.aux = fc_discriminator(num_classes, channels)

    def forward(self, main: torch.Tensor, aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.main(main), self.aux(aux)


def entropy_map(logits: torch.Tensor) -> torch.Tensor:
    """ADVENT's weighted self-information -p log p per class, scaled to [0, 1] summed over classes."""
    probs = torch.softmax(logits, dim=1)
    return -probs * torch.log(probs + 1e-12) / math.log(logits.shape[1])


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    return entropy_map(logits).sum(dim=1).mean()


def discriminator_input(logits: torch.Tensor, method: str) -> torch.Tensor:
    return entropy_map(logits) if method == "advent" else torch.softmax(logits, dim=1)


def _bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def poly_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], step: int, total: int, power: float) -> None:
    factor = (1 - min(step, total - 1) / total) ** power
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * factor


def target_sets(
    data: AdaptationData, cfg: ProjectConfig, tileset
) -> tuple[TileDataset, TileDataset, TileDataset | None]:
    """Target windows for adaptation (masks unused), all target tiles for the entropy signal, and
    the small labelled target set when the config names one."""
    uda = cfg.uda
    tiles = tileset.tiles
    target_ids = data.target_images
    target_tiles = tiles[tiles.image_id.isin(target_ids)]
    adapt = TileDataset(
        tileset,
        target_tiles.assign(labelled=False),
        sampling="random",
        samples_per_epoch=cfg.training.samples_per_epoch,
        seed=cfg.training.seed + 7,
    )
    # The label-free signal needs no more than a fixed sample of target tiles.
    sample = target_tiles.sample(n=min(len(target_tiles), SIGNAL_TILES), random_state=0)
    signal = TileDataset(tileset, sample.assign(labelled=False))
    val_ids = data.target_val_images
    val_tiles = validation_subset(tiles[tiles.image_id.isin(val_ids) & tiles.labelled], cfg.training)
    labelled = TileDataset(tileset, val_tiles) if len(val_tiles) and uda.target_val is not None else None
    return adapt, signal, labelled


@torch.no_grad()
def _target_entropy(forward, dataset, cfg, session, compute: Compute) -> float:
    """Mean prediction entropy on the target tiles: a label-free (and fallible) signal."""
    total, count = 0.0, 0
    for images, _ in shard_batches(dataset, cfg.training.batch_size, session.world_rank, session.world_size):
        with compute.autocast():
            logits = forward(compute.to_device(images))
        logits = crop_centre(logits.float(), cfg.tiling.margin)
        total += float(entropy_map(logits).sum(dim=1).mean()) * len(images)
        count += len(images)
    total, count = all_reduce_sum(np.array([total, count], dtype=np.float64), session.device)
    return float(total / max(count, 1))


def adaptation_step(
    segmenter: nn.Module,
    discriminators: nn.Module,
    seg_optimizer: torch.optim.Optimizer,
    disc_optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    xs: torch.Tensor,
    ys: torch.Tensor,
    xt: torch.Tensor,
    uda,
    margin: int,
    compute: Compute | None = None,
) -> np.ndarray:
    """One update of the segmenter, then one of the discriminators.

    Returns [seg loss, adversarial loss, entropy loss, discriminator loss, discriminator
    correct pixels, discriminator pixels] for the epoch's sums.
    """
    adversarial = uda.method in ("adaptsegnet", "advent")
    compute = compute or Compute(xs.device, "fp32")
    raw_discriminators = unwrap(discriminators)  # used un-wrapped (and frozen) in the segmenter's step
    # 1. segmenter: one forward over both domains (one DDP pass, one backward). Source-only
    # never sees the target: a joint forward would put target images into the batch-norm
    # statistics, itself an adaptation (AdaBN), and flatter the baseline. The networks run in
    # the compute's precision; everything after them in fp32.
    with compute.autocast():
        main, aux = segmenter(torch.cat([xs, xt]) if adversarial else xs)
    main, aux, ys = crop_centre(main.float(), margin), crop_centre(aux.float(), margin), crop_centre(ys, margin)
    ns = len(xs)
    seg = loss_fn(main[:ns], ys) + uda.weight_seg_aux * loss_fn(aux[:ns], ys)
    loss = seg
    adv = ent = torch.zeros((), device=xs.device)
    if adversarial:
        for p in raw_discriminators.parameters():
            p.requires_grad_(False)
        with compute.autocast():
            d_main, d_aux = raw_discriminators(
                discriminator_input(main[ns:], uda.method), discriminator_input(aux[ns:], uda.method)
            )
        d_main, d_aux = d_main.float(), d_aux.float()
        # Fool the discriminators: target outputs should look like source outputs.
        adv = uda.weight_adv * _bce(d_main, SOURCE_LABEL) + uda.weight_adv_aux * _bce(d_aux, SOURCE_LABEL)
        loss = loss + adv
    if uda.method == "advent":
        ent = uda.weight_entropy * (mean_entropy(main[ns:]) + uda.weight_seg_aux * mean_entropy(aux[ns:]))
        loss = loss + ent
    scaler = compute.scaler
    seg_optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(seg_optimizer)
    result = np.array([float(seg.detach()), float(adv.detach()), float(ent.detach()), 0.0, 0.0, 0.0])
    if not adversarial:
        scaler.update()
        return result
    for p in raw_discriminators.parameters():
        p.requires_grad_(True)

    # 2. discriminators on detached outputs of both levels: source -> 0, target -> 1.
    with compute.autocast():
        d_main, d_aux = discriminators(
            discriminator_input(main.detach(), uda.method), discriminator_input(aux.detach(), uda.method)
        )
    d_main, d_aux = d_main.float(), d_aux.float()
    labels = torch.cat([torch.full((ns,), SOURCE_LABEL), torch.full((len(xt),), TARGET_LABEL)]).to(xs.device)
    main_labels = labels.view(-1, 1, 1, 1).expand_as(d_main)
    disc_loss = F.binary_cross_entropy_with_logits(d_main, main_labels) + F.binary_cross_entropy_with_logits(
        d_aux, labels.view(-1, 1, 1, 1).expand_as(d_aux)
    )
    disc_optimizer.zero_grad(set_to_none=True)
    scaler.scale(disc_loss).backward()
    scaler.step(disc_optimizer)
    scaler.update()
    correct = ((d_main.detach() > 0).float() == main_labels).float()
    result[3:] = [float(disc_loss.detach()), float(correct.sum()), correct.numel()]
    return result


def adapt_worker(job: TrainJob, session: WorkerSession) -> None:
    cfg = job.config
    training, uda = cfg.training, cfg.uda
    torch.set_num_threads(session.cpus)
    torch.manual_seed(training.seed)
    tileset = load_tiles(job.tiles_root)

    segmenter = MultiLevelSegmenter(build_model(cfg.model, cfg.num_classes), cfg.num_classes, uda.aux_level)
    if job.init_model:
        load_model_weights(segmenter.net, job.init_model)
    discriminators = Discriminators(cfg.num_classes, uda.discriminator_channels)
    segmenter = prepare_network(session, segmenter)
    discriminators = prepare_network(session, discriminators)
    compute = worker_compute(session, training)

    groups = parameter_groups(unwrap(segmenter).net, training.lr, training.encoder_lr_factor)
    groups.append({"params": list(unwrap(segmenter).aux_head.parameters()), "lr": training.lr, "name": "aux"})
    seg_optimizer = torch.optim.AdamW(groups, weight_decay=training.weight_decay)
    disc_optimizer = torch.optim.Adam(discriminators.parameters(), lr=uda.lr_discriminator, betas=(0.9, 0.99))
    seg_base = [g["lr"] for g in seg_optimizer.param_groups]
    disc_base = [g["lr"] for g in disc_optimizer.param_groups]

    source_set, val_set = training_datasets(job.data, cfg, tileset, session.world_rank)
    loss_fn = make_loss(cfg, source_set, session.device)
    target_set, signal_set, target_val_set = target_sets(job.data, cfg, tileset)
    target_batch = uda.target_batch_size or training.batch_size
    source_loader = make_loader(source_set, training.batch_size, session, training, seed=training.seed)
    target_loader = make_loader(target_set, target_batch, session, training, seed=training.seed + 7)
    announce(session, compute, source_loader, target_loader)
    steps_per_epoch = len(source_loader)
    total_steps = max(1, training.epochs * steps_per_epoch)

    stateful = {
        "segmenter": segmenter,
        "discriminators": discriminators,
        "seg_optimizer": seg_optimizer,
        "disc_optimizer": disc_optimizer,
        "scaler": compute.scaler,
    }
    net_view = _NetView(segmenter)  # the model file holds the plain smp network
    start_epoch, history = restore_state(session, net_view, stateful)
    attempt = next_attempt(history)
    plan = EpochPlan(training, training.epochs, job.selection, history)
    margin = cfg.tiling.margin
    adversarial = uda.method in ("adaptsegnet", "advent")

    for epoch in range(start_epoch, training.epochs):
        started = time.time()
        begin_epoch(epoch, [source_loader, target_loader])
        segmenter.train()
        discriminators.train()
        sums = np.zeros(6)  # see adaptation_step
        targets = cycle(target_loader)
        for step, (xs, ys) in enumerate(source_loader):
            global_step = epoch * steps_per_epoch + step
            poly_lr(seg_optimizer, seg_base, global_step, total_steps, uda.poly_power)
            poly_lr(disc_optimizer, disc_base, global_step, total_steps, uda.poly_power)
            xt, _ = next(targets)
            xs, ys, xt = compute.to_device(xs), compute.to_device(ys), compute.to_device(xt)

            sums += adaptation_step(
                segmenter, discriminators, seg_optimizer, disc_optimizer, loss_fn, xs, ys, xt, uda, margin, compute
            )

        totals = all_reduce_sum(np.append(sums, steps_per_epoch), session.device)
        steps = max(totals[-1], 1)
        metrics: dict[str, float] = {
            "epoch": epoch + 1,
            "train_seg_loss": totals[0] / steps,
            "train_adv_loss": totals[1] / steps,
            "train_entropy_loss": totals[2] / steps,
            "disc_loss": totals[3] / steps if adversarial else float("nan"),
            # Near 0.5: the discriminator cannot tell the domains apart (aligned, not necessarily right).
            "disc_accuracy": totals[4] / totals[5] if totals[5] else float("nan"),
        }
        segmenter.eval()
        forward = lambda x: unwrap(segmenter).net(x)  # noqa: E731 - the main output only
        validation_started, metrics["val_seconds"] = time.time(), 0.0
        metrics["val_miou"] = metrics["target_entropy"] = float("nan")
        if plan.validates(epoch + 1):
            if val_set is not None:
                metrics.update(validate(forward, val_set, cfg, session, loss_fn, compute=compute))
            metrics["target_entropy"] = _target_entropy(forward, signal_set, cfg, session, compute)
            if target_val_set is not None:
                metrics.update(
                    validate(forward, target_val_set, cfg, session, loss_fn, prefix="target", compute=compute)
                )
            metrics["val_seconds"] = time.time() - validation_started
        metrics.update(epoch_seconds=time.time() - started, lr=seg_optimizer.param_groups[1]["lr"], attempt=attempt)
        history.append(metrics)
        report_epoch(
            session,
            job,
            metrics,
            history,
            net_view,
            stateful,
            tileset.domain_stats(),
            checkpoint=plan.checkpoints(metrics),
        )


class _NetView(nn.Module):
    """Exposes the segmenter's plain smp network as `module`, so model files and restores see it."""

    def __init__(self, segmenter: nn.Module):
        super().__init__()
        self.module = unwrap(segmenter).net
