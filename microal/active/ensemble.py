"""Ensembles for uncertainty: k-fold bagging members trained as Ray Train jobs (concurrently,
one per free worker slot), or the best trials of a search; prediction = mean of members.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold

from microal.active.scoring import ScorerFactory, model_version
from microal.backend import ray as ray_backend
from microal.config import ProjectConfig, apply_overrides
from microal.errors import MicroalError
from microal.files import read_table, write_text_atomic
from microal.inference.predict import MEMBERS_FILE
from microal.models.metrics import PixelCounts
from microal.models.model_file import MODEL_FILE, read_metrics
from microal.training.jobs import JOB_KINDS, run_spec, tiles_job, worker_cpus
from microal.training.payloads import LabelledTiles
from microal.training.search import RESULTS_FILE

SCORING_THREADS = 1  # torch threads per scoring actor (and the CPUs it reserves)


@dataclass
class Ensemble:
    members: list[Path]
    version: str
    # How the members' fits went, when they were trained in this process (not saved).
    fits: list[ray_backend.FitOutcome] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_files(cls, files: list[str | Path]) -> Ensemble:
        files = [Path(f) for f in files]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise MicroalError(f"ensemble member file(s) missing: {missing}")
        return cls(files, model_version(files))

    @property
    def member_files(self) -> list[str]:
        return [str(m) for m in self.members]

    def map_tiles(
        self,
        tiles_root: Path,
        tile_ids: list[str],
        operation: Callable,
        config: ProjectConfig,
        actors: int | None = None,
    ) -> list:
        """`operation(scorer, batch of tile ids)` (a TileScorer method, e.g. TileScorer.pixel_counts or
        a functools.partial of TileScorer.score) in Ray actors holding the members, with the
        project's batch size, actor count (al.scoring_actors unless given) and devices."""
        use_gpu = config.training.use_gpu
        factory = ScorerFactory(
            tuple(self.member_files), str(tiles_root), device="cuda" if use_gpu else "cpu", threads=SCORING_THREADS
        )
        return ray_backend.map_batches(
            factory,
            operation,
            list(tile_ids),
            batch_size=config.al.score_batch_size,
            actors=config.al.scoring_actors if actors is None else actors,
            threads_per_actor=SCORING_THREADS,
            use_gpu=use_gpu,
        )

    def save(self, folder: Path) -> None:
        write_text_atomic(
            folder / MEMBERS_FILE, json.dumps({"members": self.member_files, "version": self.version}, indent=2)
        )

    @classmethod
    def load(cls, folder: Path) -> Ensemble | None:
        path = folder / MEMBERS_FILE
        if not path.exists():
            return None
        return cls.from_files(json.loads(path.read_text())["members"])


def member_folds(
    tiles: pd.DataFrame, members: int, seed: int, folds: int | None = None
) -> list[tuple[list[str], list[str]]]:
    """(train tile ids, validation tile ids) per member: k-fold grouped by image, k = `folds`
    (default: one fold per member), member i leaving fold i out (as the 5 fold models bagged by Goetz et al. 2022);
    plain k-fold over tiles when there are fewer labelled images than folds. One fold: every
    member trains on everything, without validation tiles (a deep ensemble; members differ by seed)."""
    folds = folds or members
    if 1 < folds < members:
        raise MicroalError(f"{members} ensemble members need at least as many folds, got {folds}")
    ids = tiles.tile_id.to_numpy()
    if folds == 1:
        return [(ids.tolist(), []) for _ in range(members)]
    if len(ids) < folds:
        raise MicroalError(
            f"{members} ensemble members of {folds} folds need at least {folds} labelled tiles, have {len(ids)}"
        )
    groups = tiles.image_id.to_numpy()
    if len(set(groups)) >= folds:
        splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(ids, groups=groups)
    else:
        splits = KFold(n_splits=folds, shuffle=True, random_state=seed).split(ids)
    return [(ids[train].tolist(), ids[val].tolist()) for train, val in list(splits)[:members]]


def train_ensemble(
    config: ProjectConfig,
    tiles_root: Path,
    labelled_tiles: pd.DataFrame,
    out_dir: Path,
    members: int,
    seed: int = 0,
    label_store: str | None = None,
    address: str | None = None,
    init_from: Ensemble | None = None,
) -> Ensemble:
    """Train `members` fold models on the labelled tiles (labels from `label_store`, else the
    tile set's masks), as concurrent Ray Train runs; reuse them if this folder has them. With
    `init_from` (warm start), member i starts from that ensemble's member i (cycling when it has
    fewer) instead of from fresh weights."""
    existing = Ensemble.load(out_dir)
    if existing is not None:
        return existing
    if init_from is not None:
        init_from = Ensemble.from_files(init_from.members)  # a clear error if a file went missing
    out_dir.mkdir(parents=True, exist_ok=True)
    ray_backend.init_ray(address)
    folds = member_folds(labelled_tiles, members, seed, config.al.folds)
    training = config.training
    # As many members at once as the cluster has room for; on GPUs, each on its own.
    concurrency = (
        len(folds) if training.use_gpu else max(1, min(len(folds), ray_backend.cluster_cpus() // training.num_workers))
    )
    cpus = worker_cpus(config, concurrency)
    supervised = JOB_KINDS["supervised"]
    images = sorted(set(labelled_tiles.image_id))
    runs = []
    for index, (train_ids, val_ids) in enumerate(folds):
        member_config = apply_overrides(
            config, {"training.seed": seed * 1000 + index}, source=f"ensemble member {index}"
        )
        start = init_from.members[index % len(init_from.members)] if init_from else None
        job = tiles_job(member_config, tiles_root, LabelledTiles(train_ids, val_ids, label_store), images, start)
        spec = run_spec(
            member_config,
            f"member-{index}",
            str(out_dir / "ray_results"),
            cpus,
            supervised.selection(member_config, job.data),
            export_dir=out_dir / f"member-{index}",
        )
        runs.append((supervised.loop, job, spec))
    outcomes = ray_backend.fit_many(runs, concurrency)
    ensemble = Ensemble.from_files([spec.export_dir / f"best_{MODEL_FILE}" for _, _, spec in runs])
    ensemble.save(out_dir)
    ensemble.fits = outcomes
    return ensemble


def ensemble_from_search(
    storage_path: str | Path, search_dir: Path, top: int, metric: str = "val_miou", mode: str = "max"
) -> Ensemble:
    """The best `top` trials of a finished search (its folder's results table) as ensemble
    members: each trial's best kept checkpoint (its Ray Train run is `<search>-<trial id>` under
    the storage path)."""
    search = search_dir.name
    results = search_dir / RESULTS_FILE
    if not results.exists():
        raise MicroalError(f"{results}: no results of search {search!r}")
    ranked = read_table(results).dropna(subset=[f"best_{metric}"]).head(top)
    if ranked.empty:
        raise MicroalError(f"search {search!r} has no finished trial to take members from")
    members = []
    for trial_id in ranked.trial_id:
        files = sorted(Path(storage_path).glob(f"{search}-{trial_id}/checkpoint_*/{MODEL_FILE}"))
        if not files:
            raise MicroalError(f"trial {trial_id} of search {search!r} kept no checkpoint in {storage_path}")
        scored = []
        for path in files:
            value = read_metrics(path).get(metric, float("nan"))
            if value == value:  # not NaN
                scored.append((value, path))
        if not scored:
            members.append(files[-1])
            continue
        best = max(scored) if mode == "max" else min(scored)
        members.append(best[1])
    return Ensemble.from_files(members)


def ensemble_report(counts: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """The ensemble against each member: mIoU and per-class IoU from pixel counts
    [1 + members, 3, classes] (see TileScorer.pixel_counts)."""
    rows = []
    for index, array in enumerate(counts):
        pixel_counts = PixelCounts.from_array(array)
        rows.append(
            {
                "model": "ensemble" if index == 0 else f"member {index - 1}",
                "miou": pixel_counts.miou(),
                **{f"iou_{n}": v for n, v in zip(class_names, pixel_counts.iou())},
            }
        )
    return pd.DataFrame(rows)
