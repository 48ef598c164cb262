"""The supervised training loop that runs on every Ray Train worker: the segmentation loss,
the training and validation windows, and the epochs (shared machinery in ``loop``)."""

from __future__ import annotations

import math
import time

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from microal.config import ProjectConfig
from microal.console import say
from microal.data.augment import load_pipeline
from microal.data.datasets import TileDataset
from microal.data.labels import LabelStore
from microal.data.tiles import load_tiles
from microal.data.tiling import IGNORE_INDEX, crop_centre
from microal.models.factory import build_model, load_model_weights, parameter_groups
from microal.models.metrics import balanced_class_weights
from microal.training.budget import FIRST_GUESS_SLACK, TimeBudget, agree_on, planned_epochs, probe_cost
from microal.training.loop import (
    EpochPlan,
    WorkerSession,
    announce,
    begin_epoch,
    fit_epoch,
    make_loader,
    next_attempt,
    prepare_network,
    report_epoch,
    restore_state,
    set_schedule_epochs,
    validate,
    validation_subset,
    warmup_cosine,
    worker_compute,
)
from microal.training.payloads import SupervisedData, TrainJob


class SegmentationLoss(torch.nn.Module):
    """(Weighted) cross-entropy + dice_weight x Dice, both ignoring pixels outside the image."""

    def __init__(self, dice_weight: float, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.dice_weight = dice_weight
        self.dice = smp.losses.DiceLoss(mode="multiclass", ignore_index=IGNORE_INDEX)
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # the loss in fp32, whatever precision the network ran in
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
    weights = balanced_class_weights(train_set.source.class_pixel_counts(cfg.num_classes))
    return torch.tensor(weights, dtype=torch.float32)


def make_loss(cfg: ProjectConfig, train_set: TileDataset, device: torch.device) -> SegmentationLoss:
    return SegmentationLoss(cfg.training.dice_weight, class_weights(cfg, train_set)).to(device)


def training_datasets(
    data: SupervisedData, cfg: ProjectConfig, tileset, rank: int
) -> tuple[TileDataset, TileDataset | None]:
    """The labelled train windows (augmented, sampled as configured) and the validation tiles
    (all, or training.val_windows of them)."""
    training = cfg.training
    tiles = tileset.tiles
    # Active learning names tiles (labelled ones) and a label store; otherwise whole images.
    named = data.tiles
    labels = LabelStore(named.label_store, tileset) if named is not None and named.label_store else None
    if named is not None:
        train_tiles = tiles[tiles.tile_id.isin(named.train_tiles)].assign(labelled=True)
        val_tiles = tiles[tiles.tile_id.isin(named.val_tiles)].assign(labelled=True)
    else:
        train_tiles = tiles[tiles.image_id.isin(data.train_images) & tiles.labelled]
        val_tiles = tiles[tiles.image_id.isin(data.val_images) & tiles.labelled]
    train_set = TileDataset(
        tileset,
        train_tiles,
        augment=load_pipeline(training.augmentation, seed=training.seed + rank),
        sampling=training.sampling,
        samples_per_epoch=training.samples_per_epoch if training.sampling == "random" else None,
        seed=training.seed + 1000 * rank,
        labels=labels,
        # Named tiles (active learning) carry the only labels of their images.
        around="tile" if named is not None else "image",
        class_windows=training.class_windows,
    )
    val_tiles = validation_subset(val_tiles, training)
    val_set = TileDataset(tileset, val_tiles, labels=labels) if len(val_tiles) else None
    return train_set, val_set


def validation_seconds(val_set: TileDataset | None, batch_size: int, session: WorkerSession, compute):
    """A full validation's cost, from one timed forward pass of a batch of validation windows."""

    @torch.no_grad()
    def measure(model: torch.nn.Module) -> float:
        if val_set is None or len(val_set) == 0:
            return 0.0
        images = torch.stack([val_set[i][0] for i in range(min(len(val_set), batch_size))])
        images = compute.to_device(images)
        seconds = []
        for _ in range(2):  # the first pass allocates; the second is timed
            started = time.perf_counter()
            with compute.autocast():
                model(images)
            seconds.append(time.perf_counter() - started)
        batches = math.ceil(math.ceil(len(val_set) / session.world_size) / batch_size)
        return seconds[-1] * batches

    return measure


def budget_epochs(
    job: TrainJob, session: WorkerSession, history: list[dict], start_epoch: int, measure
) -> tuple[int, TimeBudget | None, float]:
    """The number of epochs: training.epochs, or what fits in training.budget (a resumed run
    starts from the number its first attempt had), and the first guess of an epoch's seconds."""
    training = job.config.training
    if training.budget_seconds is None:
        return training.epochs, None, 0.0
    budget = TimeBudget(job.started_at, training.budget_seconds)
    epochs = planned_epochs(history)
    if epochs is not None:
        return epochs, budget, (budget.deadline - time.time()) / max(1, epochs - start_epoch)
    cost = measure()
    epochs = agree_on(
        budget.epochs_that_fit(cost, training.validate_every, training.checkpoint_every, training.epochs),
        session.device,
    )
    if session.world_rank == 0:
        say(
            f"budget {training.budget}: {cost.step_s:.2f} s/step x {cost.steps} steps, validation "
            f"{cost.validation_s:.1f} s, checkpoint {cost.checkpoint_s:.1f} s -> {epochs} epochs "
            f"(~{cost.epoch_s(training.validate_every, training.checkpoint_every):.0f} s each)"
        )
    return epochs, budget, cost.epoch_s(training.validate_every, training.checkpoint_every) * FIRST_GUESS_SLACK


def train_worker(job: TrainJob, session: WorkerSession) -> None:
    cfg = job.config
    training = cfg.training
    torch.set_num_threads(session.cpus)
    torch.manual_seed(training.seed)  # same initial weights on every worker
    tileset = load_tiles(job.tiles_root)

    net = build_model(cfg.model, cfg.num_classes)
    if job.init_model:
        load_model_weights(net, job.init_model)
    net = prepare_network(session, net)
    compute = worker_compute(session, training)

    def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
        groups = parameter_groups(model, training.lr, training.encoder_lr_factor)
        return torch.optim.AdamW(groups, weight_decay=training.weight_decay)

    optimizer = make_optimizer(net)
    train_set, val_set = training_datasets(job.data, cfg, tileset, session.world_rank)
    loss_fn = make_loss(cfg, train_set, session.device)
    loader = make_loader(train_set, training.batch_size, session, training, seed=training.seed)
    announce(session, compute, loader)
    margin = cfg.tiling.margin

    def loss_of(model: torch.nn.Module):
        def batch_loss(images, masks):
            return loss_fn(crop_centre(model(images), margin), crop_centre(masks, margin))

        return batch_loss

    scheduler = warmup_cosine(optimizer, training.epochs, training.warmup)
    stateful = {"optimizer": optimizer, "scheduler": scheduler, "scaler": compute.scaler}
    start_epoch, history = restore_state(session, net, stateful)
    measure_validation = validation_seconds(val_set, training.batch_size, session, compute)
    epochs, budget, first_guess = budget_epochs(
        job,
        session,
        history,
        start_epoch,
        lambda: probe_cost(net, loader, make_optimizer, loss_of, compute, measure_validation),
    )
    set_schedule_epochs(scheduler, epochs)
    attempt = next_attempt(history)
    plan = EpochPlan(training, epochs, job.selection, history)
    batch_loss = loss_of(net)
    epoch_starts: list[float] = []

    epoch = start_epoch
    while epoch < epochs:  # (a time budget may change `epochs` as it goes)
        started = time.time()
        epoch_starts.append(started)
        begin_epoch(epoch, [loader])
        metrics: dict[str, float] = {
            "epoch": epoch + 1,
            "train_loss": fit_epoch(net, loader, optimizer, batch_loss, compute),
        }
        scheduler.step()
        if budget is not None:
            # Re-measured every epoch: the schedule ends with the last epoch that fits.
            fit = agree_on(budget.epochs_from(epoch, epoch_starts, first_guess, training.epochs), session.device)
            if fit != epochs:
                plan.epochs = epochs = fit
                set_schedule_epochs(scheduler, epochs)
        validation_started, metrics["val_seconds"] = time.time(), 0.0
        if val_set is not None and plan.validates(epoch + 1):
            net.eval()
            metrics.update(validate(net, val_set, cfg, session, loss_fn, compute=compute))
            metrics["val_seconds"] = time.time() - validation_started
        else:
            metrics["val_miou"] = float("nan")
        metrics.update(
            epoch_seconds=time.time() - started,
            lr=optimizer.param_groups[1]["lr"],
            attempt=attempt,
            epochs_planned=epochs,
        )
        history.append(metrics)
        report_epoch(
            session,
            job,
            metrics,
            history,
            net,
            stateful,
            tileset.domain_stats(),
            epochs=epochs,
            checkpoint=plan.checkpoints(metrics),
        )
        epoch += 1
