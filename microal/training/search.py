"""`microal tune`: a hyperparameter search over a space file, each trial a training run (Ray Tune).

Writes into <workdir>/tune/<name>/: results.csv (one row per trial: settings, best metric,
epochs run, status), best_config.yaml (a whole project config `microal train` accepts as it
is), trials.png (the metric against epoch for every trial; early-stopped ones end early).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from microal.backend import ray as ray_backend
from microal.config import ProjectConfig, apply_overrides, save_config
from microal.errors import ConfigError, MicroalError
from microal.files import atomic_path
from microal.plots import search_curves
from microal.training.jobs import build_job, run_spec
from microal.training.payloads import TrainJob
from microal.training.search_space import SearchSpace, to_optuna

RESULTS_FILE = "results.csv"
BEST_CONFIG_FILE = "best_config.yaml"


@dataclass(frozen=True)
class TrialRuns:
    """Makes each trial's Train run: the job with the sampled settings, under a name stable per
    trial (`<search>-<trial id>`) so a restored or retried trial finds its own checkpoints.
    Pickled to the trials as it is."""

    loop: Callable
    job: TrainJob
    search_name: str
    storage_path: str
    cpus_per_worker: float
    score: tuple[str, str]

    def __call__(self, params: dict, trial_id: str):
        config = apply_overrides(self.job.config, params, source=f"trial {trial_id}")
        spec = run_spec(
            config, f"{self.search_name}-{trial_id}", self.storage_path, self.cpus_per_worker, self.score, keep=1
        )
        return self.loop, replace(self.job, config=config), spec


def trial_cpus(config: ProjectConfig, concurrency: int) -> float:
    """CPUs per Train worker when `concurrency` trials share the cluster."""
    num_workers = config.training.num_workers
    total = ray_backend.cluster_cpus()
    # A multi-worker trial's own process only starts the Train run: it holds a sliver of a CPU.
    starter = ray_backend.TRIAL_CPU * concurrency if num_workers > 1 else 0
    cpus = (total - starter) / (concurrency * num_workers)
    if cpus < 0.5:
        raise MicroalError(f"--concurrency {concurrency} x {num_workers} worker(s) does not fit {total} CPUs; lower it")
    return config.training.cpus_per_worker or int(cpus * 100) / 100


@dataclass
class SearchSummary:
    out_dir: Path
    results: pd.DataFrame
    best_config: ProjectConfig | None


def trial_history(history: pd.DataFrame | None) -> pd.DataFrame | None:
    """One row per epoch: a trial restored after an interruption resumes its Train run from a
    checkpoint, so Tune may hold only the later epochs, or an epoch twice."""
    if history is None or history.empty or "epoch" not in history:
        return history
    return history.sort_values("epoch").drop_duplicates("epoch", keep="last").reset_index(drop=True)


def results_table(records, space: SearchSpace, max_epochs: int) -> pd.DataFrame:
    rows = []
    pick = max if space.mode == "max" else min
    for record in records:
        history = trial_history(record.history)
        values = history[space.metric].dropna().tolist() if history is not None and space.metric in history else []
        epochs = int(history["epoch"].max()) if history is not None and "epoch" in history and len(history) else 0
        status = "error" if record.error else ("finished" if epochs >= max_epochs else "stopped early")
        rows.append(
            {
                "trial_id": record.trial_id,
                **record.params,
                f"best_{space.metric}": pick(values) if values else float("nan"),
                "epochs": epochs,
                "status": status,
                "error": record.error or "",
            }
        )
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values(f"best_{space.metric}", ascending=space.mode == "min", na_position="last")
    return table.reset_index(drop=True)


def tune(
    config: ProjectConfig,
    space: SearchSpace,
    tiles_root: Path,
    out_dir: Path,
    storage_path: str,
    name: str,
    trials: int,
    concurrency: int = 1,
    resume: bool = False,
    address: str | None = None,
    search: str = "tpe",
    scheduler: str = "asha",
    grace_period: int = 2,
    seed: int = 0,
    reduction_factor: int = 3,
) -> SearchSummary:
    if config.training.validate_every != 1 and not space.metric.startswith("train_"):
        # ASHA compares trials on the metric of every epoch: an epoch without validation has none.
        raise ConfigError(
            f"training.validate_every: a search on {space.metric} needs validation after every epoch "
            f"(it is {config.training.validate_every}); use training.val_windows to make validation cheap"
        )
    if config.training.budget is not None or config.auto:
        # Trials compare epoch by epoch over the same number of epochs; a plan per trial would differ.
        raise ConfigError(
            "training.budget / auto settings: a search runs fixed settings per trial; plan first "
            "(microal plan) and search with the planned config (the `config:` of plan.yaml), without a budget"
        )
    built = build_job(space.job, config, tiles_root)
    max_epochs = built.kind.epochs(config)
    ray_backend.init_ray(address)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"search {name}: {trials} trials of {space.job} over {list(space.params)}; "
        f"{search.upper()} + {scheduler.upper()} on {space.metric} ({space.mode}), {concurrency} at a time",
        flush=True,
    )
    cpus = trial_cpus(config, concurrency)
    make_trial = TrialRuns(built.kind.loop, built.job, name, str(storage_path), cpus, (space.metric, space.mode))
    records = ray_backend.run_search(
        make_trial,
        to_optuna(space),
        space.metric,
        space.mode,
        storage_path,
        name,
        trials,
        concurrency,
        max_epochs,
        search=search,
        scheduler=scheduler,
        grace_period=grace_period,
        seed=seed,
        resume=resume,
        reduction_factor=reduction_factor,
        resources=ray_backend.trial_resources(config.training.num_workers, cpus, config.training.use_gpu),
    )
    table = results_table(records, space, max_epochs)
    with atomic_path(out_dir / RESULTS_FILE) as tmp:
        table.to_csv(tmp, index=False)
    search_curves(
        {r.trial_id: trial_history(r.history) for r in records}, space.metric, out_dir / "trials.png", title=name
    )
    best = None
    ranked = table.dropna(subset=[f"best_{space.metric}"])
    if not ranked.empty:
        params = {k: ranked.iloc[0][k] for k in space.params}
        best = apply_overrides(config, params, source="best trial")
        save_config(best, out_dir / BEST_CONFIG_FILE)
    elif records:
        raise MicroalError(f"search {name}: no trial reported {space.metric}; see {out_dir / RESULTS_FILE}")
    return SearchSummary(out_dir, table, best)
