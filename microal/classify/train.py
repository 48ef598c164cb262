"""`microal classify train`: the metric embedding as a Ray Train job, then the open set.

Workers draw class-balanced crops at many length scales (data/crops.py), embed them
(models/embedding.py) and learn with a triplet loss whose triplets are mined online in each
batch (pytorch-metric-learning: semi-hard negatives, the crops of one class pulled together
and other classes pushed a margin away). Every validated epoch, nearest-centroid accuracy of
fixed validation crops (centroids from fixed training crops) picks the best epoch. Epochs,
checkpoints, resume, DDP and the epoch lines are the segmentation loops' own (training/loop.py).

After the run the driver fits the open set on the best epoch's descriptors (openset.py),
keeps it in the classifier files and draws the descriptor plane.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.functional import cross_entropy
from torch.utils.data import DataLoader

from microal.backend import ray as ray_backend
from microal.classify.classifier_file import (
    CLASSIFIER_FILE,
    add_open_set,
    load_classifier,
    save_classifier_file,
)
from microal.classify.labels import labelled_images, split_table, trained_classes
from microal.classify.openset import OpenSet, fit_open_set
from microal.config import ProjectConfig, save_config
from microal.console import say
from microal.data.augment import load_pipeline
from microal.data.catalog import read_catalog
from microal.data.crops import BalancedCrops, FixedCrops, ImageStore
from microal.data.splits import TRAIN, VAL
from microal.errors import MicroalError
from microal.models.compute import autocast
from microal.models.embedding import build_embedding_net
from microal.plots import embedding_plane
from microal.training.budget import TimeBudget, agree_on, planned_epochs
from microal.training.jobs import check_run_name, export_history, run_spec, save_splits, worker_cpus
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
    warmup_cosine,
    worker_compute,
)

PROGRESS = ("val_accuracy",)
REFERENCE_SEED, VALIDATION_SEED = 101, 202  # fixed crops: the same every epoch and every run


@dataclass(frozen=True)
class ClassifyData:
    """Catalog rows of the images to train and validate on, and the trained classes."""

    train: pd.DataFrame
    val: pd.DataFrame
    classes: list[str]


@dataclass
class ClassifyJob:
    """Everything a worker needs (the shape training/loop.py's report_epoch reads)."""

    config: ProjectConfig
    data: ClassifyData
    progress: tuple[str, ...] = PROGRESS
    started_at: float = field(default_factory=time.time)

    @property
    def selection(self) -> tuple[str, str]:
        """What picks the best epoch: validation accuracy, or the training loss without validation images."""
        return ("val_accuracy", "max") if len(self.data.val) else ("train_loss", "min")


def class_indices(rows: pd.DataFrame, classes: list[str]) -> np.ndarray:
    return rows.label.map({name: i for i, name in enumerate(classes)}).to_numpy(dtype=int)


@torch.no_grad()
def describe_crops(net, dataset, batch_size: int, compute=None) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors of every crop of a FixedCrops set, and the store index of each crop's image."""
    net.eval()
    device = next(net.parameters()).device
    precision = compute.precision if compute is not None else "fp32"
    out, owners = [], []
    for crops, density, owner in DataLoader(dataset, batch_size=batch_size):
        with autocast(device, precision):
            out.append(net(crops.to(device), density.to(device)).float().cpu().numpy())
        owners.append(owner.numpy())
    return np.concatenate(out), np.concatenate(owners)


def reference_rows(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Rows (sorted) of at most `per_class` images of each class, a seeded draw: the training
    images whose crops give the validation centroids."""
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(rows, size=min(per_class, len(rows)), replace=False)
        for rows in (np.flatnonzero(labels == c) for c in np.unique(labels))
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=int)


def nearest_centroid_accuracy(
    reference: np.ndarray, reference_labels: np.ndarray, probe: np.ndarray, probe_labels: np.ndarray
) -> float:
    """Balanced accuracy of probe descriptors given the class of the nearest class centroid."""
    present = np.unique(reference_labels)
    centroids = np.stack([reference[reference_labels == c].mean(axis=0) for c in present])
    nearest = present[np.argmin(((probe[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)]
    recalls = [np.mean(nearest[probe_labels == c] == c) for c in np.unique(probe_labels)]
    return float(np.mean(recalls))


def classify_worker(job: ClassifyJob, session: WorkerSession) -> None:
    from pytorch_metric_learning import distances, losses, miners

    cfg, data = job.config, job.data
    settings, training = cfg.classify, cfg.training
    torch.set_num_threads(session.cpus)
    torch.manual_seed(training.seed)
    train_store = ImageStore(data.train, cfg.ingest)
    train_labels = class_indices(data.train, data.classes)
    net = prepare_network(session, build_embedding_net(cfg.model, settings, len(data.classes)))
    compute = worker_compute(session, training)
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    augment = load_pipeline(settings.augmentation, seed=training.seed + session.world_rank, key="classify.augmentation")
    train_set = BalancedCrops(train_store, train_labels.tolist(), settings, augment, seed=training.seed)
    loader = make_loader(train_set, settings.batch_size, session, training, seed=training.seed)
    announce(session, compute, loader)
    # Distances in the plane itself (pml normalises embeddings by default, which would put every
    # crop on a circle the mixtures never see).
    distance = distances.LpDistance(normalize_embeddings=False)
    loss_fn = losses.TripletMarginLoss(margin=settings.margin, distance=distance)
    miner = miners.TripletMarginMiner(margin=settings.margin, type_of_triplets="semihard", distance=distance)
    if session.world_size > 1:
        from pytorch_metric_learning.utils import distributed

        loss_fn = distributed.DistributedLossWrapper(loss_fn)
        miner = distributed.DistributedMinerWrapper(miner)

    def batch_loss(crops, density, labels):
        descriptors, logits = (out.float() for out in net(crops, density, with_logits=True))
        # + 0 x sum: a batch with no violating triplet still has a graph for backward.
        loss = loss_fn(descriptors, labels, miner(descriptors, labels)) + 0.0 * descriptors.sum()
        return loss + settings.class_loss_weight * cross_entropy(logits, labels)

    reference_images = reference_rows(train_labels, settings.reference_images_per_class, REFERENCE_SEED)
    reference = FixedCrops(train_store.subset(reference_images), settings.val_crops, settings, seed=REFERENCE_SEED)
    validation = None
    if len(data.val):
        val_store = ImageStore(data.val, cfg.ingest)
        validation = FixedCrops(val_store, settings.val_crops, settings, seed=VALIDATION_SEED)
        val_labels = class_indices(data.val, data.classes)

    scheduler = warmup_cosine(optimizer, settings.epochs, training.warmup)
    stateful = {"optimizer": optimizer, "scheduler": scheduler, "scaler": compute.scaler}
    start_epoch, history = restore_state(session, net, stateful)
    budget = TimeBudget(job.started_at, settings.budget_seconds) if settings.budget is not None else None
    # A resumed run keeps the number of epochs its budget had planned (a new config's epochs otherwise).
    epochs = (planned_epochs(history) if budget is not None else None) or settings.epochs
    set_schedule_epochs(scheduler, epochs)
    attempt = next_attempt(history)
    plan = EpochPlan(training, epochs, job.selection, history)
    epoch_starts: list[float] = []
    epoch = start_epoch
    while epoch < epochs:  # (a time budget may change `epochs` as it goes)
        started = time.time()
        epoch_starts.append(started)
        begin_epoch(epoch, [loader])
        metrics = {"epoch": epoch + 1, "train_loss": fit_epoch(net, loader, optimizer, batch_loss, compute)}
        scheduler.step()
        if budget is not None:
            # Measured every epoch (from this epoch's steps until two epochs have started): the
            # cosine schedule ends with the last epoch that fits.
            fit = budget.epochs_from(epoch, epoch_starts, time.time() - started, settings.epochs)
            fit = agree_on(fit, session.device)
            if fit != epochs:
                plan.epochs = epochs = fit
                set_schedule_epochs(scheduler, epochs)
        metrics["val_accuracy"], metrics["val_seconds"] = float("nan"), 0.0
        if validation is not None and plan.validates(epoch + 1):
            validation_started = time.time()
            ref, ref_owner = describe_crops(net, reference, settings.predict_batch_size, compute)
            probe, probe_owner = describe_crops(net, validation, settings.predict_batch_size, compute)
            metrics["val_accuracy"] = nearest_centroid_accuracy(
                ref, train_labels[reference_images][ref_owner], probe, val_labels[probe_owner]
            )
            metrics["val_seconds"] = time.time() - validation_started
        metrics.update(
            epoch_seconds=time.time() - started,
            lr=optimizer.param_groups[0]["lr"],
            attempt=attempt,
            epochs_planned=epochs,
        )
        history.append(metrics)

        def write_classifier(path: Path, epoch_metrics=dict(metrics), so_far=list(history)) -> None:
            save_classifier_file(path, net, cfg, data.classes, int(epoch_metrics["epoch"]), epoch_metrics, so_far)

        report_epoch(
            session,
            job,
            metrics,
            history,
            net,
            stateful,
            None,
            extra_files={CLASSIFIER_FILE: write_classifier},
            epochs=epochs,
            checkpoint=plan.checkpoints(metrics),
        )
        epoch += 1


@dataclass
class ClassifierRun:
    run_dir: Path
    best_classifier: Path
    best_metrics: dict
    history: pd.DataFrame
    open_set: OpenSet
    splits: pd.DataFrame


def build_data(config: ProjectConfig, catalog_path: Path) -> tuple[ClassifyData, pd.DataFrame]:
    images = labelled_images(read_catalog(catalog_path), config)
    splits = split_table(images, config)
    classes = trained_classes(config)
    by_id = images.set_index("image_id")
    rows = {
        role: by_id.loc[splits.image_id[splits.split == role]].reset_index().reset_index(drop=True)
        for role in (TRAIN, VAL)
    }
    return ClassifyData(rows[TRAIN], rows[VAL], classes), splits


def fit_classifier_open_set(path: Path, data: ClassifyData, config: ProjectConfig) -> OpenSet:
    """Mixtures on the best epoch's descriptors of classify.gmm_crops crops per training image,
    threshold on classify.val_crops crops per validation image; kept in the classifier file."""
    settings = config.classify
    classifier = load_classifier(path)
    train_crops = FixedCrops(ImageStore(data.train, config.ingest), settings.gmm_crops, settings, seed=REFERENCE_SEED)
    descriptors, owner = describe_crops(classifier.net, train_crops, settings.predict_batch_size)
    labels = class_indices(data.train, data.classes)[owner]
    val_descriptors = val_labels = None
    if len(data.val):
        val_crops = FixedCrops(ImageStore(data.val, config.ingest), settings.val_crops, settings, seed=VALIDATION_SEED)
        val_descriptors, val_owner = describe_crops(classifier.net, val_crops, settings.predict_batch_size)
        val_labels = class_indices(data.val, data.classes)[val_owner]
    open_set = fit_open_set(
        descriptors,
        labels,
        data.classes,
        settings.gmm_components,
        settings.none_quantile,
        val_descriptors,
        val_labels,
        seed=config.training.seed,
    )
    add_open_set(path, open_set)
    embedding_plane(
        descriptors, labels, data.classes, open_set, path.parent / "embedding.png", val_descriptors, val_labels
    )
    return open_set


def train_classifier(
    config: ProjectConfig,
    catalog_path: Path,
    run_dir: Path,
    storage_path: str,
    name: str,
    resume: bool = False,
    address: str | None = None,
) -> ClassifierRun:
    """Train the embedding (Ray Train), then fit the open set into best_classifier.pt."""
    check_run_name(storage_path, name, resume)
    data, splits = build_data(config, catalog_path)
    save_splits(splits, run_dir)
    save_config(config, run_dir / "config.yaml")
    ray_backend.init_ray(address)
    cpus = worker_cpus(config)
    training = config.training
    counts = data.train.label.value_counts().reindex(data.classes, fill_value=0)
    say(
        f"classification {name}: {len(data.train)} train / {len(data.val)} val images of {len(data.classes)} "
        f"classes ({', '.join(f'{c} {n}' for c, n in counts.items())}), "
        f"{training.num_workers} worker(s) x {cpus} CPU{', GPU' if training.use_gpu else ''}"
    )
    missing = [c for c, n in counts.items() if n == 0]
    if missing:
        say(f"  no training image of {missing}: they cannot be predicted by this run")
    job = ClassifyJob(config, data)
    spec = run_spec(config, name, storage_path, cpus, job.selection, export_dir=run_dir, files=(CLASSIFIER_FILE,))
    outcome = ray_backend.fit(classify_worker, job, spec)
    best = run_dir / f"best_{CLASSIFIER_FILE}"
    history = export_history(run_dir, CLASSIFIER_FILE, data.classes, name)
    if not best.exists():
        raise MicroalError(f"classification {name}: no classifier was exported to {run_dir}")
    say("fitting a Gaussian mixture per class on the best epoch's descriptors ...")
    open_set = fit_classifier_open_set(best, data, config)  # (last_classifier.pt stays without: a training state)
    if open_set.threshold_from == "training":
        say("  no validation images: the 'none' threshold was set on training crops (it accepts more unknowns)")
    return ClassifierRun(run_dir, best, outcome.best_metrics, history, open_set, splits)
