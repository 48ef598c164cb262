"""Ray, and only Ray: the one module that imports ``ray``. It executes what it is given and knows
nothing of configs, models or scores.

- ``fit(loop, job, spec)``: a training loop run once, its best and last checkpoints' files
  exported into a folder. A one-worker run goes to a pooled worker (below); a multi-worker run
  (DDP) is a Ray Train ``TorchTrainer``, surviving a lost Train controller.
- ``run_search(make_trial, distributions, ...)``: Ray Tune with Optuna and ASHA, each trial a Train
  run made by ``make_trial`` (the same trainer builder as ``fit``).
- ``fit_many``: several runs at once (ensemble members).
- ``map_batches``: an operation over batches in pooled workers, each holding a worker object
  that a picklable factory builds once (an ensemble scoring tiles).

Pooled workers are long-lived actors that stay up between the fits and scorings of a session
(an active-learning round and the rounds after it), so a fit does not pay Ray Train's start-up
(a controller, a placement group, fresh worker processes importing torch: 12-15 s on 2 cores).
A pooled run keeps its checkpoints in the same storage a Train run would
(backend/run_store.py), and a worker lost mid-run (its process or its node) is replaced and the
run resumes from its latest checkpoint, up to `max_failures` times.

Local use: ``ray.init()`` starts an embedded cluster; with an address (``auto`` or
``ray://host:10001``) the same code runs on a cluster started with ``ray up``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
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

from microal import console
from microal.backend.run_store import RunStore, StoredRunSession
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
    _route_driver_logs()
    try:
        ray.init(**kwargs)
    except ConnectionError as error:
        raise MicroalError(f"cannot connect to the Ray cluster at {address!r}: {error}") from None
    _route_worker_output()


# Ray's driver-side loggers; their records go to the log file (and the terminal with --verbose).
RAY_LOGGERS = ("ray", "ray.train", "ray.tune", "ray.data", "ray.serve")
WORKER_OUTPUT_HANDLER = "microal_worker_output"


class _LogFileHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            console.log_lines([f"[{record.name} {record.levelname}] {record.getMessage()}"])
        except Exception:  # logging must never take a run down
            pass


def _route_driver_logs() -> None:
    """Unless verbose: Ray's own log records to the log file instead of the terminal."""
    if console.verbose():
        return
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        if not any(isinstance(h, _LogFileHandler) for h in logger.handlers):
            logger.addHandler(_LogFileHandler())
        logger.propagate = False


def _route_worker_output() -> None:
    """Replace Ray's printer of worker output (lines prefixed with the worker's name and pid)
    with microal's: lines the loops say() to the terminal, every line to the log file."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # a Ray without it: its own printer stays
        return
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.remove_handler(WORKER_OUTPUT_HANDLER)
    dispatcher.add_handler(WORKER_OUTPUT_HANDLER, _on_worker_output)


def _on_worker_output(data: dict) -> None:
    source = data.get("actor_name") or data.get("task_name") or "worker"
    prefix = f"({source} pid={data.get('pid')}, ip={data.get('ip')})"
    lines = [str(line) for line in data.get("lines", [])]
    if data.get("pid") == "autoscaler":  # its status table every 5 s: keep only its events, as Ray does
        lines = [line for line in lines if ":event_summary:" in line]
    console.log_lines([f"{prefix} {line}" for line in lines])
    # A pooled worker runs one fit at a time; search trials and Ray Train workers may run side by
    # side, so their lines say which process they come from.
    tag = "" if source == "PooledWorker" else f"[{source} {data.get('pid')}] "
    for line in lines:
        if line.startswith(console.MARK):
            console.show(tag + line[len(console.MARK) :])
        elif console.verbose():
            console.show(f"{prefix} {line}", error=bool(data.get("is_err")))


def shutdown_ray() -> None:
    _POOL.forget()
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
    loop, job = ray.cloudpickle.loads(config["loop_and_job"])
    loop(job, RayWorkerSession(config["cpus"]))


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
    seconds: float = float("nan")  # the fit's wall time on the driver
    loop_seconds: float = float("nan")  # time inside the training loop (its last attempt)

    @property
    def ray_seconds(self) -> float:
        """What Ray itself cost this fit: wall time outside the loop."""
        return self.seconds - self.loop_seconds


def _build_trainer(loop: Callable, job: Any, spec: RunSpec, callbacks: tuple = ()) -> TorchTrainer:
    """The one TorchTrainer builder, for fits and search trials: `loop(job, session)` runs on
    every worker."""
    attribute, order = spec.score
    return TorchTrainer(
        _loop_per_worker,
        # Pickled here, unpickled on the workers only: Ray Train's controller passes the bytes on
        # and never imports the loop's modules (smp, timm, torchvision: seconds of CPU a run).
        train_loop_config={"loop_and_job": ray.cloudpickle.dumps((loop, job)), "cpus": spec.cpus_per_worker},
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
    """Run `loop(job, session)` once; copy spec.export_files of the best and the last checkpoint
    into spec.export_dir as best_<file> and last_<file>. One worker: a pooled worker; several:
    Ray Train workers (DDP)."""
    started = time.perf_counter()
    if spec.num_workers == 1:
        outcome = _fit_pooled(loop, job, spec)
    else:
        outcome = _fit_ray_train(loop, job, spec)
    outcome.seconds = time.perf_counter() - started
    return outcome


def _fit_ray_train(loop: Callable, job: Any, spec: RunSpec) -> FitOutcome:
    _POOL.release_idle()  # Ray Train places its own workers: give it the CPUs idle pooled workers hold
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


def _fit_pooled(loop: Callable, job: Any, spec: RunSpec) -> FitOutcome:
    """The run on one pooled worker; a lost worker is replaced and the run resumes from its
    latest checkpoint (spec.max_failures times). An error the loop raises is not retried: it
    would happen again."""
    shape = _Shape(spec.cpus_per_worker, 1 if spec.use_gpu else 0)
    failures = 0
    while True:
        worker = _POOL.acquire(shape)
        try:
            result = ray.get(worker.fit.remote(loop, job, spec))
        except ray.exceptions.RayActorError as error:  # its process or its node was lost
            _POOL.discard(worker)
            failures += 1
            cause = str(error).splitlines()[0]
            if failures > spec.max_failures:
                raise MicroalError(
                    f"training {spec.name!r}: its worker was lost ({cause}); "
                    f"training.max_failures = {spec.max_failures} restarts used up"
                ) from None
            print(
                f"training {spec.name!r}: its worker was lost ({cause}); resuming from the run's last "
                f"checkpoint on a new worker ({failures} of {spec.max_failures})",
                flush=True,
            )
            continue
        except ray.exceptions.RayTaskError as error:
            _POOL.release(worker, shape)
            cause = error.cause if error.cause is not None else error
            raise MicroalError(f"training {spec.name!r} failed: {cause}") from None
        except BaseException:  # e.g. Ctrl-C: the loop must not go on training in the background
            _POOL.discard(worker)
            raise
        _POOL.release(worker, shape)
        break
    store = RunStore(spec.storage_path, spec.name, spec.score, spec.keep_checkpoints)
    best, last = store.best(), store.latest()
    if last is None:
        raise MicroalError("training finished without a checkpoint (no epoch completed)")
    if spec.export_dir is not None:
        spec.export_dir.mkdir(parents=True, exist_ok=True)
        store.export(best, spec.export_files, spec.export_dir, "best")
        store.export(last, spec.export_files, spec.export_dir, "last")
    return FitOutcome(dict(best.metrics), result["last_metrics"], loop_seconds=result["loop_seconds"])


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


class _TrialSession(StoredRunSession):
    """A one-worker trial trains in the trial's own process: checkpoints into the run's store
    (where a Train run's would be), metrics to Tune."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        super().report(metrics, checkpoint_dir)
        ray.tune.report(dict(metrics))


def trial_resources(num_workers: int, cpus_per_worker: float, use_gpu: bool) -> dict:
    """What a trial holds: a one-worker trial trains itself (the worker's CPUs and GPU); a
    multi-worker trial only starts a Train run whose workers hold the resources."""
    if num_workers == 1:
        return {"cpu": cpus_per_worker, "gpu": 1 if use_gpu else 0}
    return {"cpu": TRIAL_CPU}


def _trial(params: dict, make_trial: Callable) -> None:
    """One trial: the run `make_trial` builds for the sampled settings, reporting to Tune. One
    worker trains here, without a Train run inside the trial (its start-up cost more than a
    short trial's epochs); several are a Train run."""
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray.tune.get_context().get_trial_id()
    loop, job, spec = make_trial(params, trial_id)
    if spec.num_workers == 1:
        store = RunStore(spec.storage_path, spec.name, spec.score, spec.keep_checkpoints)
        session = _TrialSession(store, spec.cpus_per_worker, torch.device("cuda" if spec.use_gpu else "cpu"))
        loop(job, session)
        latest = store.latest()
        if not session.last_metrics and latest is not None:
            # Restored after its last epoch (stopped before Tune recorded the end): nothing was
            # left to train, and Tune still needs the trial's final result.
            ray.tune.report(dict(latest.metrics))
        return
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
    resources: dict | None = None,
) -> list[TrialRecord]:
    """Optuna (TPE or random) samples `distributions` (optuna distributions by parameter name),
    ASHA stops poor trials early; `make_trial(params, trial_id)` gives each trial's run, and
    `resources` what a trial holds (trial_resources). Name the runs it makes after the trial id,
    so a restored or retried trial finds its checkpoints."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    _POOL.release_idle()  # each trial is a Ray Train run placing its own workers
    trainable = tune.with_resources(
        tune.with_parameters(_trial, make_trial=make_trial), resources or {"cpu": TRIAL_CPU}
    )
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
                # The loops' epoch: a restored trial resumes its epochs where Tune's own iteration
                # count would restart from 1.
                time_attr="epoch",
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
                search_alg=algorithm,
                scheduler=trial_scheduler,
                num_samples=trials,
                max_concurrent_trials=concurrency,
                # A trial's process is kept for the next trial: a new one costs a process start and
                # the imports of torch and the loops (about 11 s on 2 cores), often more than a
                # short trial's epochs.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(storage_path),
                failure_config=tune.FailureConfig(max_failures=1),
                verbose=2 if console.verbose() else 0,  # quiet: trials' epoch lines, then microal's results table
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


# ---- pooled workers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    """What a pooled worker holds: its CPUs (its torch threads) and GPUs."""

    cpus: float
    gpus: int

    def fits(self, available: dict) -> bool:
        return available.get("CPU", 0) >= self.cpus and available.get("GPU", 0) >= self.gpus


@ray.remote
class PooledWorker:
    """A long-lived worker process: runs one-worker training loops and batch operations, so
    neither pays a process start (and torch's import) each time."""

    def __init__(self, cpus: float):
        logging.getLogger("ray.train").setLevel(logging.WARNING)
        self._threads = max(1, int(cpus))
        self._built: tuple[Any, Any] | None = None  # (factory, the worker it built)

    def pid(self) -> int:
        return os.getpid()

    def fit(self, loop: Callable, job: Any, spec: RunSpec) -> dict:
        store = RunStore(spec.storage_path, spec.name, spec.score, spec.keep_checkpoints)
        device = torch.device("cuda" if spec.use_gpu else "cpu")
        session = StoredRunSession(store, spec.cpus_per_worker, device)
        started = time.perf_counter()
        loop(job, session)
        return {"loop_seconds": time.perf_counter() - started, "last_metrics": session.last_metrics}

    def call(self, make_worker: Callable[[], Any], operation: Callable, batch: list):
        # The worker object a factory builds (an ensemble's members) is kept for the next batch
        # and the next call with an equal factory; another factory replaces it.
        if self._built is None or self._built[0] != make_worker:
            self._built = None  # free the old worker before building the new one
            self._built = (make_worker, make_worker())
        # After the build (a factory may set its own count): a worker lent from a larger shape
        # runs the batch on every CPU it holds.
        torch.set_num_threads(self._threads)
        return operation(self._built[1], batch)


class _WorkerPool:
    """Idle pooled workers by shape, reused by the next fit or map_batches of the session. Idle
    workers of another shape are stopped when the cluster has no room for a new one."""

    def __init__(self):
        self.lock = threading.Lock()
        self.idle: dict[_Shape, list] = {}

    def acquire(self, shape: _Shape):
        with self.lock:
            if self.idle.get(shape):
                return self.idle[shape].pop()
            if not shape.fits(ray.available_resources()):
                for other in [s for s in self.idle if s != shape]:
                    for handle in self.idle.pop(other):
                        ray.kill(handle)
        return self._start(shape)

    @staticmethod
    def _start(shape: _Shape):
        # Waits for room where the cluster has none now (busy workers finish, or nodes join).
        return PooledWorker.options(num_cpus=shape.cpus, num_gpus=shape.gpus).remote(shape.cpus)

    def acquire_for_batches(self, shape: _Shape, count: int) -> list[tuple[Any, _Shape]]:
        """Workers worth up to `count` workers of `shape` for a batch operation, each with the
        shape it holds: idle ones of this shape, new ones while the cluster has room, then idle
        workers of a larger shape with the same GPUs (a round's fit worker scores its tiles
        with all its threads instead of being stopped for two smaller workers, and restarted
        for the next fit). Only where none of these exists are other shapes stopped for one new
        worker."""
        with self.lock:
            wanted = count * shape.cpus
            taken: list[tuple[Any, _Shape]] = []
            held = 0.0
            while held < wanted and self.idle.get(shape):
                taken.append((self.idle[shape].pop(), shape))
                held += shape.cpus
            room = dict(ray.available_resources())
            while held < wanted and shape.fits(room):
                taken.append((self._start(shape), shape))
                held += shape.cpus
                room["CPU"] = room.get("CPU", 0) - shape.cpus
                room["GPU"] = room.get("GPU", 0) - shape.gpus
            larger = [s for s in self.idle if s != shape and s.gpus == shape.gpus and s.cpus >= shape.cpus]
            for other in sorted(larger, key=lambda s: s.cpus):
                while held < wanted and self.idle[other]:
                    taken.append((self.idle[other].pop(), other))
                    held += other.cpus
            if taken:
                return taken
        return [(self.acquire(shape), shape)]

    def release(self, handle, shape: _Shape) -> None:
        with self.lock:
            self.idle.setdefault(shape, []).append(handle)

    def discard(self, handle) -> None:
        try:
            ray.kill(handle)
        except Exception:  # already gone with its node
            pass

    def release_idle(self) -> None:
        with self.lock:
            for handles in self.idle.values():
                for handle in handles:
                    ray.kill(handle)
            self.idle.clear()

    def forget(self) -> None:
        """Before Ray shuts down: the handles die with the cluster."""
        with self.lock:
            self.idle.clear()

    def idle_count(self) -> int:
        with self.lock:
            return sum(len(h) for h in self.idle.values())


_POOL = _WorkerPool()


def idle_workers() -> int:
    """Pooled workers waiting for the next fit or batch operation."""
    return _POOL.idle_count()


def release_workers() -> None:
    """Stop the idle pooled workers (their CPUs and memory go back to the cluster)."""
    _POOL.release_idle()


def map_batches(
    make_worker: Callable[[], Any],
    operation: Callable[[Any, list], Any],
    items: list,
    batch_size: int = 64,
    actors: int | None = None,
    threads_per_actor: int = 1,
    use_gpu: bool = False,
) -> list:
    """`operation(worker, batch)` over batches of `items` in pooled workers (an ActorPool),
    results in order. Each worker builds its worker object once with `make_worker()` (and keeps
    it for later calls with an equal factory); only the batches travel. Default actors: one per
    GPU, or per `threads_per_actor` CPUs. Where the cluster has no room for them, idle larger
    workers (a fit's) stand in, each running with all its CPUs' threads."""
    from ray.util import ActorPool

    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    if not batches:
        return []
    if actors is None:
        actors = cluster_gpus() if use_gpu else cluster_cpus() // threads_per_actor
    actors = max(1, min(actors, len(batches)))
    workers = _POOL.acquire_for_batches(_Shape(threads_per_actor, 1 if use_gpu else 0), actors)
    handles = [handle for handle, _ in workers]
    factory = ray.put(make_worker)
    try:
        results = list(ActorPool(handles).map(lambda a, batch: a.call.remote(factory, operation, batch), batches))
    except BaseException:
        for handle in handles:
            _POOL.discard(handle)
        raise
    for handle, shape in workers:
        _POOL.release(handle, shape)
    return results
