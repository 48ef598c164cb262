"""Training jobs: who trains on what, and how a job of each kind runs.

`JOB_KINDS` is the one table of job kinds (supervised, uda, pretrain): for each, the builder that
decides the images (and the split table a run keeps), the loop its workers run, the metric that
picks the best epoch, the files a run exports, its epochs setting and what its progress lines and
summary show. `microal train`, `adapt`, `pretrain` and every trial of `microal tune` go through it.

Building a job is separate from running it, so a search can run the same job with other settings
in every trial.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from microal.backend import ray as ray_backend
from microal.config import ProjectConfig, save_config
from microal.data.splits import NO_MASK, TRAIN, VAL, assign_splits
from microal.data.tiles import TileSet, load_tiles
from microal.errors import ConfigError, MicroalError
from microal.files import atomic_path
from microal.models.model_file import ENCODER_FILE, MODEL_FILE, add_domain_bn_statistics, load_model, read_history
from microal.plots import learning_curve
from microal.training.adaptation import adapt_worker
from microal.training.payloads import AdaptationData, LabelledTiles, Payload, PretrainData, SupervisedData, TrainJob
from microal.training.pretraining import pretrain_worker
from microal.training.supervised import train_worker

UDA_SELECTION = {
    "val_miou": ("val_miou", "max"),
    "target_miou": ("target_miou", "max"),
    "target_entropy": ("target_entropy", "min"),
}


@dataclass(frozen=True)
class JobKind:
    name: str
    label: str  # what the terminal calls a run of this kind
    build: Callable[[ProjectConfig, Path], tuple[Payload, pd.DataFrame]]  # payload and split table
    loop: Callable  # loop(job, session) on every Train worker
    selection: Callable[[ProjectConfig, Payload], tuple[str, str]]  # (metric, mode) picking the best epoch
    progress: tuple[str, ...]  # metrics each epoch line shows besides the losses
    summary: tuple[str, ...]  # metrics of the best epoch shown after a run
    files: tuple[str, ...] = (MODEL_FILE,)  # checkpoint files exported as best_<file> and last_<file>
    epochs_key: str = "training.epochs"  # the dotted setting that is this kind's number of epochs
    method_key: str | None = None  # a dotted setting whose value the run's title shows
    finish: Callable | None = None  # finish(summary, config, tiles_root, name) after the run is exported

    def epochs(self, config: ProjectConfig) -> int:
        return int(_setting(config, self.epochs_key))

    def title(self, config: ProjectConfig) -> str:
        return f"{self.label} ({_setting(config, self.method_key)})" if self.method_key else self.label


def _setting(config: ProjectConfig, dotted: str):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


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
        raise MicroalError(
            f"run {name!r} already exists in {storage_path}; pass --resume to continue it or --name for a new run"
        )
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


def _split_images(splits: pd.DataFrame) -> tuple[list[str], list[str]]:
    return splits.image_id[splits.split == TRAIN].tolist(), splits.image_id[splits.split == VAL].tolist()


def supervised_data(config: ProjectConfig, tiles_root: Path) -> tuple[SupervisedData, pd.DataFrame]:
    """Train on the split's train images, validate on its val images."""
    splits = split_table(load_tiles(tiles_root), config)
    return SupervisedData(*_split_images(splits)), splits


def adaptation_data(config: ProjectConfig, tiles_root: Path) -> tuple[AdaptationData, pd.DataFrame]:
    """Labelled source-domain images, unlabelled target-domain images."""
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
            raise ConfigError(
                f"uda.target_val: no labelled target image has {uda.target_val.column} in {uda.target_val.values}"
            )
    if uda.select_by == "target_miou" and not target_val:
        raise ConfigError("uda.select_by: target_miou needs uda.target_val (a small labelled target set)")
    train_images, val_images = _split_images(splits)
    data = AdaptationData(train_images, val_images, target_images=target_images, target_val_images=target_val)
    return data, splits


def pretraining_data(config: ProjectConfig, tiles_root: Path) -> tuple[PretrainData, pd.DataFrame]:
    """Encoder pre-training. Held-out test images (and images excluded with them) are never
    used, not even unlabelled."""
    pre = config.pretrain
    tileset = load_tiles(tiles_root)
    splits = split_table(tileset, config)
    usable = splits.split.isin([TRAIN, NO_MASK] if pre.use_unlabelled else [TRAIN])
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
    data = PretrainData(
        train_images=splits.image_id[usable].tolist(),
        val_images=splits.image_id[splits.split == VAL].tolist() if labels else [],
        labels=labels,
    )
    if not data.train_images:
        raise ConfigError("pretrain: no image to pre-train on")
    return data, splits


def _pretraining_selection(config: ProjectConfig, data: PretrainData) -> tuple[str, str]:
    return ("val_accuracy", "max") if data.labels and data.val_images else ("train_loss", "min")


BN_BATCH = 16  # windows per forward pass when estimating batch-norm statistics


def add_target_bn_statistics(model_files: list[Path], config: ProjectConfig, tiles_root: Path) -> dict[str, int]:
    """Batch-norm statistics of each uda.target_domains domain, estimated on uda.bn_windows
    random windows of its images (masks unused), written into each model file (domain_bn).
    Returns the windows used per domain."""
    from torch.utils.data import DataLoader

    from microal.data.datasets import TileDataset
    from microal.models.domain_bn import estimate_statistics

    tileset = load_tiles(tiles_root)
    windows = {}  # the same target windows for every model file
    for domain in config.uda.target_domains:
        image_ids = tileset.images.image_id[tileset.images.domain.astype(str) == domain]
        tiles = tileset.tiles[tileset.tiles.image_id.isin(image_ids)]
        if tiles.empty:
            raise ConfigError(f"uda.target_domains: domain {domain!r} has no tiles in {tiles_root}")
        windows[domain] = TileDataset(
            tileset,
            tiles.assign(labelled=False),
            sampling="random",
            samples_per_epoch=config.uda.bn_windows,
            seed=config.training.seed,
        )
    for model_file in model_files:
        net = load_model(model_file).net
        statistics = {
            domain: estimate_statistics(net, (images for images, _ in DataLoader(data, batch_size=BN_BATCH)))
            for domain, data in windows.items()
        }
        add_domain_bn_statistics(model_file, statistics)
    return {domain: len(data) for domain, data in windows.items()}


def _keep_target_bn_statistics(summary: TrainSummary, config: ProjectConfig, tiles_root: Path, name: str) -> None:
    """After adaptation: the model predicts each target domain with that domain's batch-norm statistics."""
    if not config.uda.target_bn_statistics or config.uda.method == "source_only":
        return
    used = add_target_bn_statistics([summary.best_model, summary.run_dir / f"last_{MODEL_FILE}"], config, tiles_root)
    print(
        f"{name}: batch-norm statistics of the target domain(s) "
        f"{', '.join(f'{d} ({n} windows)' for d, n in used.items())} kept in its model files",
        flush=True,
    )


JOB_KINDS: dict[str, JobKind] = {
    "supervised": JobKind(
        "supervised",
        "training",
        supervised_data,
        train_worker,
        selection=lambda config, data: ("val_miou", "max"),
        progress=("val_loss", "val_miou"),
        summary=("val_miou", "train_loss"),
    ),
    "uda": JobKind(
        "uda",
        "adaptation",
        adaptation_data,
        adapt_worker,
        selection=lambda config, data: UDA_SELECTION[config.uda.select_by],
        progress=("val_loss", "val_miou", "target_miou"),
        summary=("val_miou", "target_miou", "target_entropy"),
        method_key="uda.method",
        finish=_keep_target_bn_statistics,
    ),
    "pretrain": JobKind(
        "pretrain",
        "pre-training",
        pretraining_data,
        pretrain_worker,
        selection=_pretraining_selection,
        progress=("val_accuracy",),
        summary=("val_accuracy", "train_loss"),
        files=(ENCODER_FILE,),
        epochs_key="pretrain.epochs",
        method_key="pretrain.method",
    ),
}


def job_kind(name: str) -> JobKind:
    if name not in JOB_KINDS:
        raise ConfigError(f"unknown job kind {name!r}; valid: {sorted(JOB_KINDS)}")
    return JOB_KINDS[name]


@dataclass
class BuiltJob:
    """A job ready to run: its kind, what the workers get, and each image's role."""

    kind: JobKind
    job: TrainJob
    splits: pd.DataFrame

    @property
    def selection(self) -> tuple[str, str]:
        return self.kind.selection(self.job.config, self.job.data)


def _resolved(path: str | Path | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def build_job(kind: str, config: ProjectConfig, tiles_root: Path, init_model: str | None = None) -> BuiltJob:
    job_type = job_kind(kind)
    data, splits = job_type.build(config, tiles_root)
    job = TrainJob(
        config,
        str(Path(tiles_root).resolve()),
        data,
        _resolved(init_model),
        job_type.progress,
        job_type.selection(config, data),
    )
    return BuiltJob(job_type, job, splits)


def tiles_job(
    config: ProjectConfig,
    tiles_root: Path,
    tiles: LabelledTiles,
    images: list[str],
    init_model: str | Path | None = None,
) -> TrainJob:
    """A supervised job on named tiles (active learning: an ensemble member, a round's model)."""
    if config.auto or config.training.budget is not None:
        raise ConfigError("training.budget / auto settings: active learning needs fixed settings (plan them first)")
    data = SupervisedData(train_images=images, val_images=[], tiles=tiles)
    return TrainJob(
        config, str(Path(tiles_root).resolve()), data, _resolved(init_model), JOB_KINDS["supervised"].progress
    )


def worker_cpus(config: ProjectConfig, concurrent_runs: int = 1) -> int:
    """CPUs per Train worker: training.cpus_per_worker, else the cluster's CPUs shared out."""
    training = config.training
    return training.cpus_per_worker or max(1, ray_backend.cluster_cpus() // (concurrent_runs * training.num_workers))


def run_spec(
    config: ProjectConfig,
    name: str,
    storage_path: str,
    cpus: float,
    selection: tuple[str, str],
    export_dir: Path | None = None,
    files: tuple[str, ...] = (MODEL_FILE,),
    keep: int = 2,
) -> ray_backend.RunSpec:
    training = config.training
    return ray_backend.RunSpec(
        name=name,
        storage_path=str(storage_path),
        num_workers=training.num_workers,
        use_gpu=training.use_gpu,
        cpus_per_worker=cpus,
        max_failures=training.max_failures,
        score=selection,
        keep_checkpoints=keep,
        export_dir=export_dir,
        export_files=files,
    )


def export_history(run_dir: Path, file_name: str, class_names: list[str], title: str) -> pd.DataFrame:
    """The run's per-epoch history (from its last exported file) as history.csv and learning_curve.png."""
    history = pd.DataFrame(read_history(run_dir / f"last_{file_name}"))
    with atomic_path(run_dir / "history.csv") as tmp:
        history.to_csv(tmp, index=False)
    learning_curve(history, class_names, run_dir / "learning_curve.png", title=title)
    return history


def run_job(
    built: BuiltJob, config: ProjectConfig, run_dir: Path, storage_path: str, name: str, address: str | None
) -> TrainSummary:
    """Start (or reach) Ray, run the job as a TorchTrainer, export history and learning curve."""
    training = config.training
    kind = built.kind
    save_splits(built.splits, run_dir)
    save_config(config, run_dir / "config.yaml")
    ray_backend.init_ray(address)
    cpus = worker_cpus(config)
    data = built.job.data
    print(
        f"{kind.title(config)} {name}: {len(data.train_images)} train / {len(data.val_images)} val images, "
        f"{training.num_workers} worker(s) x {cpus} CPU{', GPU' if training.use_gpu else ''}",
        flush=True,
    )
    spec = run_spec(config, name, storage_path, cpus, built.selection, export_dir=run_dir, files=kind.files)
    outcome = ray_backend.fit(kind.loop, built.job, spec)
    first = kind.files[0]
    history = export_history(run_dir, first, config.class_names, name)
    return TrainSummary(run_dir, run_dir / f"best_{first}", outcome.best_metrics, history)


def planned_config(config: ProjectConfig, tiles_root: Path, run_dir: Path) -> ProjectConfig:
    """The config with its `auto` settings planned from the tile set's images; the tiling the plan
    chooses must be the one the tile set was cut with (`microal tile` plans the same)."""
    if not config.auto:
        return config
    from microal.planning.plan import resolve

    tileset = load_tiles(tiles_root)
    resolved = resolve(config, tileset.images, run_dir, progress=False)
    for key in ("target_um_per_px", "tile_size", "margin"):
        planned, cut = getattr(resolved.tiling, key), getattr(tileset.tiling, key)
        if planned != cut:
            raise ConfigError(
                f"tiling.{key}: the plan chooses {planned} but the tile set {tiles_root} was cut with {cut}; "
                "run `microal tile` with this config again"
            )
    return resolved


def run(
    kind: str,
    config: ProjectConfig,
    tiles_root: Path,
    run_dir: Path,
    storage_path: str,
    name: str,
    resume: bool = False,
    address: str | None = None,
    init_model: str | None = None,
) -> TrainSummary:
    """Build and run a job of `kind`; a run name that exists needs `resume` (and vice versa).
    Settings left to `auto` are planned first (supervised training), and the plan is written
    into the run folder."""
    check_run_name(storage_path, name, resume)
    if kind != "supervised" and (config.auto or config.training.budget is not None):
        raise ConfigError(
            f"training.budget / auto settings are planned for microal train; give {job_kind(kind).label} fixed settings"
        )
    config = planned_config(config, tiles_root, run_dir)
    built = build_job(kind, config, tiles_root, init_model)
    summary = run_job(built, config, run_dir, storage_path, name, address)
    if built.kind.finish is not None:
        built.kind.finish(summary, config, tiles_root, name)
    return summary


def train(
    config: ProjectConfig, tiles_root: Path, run_dir: Path, storage_path: str, name: str, **options
) -> TrainSummary:
    """Supervised training; keeps the epoch with the best validation mIoU (options: as `run`)."""
    return run("supervised", config, tiles_root, run_dir, storage_path, name, **options)


def adapt(
    config: ProjectConfig, tiles_root: Path, run_dir: Path, storage_path: str, name: str, **options
) -> TrainSummary:
    """Domain adaptation (uda.method); keeps the best epoch by uda.select_by. An adapted model
    then gets batch-norm statistics of each target domain (uda.target_bn_statistics)."""
    return run("uda", config, tiles_root, run_dir, storage_path, name, **options)


def pretrain(
    config: ProjectConfig, tiles_root: Path, run_dir: Path, storage_path: str, name: str, **options
) -> TrainSummary:
    """Encoder pre-training; writes best_encoder.pt and last_encoder.pt into the run folder."""
    return run("pretrain", config, tiles_root, run_dir, storage_path, name, **options)
