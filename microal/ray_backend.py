"""Everything that touches Ray lives here (the one module that imports ``ray``).

Local use: ``ray.init()`` starts an embedded cluster; with an address (``auto`` or
``ray://host:10001``) the same code runs on a cluster started with ``ray up``.
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from microal.errors import MicroalError
from microal.training import MODEL_FILE, TrainJob

# Ray Train checks worker health every 2 s by default; short jobs spend most of their
# start-up waiting on it. 0.2 s costs nothing measurable and saves seconds per run.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# Ray Train both tees and logs a worker's print(); one copy of each progress line is enough.
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (address) or start an embedded one; a no-op when already connected."""
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


class RayWorkerSession:
    """The WorkerSession the training loop sees inside a Ray Train worker."""

    def __init__(self):
        # Ray Train logs every report and checkpoint at INFO; the loop prints its own epoch line.
        logging.getLogger("ray.train").setLevel(logging.WARNING)
        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)

    def prepare_loader(self, loader):
        return ray.train.torch.prepare_data_loader(loader)

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
    config["loop"](config["job"], RayWorkerSession())


@dataclass
class FitOutcome:
    best_metrics: dict
    last_metrics: dict


def _copy_files(checkpoint: ray.train.Checkpoint, names: list[str], dest: Path, prefix: str) -> None:
    with checkpoint.as_directory() as directory:
        for name in names:
            shutil.copyfile(Path(directory) / name, dest / f"{prefix}_{name}")


def fit(
    loop: Callable[[TrainJob, object], None],
    job: TrainJob,
    storage_path: str,
    name: str,
    run_dir: Path,
    num_workers: int,
    use_gpu: bool,
    cpus_per_worker: int,
    max_failures: int = 0,
    score: tuple[str, str] = ("val_miou", "max"),
    files: tuple[str, ...] = (MODEL_FILE,),
) -> FitOutcome:
    """Run `loop` on Ray Train workers; copy `files` of the best and the last checkpoint into
    run_dir as best_<file> and last_<file>.

    A run with the same storage_path/name resumes from its latest checkpoint (Ray Train
    finds the run's snapshot there); the commands guard against doing so by accident.
    """
    job.cpus_per_worker = cpus_per_worker
    attribute, order = score
    trainer = TorchTrainer(
        _loop_per_worker,
        train_loop_config={"job": job, "loop": loop},
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=attribute, checkpoint_score_order=order
            ),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    result = _fit_surviving_controller_loss(trainer, name)
    if result.checkpoint is None:
        raise MicroalError("training finished without a checkpoint (no epoch completed)")
    run_dir.mkdir(parents=True, exist_ok=True)
    best_checkpoint, best_metrics = _best(result, attribute, order)
    _copy_files(best_checkpoint, list(files), run_dir, "best")
    _copy_files(result.checkpoint, list(files), run_dir, "last")
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
                raise MicroalError(f"training {name!r}: Ray Train's controller died {restart + 1} times; "
                                   f"the last time: {str(error).splitlines()[0]}") from None
            print(f"training {name!r}: Ray Train's controller died ({str(error).splitlines()[0]}); "
                  f"resuming from the run's last checkpoint ({restart + 1} of {CONTROLLER_RESTARTS})", flush=True)


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


# ---- hyperparameter search (Ray Tune + Optuna) ---------------------------------------------

TRIAL_CPU = 0.01  # the Tune function only starts a TorchTrainer; its workers hold the real CPUs


@dataclass
class TrialRecord:
    trial_id: str
    params: dict
    history: "object"  # pandas DataFrame of the reported epochs
    error: str | None


def _trial(params: dict, context: dict) -> None:
    """One trial: the job with the sampled settings, as a TorchTrainer whose reports reach Tune."""
    import dataclasses

    from ray.tune.integration.ray_train import TuneReportCallback

    from microal.config import apply_overrides

    trial_id = ray.tune.get_context().get_trial_id()
    config = apply_overrides(context["base_config"], params, source=f"trial {trial_id}")
    job = dataclasses.replace(context["job"], config=config.model_dump(mode="json"))
    job.cpus_per_worker = max(1, int(context["cpus_per_worker"]))
    training = config.training
    attribute, order = context["score"]
    trainer = TorchTrainer(
        _loop_per_worker,
        train_loop_config={"job": job, "loop": context["loop"]},
        scaling_config=ScalingConfig(
            num_workers=training.num_workers, use_gpu=training.use_gpu,
            resources_per_worker={"CPU": context["cpus_per_worker"]},
        ),
        run_config=RunConfig(
            # Stable per trial: a restored or retried trial finds its own checkpoints.
            name=f"{context['name']}-{trial_id}",
            storage_path=context["storage_path"],
            callbacks=[TuneReportCallback()],
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=attribute,
                                               checkpoint_score_order=order),
            failure_config=FailureConfig(max_failures=training.max_failures),
        ),
    )
    trainer.fit()


def _trial_id(result) -> str:
    """Tune's id of a trial ("5c1d0_00000"), from its metrics or, for a trial that never
    reported, from its folder name."""
    import re

    reported = (result.metrics or {}).get("trial_id")
    if reported:
        return str(reported)
    match = re.search(r"([0-9a-f]{5}_\d{5})", os.path.basename(result.path or ""))
    return match.group(1) if match else "?"


def run_search(
    space,
    base_config,
    loop: Callable,
    job: TrainJob,
    storage_path: str,
    name: str,
    trials: int,
    concurrency: int,
    max_epochs: int,
    score: tuple[str, str],
    search: str = "tpe",
    scheduler: str = "asha",
    grace_period: int = 2,
    seed: int = 0,
    resume: bool = False,
    reduction_factor: int = 3,
) -> list[TrialRecord]:
    """Optuna (TPE or random) proposes, ASHA stops poor trials early; every trial is a Train job."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from microal.tune_space import to_optuna

    num_workers = base_config.training.num_workers
    cpus = (cluster_cpus() - TRIAL_CPU * concurrency) / (concurrency * num_workers)
    if cpus < 0.5:
        raise MicroalError(
            f"--concurrency {concurrency} x {num_workers} worker(s) does not fit {cluster_cpus()} CPUs; lower it"
        )
    context = {
        "base_config": base_config.model_dump(mode="json"), "loop": loop, "job": job, "name": name,
        "storage_path": str(storage_path), "cpus_per_worker": base_config.training.cpus_per_worker or int(cpus * 100) / 100,
        "score": score,
    }
    trainable = tune.with_resources(tune.with_parameters(_trial, context=context), {"cpu": TRIAL_CPU})
    experiment = f"{str(storage_path).rstrip('/')}/{name}"
    if resume:
        if not tune.Tuner.can_restore(experiment):
            raise MicroalError(f"--resume: no search {name!r} to restore in {storage_path}")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        # TPE's first trials are random (optuna's default is 10, the whole of a small search):
        # a third of the budget, so the model steers the rest.
        sampler = (optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, trials // 3)))
                   if search == "tpe" else optuna.samplers.RandomSampler(seed=seed))
        metric, mode = space.metric, space.mode
        algorithm = OptunaSearch(space=to_optuna(space), metric=metric, mode=mode, sampler=sampler)
        trial_scheduler = (
            ASHAScheduler(time_attr="training_iteration", metric=metric, mode=mode, max_t=max_epochs,
                          grace_period=grace_period, reduction_factor=reduction_factor)
            if scheduler == "asha" else FIFOScheduler()
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=algorithm, scheduler=trial_scheduler, num_samples=trials,
                                        max_concurrent_trials=concurrency),
            run_config=tune.RunConfig(name=name, storage_path=str(storage_path),
                                      failure_config=tune.FailureConfig(max_failures=1)),
        )
    grid = tuner.fit()
    records = []
    for result in grid:
        records.append(TrialRecord(
            trial_id=_trial_id(result),
            params=dict(result.config or {}),
            history=result.metrics_dataframe,
            error=None if result.error is None else str(result.error).splitlines()[0],
        ))
    return records


# ---- several Train jobs at once (ensemble members) ------------------------------------------


def fit_many(runs: list[tuple], storage_path: str, training, quiet: bool = False) -> list[FitOutcome]:
    """Run several independent Train jobs concurrently, as many as the cluster has room for.

    runs: (loop, job, name, run_dir). Each job's workers share the cluster's CPUs (or take a GPU
    each); on a GPU cluster every member trains on its own GPU at the same time.
    """
    from concurrent.futures import ThreadPoolExecutor

    total = cluster_cpus()
    per_run = training.num_workers
    concurrency = max(1, min(len(runs), total // per_run)) if not training.use_gpu else len(runs)
    cpus = training.cpus_per_worker or max(1, total // (concurrency * per_run))

    def one(run):
        loop, job, name, run_dir = run
        return fit(loop, job, storage_path, name, run_dir, per_run, training.use_gpu, cpus, training.max_failures)

    with ThreadPoolExecutor(max_workers=concurrency) as executor:
        return list(executor.map(one, runs))


# ---- scoring a pool with an ensemble in actors -----------------------------------------------


@ray.remote
class _ScoringActor:
    """Holds the ensemble's members; reads tile windows from the (shared) tile folder itself."""

    def __init__(self, member_files: list[str], tiles_root: str, threads: int, use_gpu: bool):
        from microal.scoring import TileScorer

        device = "cuda" if use_gpu else "cpu"
        self.scorer = TileScorer(member_files, tiles_root, device=device, threads=threads)

    def call(self, method: str, *args, **kwargs):
        return getattr(self.scorer, method)(*args, **kwargs)


def map_tiles(
    member_files: list[str],
    tiles_root: str,
    tile_ids: list[str],
    method: str,
    kwargs: dict | None = None,
    batch_size: int = 64,
    actors: int | None = None,
    threads_per_actor: int = 1,
    use_gpu: bool = False,
) -> list:
    """Apply a TileScorer method to batches of tiles in long-lived actors (an ActorPool), in order.

    Each actor loads the members once; only tile ids travel, the actors read the windows.
    """
    from ray.util import ActorPool

    kwargs = kwargs or {}
    batches = [tile_ids[i : i + batch_size] for i in range(0, len(tile_ids), batch_size)]
    if not batches:
        return []
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("GPU" if use_gpu else "CPU", 1) // (1 if use_gpu else threads_per_actor)))
    actors = max(1, min(actors, len(batches)))
    options = {"num_gpus": 1, "num_cpus": threads_per_actor} if use_gpu else {"num_cpus": threads_per_actor}
    handles = [
        _ScoringActor.options(**options).remote(list(map(str, member_files)), tiles_root, threads_per_actor, use_gpu)
        for _ in range(actors)
    ]
    pool = ActorPool(handles)
    try:
        return list(pool.map(lambda actor, batch: actor.call.remote(method, batch, **kwargs), batches))
    finally:
        for handle in handles:
            ray.kill(handle)
