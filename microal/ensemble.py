"""Ensembles for uncertainty: k-fold bagging members trained as Ray Train jobs (concurrently,
one per free worker slot), or the best trials of a search; prediction = mean of members.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold

from microal import ray_backend
from microal.config import ProjectConfig
from microal.errors import MicroalError
from microal.files import write_text_atomic
from microal.metrics import PixelCounts
from microal.scoring import model_version
from microal.training import TrainJob, train_worker

MEMBERS_FILE = "members.json"


@dataclass
class Ensemble:
    members: list[Path]
    version: str

    @classmethod
    def from_files(cls, files: list[str | Path]) -> "Ensemble":
        files = [Path(f) for f in files]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise MicroalError(f"ensemble member file(s) missing: {missing}")
        return cls(files, model_version(files))

    @property
    def member_files(self) -> list[str]:
        return [str(m) for m in self.members]

    def map_tiles(self, tiles_root: Path, tile_ids: list[str], method: str, config: ProjectConfig,
                  kwargs: dict | None = None, actors: int | None = None) -> list:
        """A TileScorer method over tiles in Ray actors, with the project's batch size, actor
        count (al.scoring_actors unless given) and devices."""
        return ray_backend.map_tiles(
            self.member_files, str(tiles_root), list(tile_ids), method, kwargs=kwargs,
            batch_size=config.al.score_batch_size, actors=config.al.scoring_actors if actors is None else actors,
            use_gpu=config.training.use_gpu,
        )

    def save(self, folder: Path) -> None:
        write_text_atomic(folder / MEMBERS_FILE, json.dumps({"members": self.member_files, "version": self.version}, indent=2))

    @classmethod
    def load(cls, folder: Path) -> "Ensemble | None":
        path = folder / MEMBERS_FILE
        if not path.exists():
            return None
        return cls.from_files(json.loads(path.read_text())["members"])


def member_folds(tiles: pd.DataFrame, members: int, seed: int, folds: int | None = None) -> list[tuple[list[str], list[str]]]:
    """(train tile ids, validation tile ids) per member: k-fold grouped by image, k = `folds`
    (default: one fold per member), member i leaving fold i out (as the seed's 5 fold models);
    plain k-fold over tiles when there are fewer labelled images than folds; one member (of one
    fold) trains on everything."""
    folds = folds or members
    if folds < members:
        raise MicroalError(f"{members} ensemble members need at least as many folds, got {folds}")
    ids = tiles.tile_id.to_numpy()
    if folds == 1:  # one member (folds >= members)
        return [(ids.tolist(), [])]
    if len(ids) < folds:
        raise MicroalError(f"{members} ensemble members of {folds} folds need at least {folds} labelled tiles, have {len(ids)}")
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
    mask_root: str | None = None,
    address: str | None = None,
    quiet: bool = False,
    init_from: Ensemble | None = None,
) -> Ensemble:
    """Train `members` fold models on the labelled tiles; reuse them if this folder has them.
    With `init_from` (warm start), member i starts from that ensemble's member i (cycling when
    it has fewer) instead of from fresh weights."""
    existing = Ensemble.load(out_dir)
    if existing is not None:
        return existing
    if init_from is not None:
        init_from = Ensemble.from_files(init_from.members)  # a clear error if a file went missing
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for index, (train_ids, val_ids) in enumerate(member_folds(labelled_tiles, members, seed, config.al.folds)):
        member_config = config.model_copy(update={"training": config.training.model_copy(update={"seed": seed * 1000 + index})})
        images = sorted(set(labelled_tiles.image_id))
        job = TrainJob(
            config=member_config.model_dump(mode="json"),
            tiles_root=str(Path(tiles_root).resolve()),
            train_images=images,
            val_images=[],
            init_model=str(init_from.members[index % len(init_from.members)].resolve()) if init_from else None,
            extra={"train_tiles": train_ids, "val_tiles": val_ids, "mask_root": mask_root},
        )
        runs.append((train_worker, job, f"member-{index}", out_dir / f"member-{index}"))
    ray_backend.init_ray(address)
    ray_backend.fit_many(runs, storage_path=str(out_dir / "ray_results"), training=config.training, quiet=quiet)
    ensemble = Ensemble.from_files([run_dir / "best_model.pt" for *_, run_dir in runs])
    ensemble.save(out_dir)
    return ensemble


def ensemble_from_search(storage_path: str | Path, search: str, results: pd.DataFrame, top: int, metric: str, mode: str) -> Ensemble:
    """The best `top` trials of a finished search as ensemble members: each trial's best kept
    checkpoint (its Ray Train run is `<search>-<trial id>` under the storage path)."""
    import torch

    ranked = results.dropna(subset=[f"best_{metric}"]).head(top)
    if ranked.empty:
        raise MicroalError(f"search {search!r} has no finished trial to take members from")
    members = []
    for trial_id in ranked.trial_id:
        files = sorted(Path(storage_path).glob(f"{search}-{trial_id}/checkpoint_*/model.pt"))
        if not files:
            raise MicroalError(f"trial {trial_id} of search {search!r} kept no checkpoint in {storage_path}")
        scored = []
        for path in files:
            value = torch.load(path, map_location="cpu", weights_only=False)["metrics"].get(metric, float("nan"))
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
        rows.append({"model": "ensemble" if index == 0 else f"member {index - 1}", "miou": pixel_counts.miou(),
                     **{f"iou_{n}": v for n, v in zip(class_names, pixel_counts.iou())}})
    return pd.DataFrame(rows)
