"""Ray, and only Ray: the one module that imports ``ray``. It executes what it is given and knows
nothing of configs, models or scores.

- ``fit(loop, job, spec)``: a training loop on Ray Train workers (a ``TorchTrainer``), surviving a
  lost Train controller; the best and last checkpoints' files are exported into a folder.
- ``run_search(make_trial, distributions, ...)``: Ray Tune with Optuna and ASHA, each trial a Train
  run made by ``make_trial`` (the same trainer builder as ``fit``).
- ``fit_many``: several Train runs at once (ensemble members).
- ``map_batches``: an operation over batches in long-lived actors, each holding a worker object
  that a picklable factory builds once (an ensemble scoring tiles).

Local use: ``ray.init()`` starts an embedded cluster; with an address (``auto`` or
``ray://host:10001``) the same code runs on a cluster started with ``ray up``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from microal.errors import MicroalError

ENVIRONMENT_DEFAULTS = {
    # Ray Train checks worker health every 2 s by default; short jobs spend most of their
    # start-up waiting on it. 0.2 s costs nothing measurable and saves seconds per run.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # Ray Train both tees and logs a worker's print(); one copy of each progress line is enough.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}


def set_environment_defaults() -> None:
    """Ray settings microal runs with, unless the environment says otherwise. Processes a local
    cluster starts inherit them, so this must run before the cluster starts (init_ray does)."""
    for key, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(key, value)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (address) or start an embedded one; a no-op when already connected."""
    set_environment_defaults()
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


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


# ---- training runs (Ray Train) ---------------------------------------------------------------


class RayWorkerSession:
    """The WorkerSession a training loop sees inside a Ray Train worker."""

    def __init__(self, cpus: float):
        # Ray Train logs every report and checkpoint at INFO; the loop prints its own epoch line.
        logging.getLogger("ray.train").setLevel(logging.WARNING)
        self.cpus = max(1, int(cpus))  # what the worker holds: the loop's torch threads
        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)

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


def _loop_per_worker(config: dict) -> None:
    config["loop"](config["job"], RayWorkerSession(config["cpus"]))


@dataclass(frozen=True)
class RunSpec:
    """Where and how one Train run executes. A run with the same storage_path/name resumes from
    its latest checkpoint (Ray Train finds the run's snapshot there)."""

    name: str
    storage_path: str
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1
    max_failures: int = 0
    score: tuple[str, str] = ("val_miou", "max")  # the metric (and mode) that ranks checkpoints
    keep_checkpoints: int = 2
    export_dir: Path | None = None  # fit copies export_files of the best and last checkpoint here
    export_files: tuple[str, ...] = ()


@dataclass
class FitOutcome:
    best_metrics: dict
    last_metrics: dict


def _build_trainer(loop: Callable, job: Any, spec: RunSpec, callbacks: tuple = ()) -> TorchTrainer:
    """The one TorchTrainer builder, for fits and search trials: `loop(job, session)` runs on
    every worker."""
    attribute, order = spec.score
    return TorchTrainer(
        _loop_per_worker,
        train_loop_config={"job": job, "loop": loop, "cpus": spec.cpus_per_worker},
        scaling_config=ScalingConfig(
            num_workers=spec.num_workers, use_gpu=spec.use_gpu, resources_per_worker={"CPU": spec.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=spec.name,
            storage_path=str(spec.storage_path),
            callbacks=list(callbacks),
            checkpoint_config=CheckpointConfig(
                num_to_keep=spec.keep_checkpoints, checkpoint_score_attribute=attribute, checkpoint_score_order=order
            ),
            failure_config=FailureConfig(max_failures=spec.max_failures),
        ),
    )


def _copy_files(checkpoint: ray.train.Checkpoint, names: tuple[str, ...], dest: Path, prefix: str) -> None:
    with checkpoint.as_directory() as directory:
        for name in names:
            shutil.copyfile(Path(directory) / name, dest / f"{prefix}_{name}")


def fit(loop: Callable, job: Any, spec: RunSpec) -> FitOutcome:
    """Run `loop(job, session)` on Ray Train workers; copy spec.export_files of the best and the
    last checkpoint into spec.export_dir as best_<file> and last_<file>."""
    trainer = _build_trainer(loop, job, spec)
    result = _fit_surviving_controller_loss(trainer, spec.name)
    if result.checkpoint is None:
        raise MicroalError("training finished without a checkpoint (no epoch completed)")
    best_checkpoint, best_metrics = _best(result, *spec.score)
    if spec.export_dir is not None:
        spec.export_dir.mkdir(parents=True, exist_ok=True)
        _copy_files(best_checkpoint, spec.export_files, spec.export_dir, "best")
        _copy_files(result.checkpoint, spec.export_files, spec.export_dir, "last")
    return FitOutcome(best_metrics, dict(result.metrics or {}))


# Ray Train's controller is itself an actor; when its process dies (a crash inside Ray, the
# node running it lost), the run is not failed: fit again and it resumes from its last checkpoint.
CONTROLLER_RESTARTS = 2


def _fit_surviving_controller_loss(trainer: TorchTrainer, name: str):
    for restart in range(CONTROLLER_RESTARTS + 1):
        try:
            return trainer.fit()
        except ray.train.TrainingFailedError as error:
            raise MicroalError(f"training failed: {error}") from None
        except ray.exceptions.ActorDiedError as error:
            if restart == CONTROLLER_RESTARTS:
                raise MicroalError(
                    f"training {name!r}: Ray Train's controller died {restart + 1} times; "
                    f"the last time: {str(error).splitlines()[0]}"
                ) from None
            print(
                f"training {name!r}: Ray Train's controller died ({str(error).splitlines()[0]}); "
                f"resuming from the run's last checkpoint ({restart + 1} of {CONTROLLER_RESTARTS})",
                flush=True,
            )


def _best(result, attribute: str, order: str) -> tuple[ray.train.Checkpoint, dict]:
    def finite(metrics):
        value = metrics.get(attribute)
        return value is not None and value == value

    candidates = [(c, m) for c, m in (result.best_checkpoints or []) if finite(m)]
    if not candidates:  # nothing to rank by (e.g. no validation set): the last epoch is the model
        return result.checkpoint, dict(result.metrics or {})
    pick = max if order == "max" else min
    checkpoint, metrics = pick(candidates, key=lambda cm: cm[1][attribute])
    return checkpoint, dict(metrics)


def fit_many(runs: list[tuple[Callable, Any, RunSpec]], concurrency: int) -> list[FitOutcome]:
    """Run several independent Train runs, `concurrency` at a time (on a GPU cluster, every
    member on its own GPU at the same time)."""
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as executor:
        return list(executor.map(lambda run: fit(*run), runs))


# ---- hyperparameter search (Ray Tune + Optuna) ---------------------------------------------

TRIAL_CPU = 0.01  # the Tune function only starts a TorchTrainer; its workers hold the real CPUs


@dataclass
class TrialRecord:
    trial_id: str
    params: dict
    history: Any  # pandas DataFrame of the reported epochs
    error: str | None


def _trial(params: dict, make_trial: Callable) -> None:
    """One trial: the Train run `make_trial` builds for the sampled settings, reporting to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray.tune.get_context().get_trial_id()
    loop, job, spec = make_trial(params, trial_id)
    _build_trainer(loop, job, spec, callbacks=(TuneReportCallback(),)).fit()


def _trial_id(result) -> str:
    """Tune's id of a trial ("5c1d0_00000"), from its metrics or, for a trial that never
    reported, from its folder name."""
    reported = (result.metrics or {}).get("trial_id")
    if reported:
        return str(reported)
    match = re.search(r"([0-9a-f]{5}_\d{5})", os.path.basename(result.path or ""))
    return match.group(1) if match else "?"


def run_search(
    make_trial: Callable[[dict, str], tuple[Callable, Any, RunSpec]],
    distributions: dict,
    metric: str,
    mode: str,
    storage_path: str,
    name: str,
    trials: int,
    concurrency: int,
    max_epochs: int,
    search: str = "tpe",
    scheduler: str = "asha",
    grace_period: int = 2,
    seed: int = 0,
    resume: bool = False,
    reduction_factor: int = 3,
) -> list[TrialRecord]:
    """Optuna (TPE or random) samples `distributions` (optuna distributions by parameter name),
    ASHA stops poor trials early; `make_trial(params, trial_id)` gives each trial's Train run.
    Name the runs it makes after the trial id, so a restored or retried trial finds its checkpoints."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    trainable = tune.with_resources(tune.with_parameters(_trial, make_trial=make_trial), {"cpu": TRIAL_CPU})
    experiment = f"{str(storage_path).rstrip('/')}/{name}"
    if resume:
        if not tune.Tuner.can_restore(experiment):
            raise MicroalError(f"--resume: no search {name!r} to restore in {storage_path}")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        # TPE's first trials are random (optuna's default is 10, the whole of a small search):
        # a third of the budget, so the model steers the rest.
        sampler = (
            optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, trials // 3)))
            if search == "tpe"
            else optuna.samplers.RandomSampler(seed=seed)
        )
        algorithm = OptunaSearch(space=distributions, metric=metric, mode=mode, sampler=sampler)
        trial_scheduler = (
            ASHAScheduler(
                time_attr="training_iteration",
                metric=metric,
                mode=mode,
                max_t=max_epochs,
                grace_period=grace_period,
                reduction_factor=reduction_factor,
            )
            if scheduler == "asha"
            else FIFOScheduler()
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=algorithm, scheduler=trial_scheduler, num_samples=trials, max_concurrent_trials=concurrency
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=str(storage_path), failure_config=tune.FailureConfig(max_failures=1)
            ),
        )
    grid = tuner.fit()
    return [
        TrialRecord(
            trial_id=_trial_id(result),
            params=dict(result.config or {}),
            history=result.metrics_dataframe,
            error=None if result.error is None else str(result.error).splitlines()[0],
        )
        for result in grid
    ]


# ---- an operation over batches in long-lived actors --------------------------------------------


@ray.remote
class _BatchWorker:
    """Holds one worker object (built once by a picklable factory) and applies operations to it."""

    def __init__(self, make_worker: Callable[[], Any]):
        self.worker = make_worker()

    def call(self, operation: Callable, batch: list):
        return operation(self.worker, batch)


def map_batches(
    make_worker: Callable[[], Any],
    operation: Callable[[Any, list], Any],
    items: list,
    batch_size: int = 64,
    actors: int | None = None,
    threads_per_actor: int = 1,
    use_gpu: bool = False,
) -> list:
    """`operation(worker, batch)` over batches of `items` in long-lived actors (an ActorPool),
    results in order. Each actor builds its worker once with `make_worker()`; only the batches
    travel. Default actors: one per GPU, or per `threads_per_actor` CPUs."""
    from ray.util import ActorPool

    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    if not batches:
        return []
    if actors is None:
        actors = cluster_gpus() if use_gpu else cluster_cpus() // threads_per_actor
    actors = max(1, min(actors, len(batches)))
    options = {"num_gpus": 1, "num_cpus": threads_per_actor} if use_gpu else {"num_cpus": threads_per_actor}
    handles = [_BatchWorker.options(**options).remote(make_worker) for _ in range(actors)]
    pool = ActorPool(handles)
    try:
        return list(pool.map(lambda actor, batch: actor.call.remote(operation, batch), batches))
    finally:
        for handle in handles:
            ray.kill(handle)
