"""An active-learning project on disk (its folders: microal.active.folders): the steps of one
round, each resumable, and `run_round`, the one round that experts and the oracle share.

A round: train the ensemble on everything labelled so far -> score the unlabelled tiles ->
select a batch (reading only the score table and the pool) -> hand it to a labeller, who
labels it (the oracle at once, experts in Label Studio later) -> next round.
Images that came with expert masks start labelled (round 0); the others form the pool.

`run_round` asks the project for its steps (`RoundProject`): an `ALProject` of tiles and
segmentation ensembles here, or an image project of whole micrographs and a classifier
(active/images.py), whose pool items are images. Same pool, round and labellers for both.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from microal.active.acquisition import EMBEDDING_ACQUISITIONS
from microal.active.costs import CostEstimate, CostTable, SimulatedCost, boundary_pixels
from microal.active.ensemble import MEMBERS_FILE, Ensemble, ensemble_report, train_ensemble
from microal.active.folders import (
    EMBEDDINGS_FILE,
    REPORT_FILE,
    SCORES_FILE,
    SELECTION_FILE,
    TIMINGS_FILE,
    ProjectFolders,
)
from microal.active.pool import LABELLED, QUEUED, REJECTED, UNLABELLED, Pool
from microal.active.scoring import TileScorer, score_table
from microal.active.selection import SelectionSettings, cold_start_acquisition, select_batch, typicality
from microal.backend import ray as ray_backend
from microal.config import ProjectConfig
from microal.data.labels import LabelStore
from microal.data.splits import EXCLUDED, TEST, held_out_splits
from microal.data.tiles import TileSet, load_tiles
from microal.data.tiling import class_pixel_counts
from microal.errors import MicroalError
from microal.files import atomic_path, write_text_atomic
from microal.models.metrics import balanced_class_weights
from microal.models.model_file import read_history


def image_held_out_splits(tileset: TileSet, config: ProjectConfig) -> pd.Series:
    """test / excluded / train by image id. Only the held-out images matter to a pool, so no
    folds are made: a project can start from masks on a single sample."""
    return pd.Series(held_out_splits(tileset.images, config.split).to_numpy(), index=tileset.images.image_id)


@dataclass
class ALProject:
    root: Path
    config: ProjectConfig
    tiles_root: Path
    tileset: TileSet
    pool: Pool
    seed: int = 0  # round r trains and scores with seed*100 + r (a simulation's seed; 0 for experts)

    @property
    def folders(self) -> ProjectFolders:
        return ProjectFolders(self.root)

    @property
    def labels(self) -> LabelStore:
        return LabelStore(self.folders.labels, self.tileset)

    @property
    def costs(self) -> CostTable:
        return CostTable(self.folders.costs)

    def round_seed(self, round_: int) -> int:
        return self.seed * 100 + round_

    def round_dir(self, round_: int) -> Path:
        return self.folders.round(round_)

    def trained_rounds(self) -> list[int]:
        """Rounds whose ensemble is trained."""
        return self.folders.rounds_with(MEMBERS_FILE)

    @property
    def current_round(self) -> int:
        """The round whose ensemble is trained on everything labelled so far."""
        return max(0, int(self.pool.table["round"].max()))

    def tiles(self, tile_ids: list[str]) -> pd.DataFrame:
        return self.tileset.tiles.set_index("tile_id", drop=False).loc[list(tile_ids)]

    def heldout_tiles(self) -> pd.DataFrame:
        """Tiles of the split's test images (with masks): where the ensemble is measured."""
        splits = image_held_out_splits(self.tileset, self.config)
        tiles = self.tileset.tiles[self.tileset.tiles.labelled]
        return tiles[tiles.image_id.map(splits) == TEST]

    # The steps of the shared round (RoundProject).
    items = "tiles"

    def train_round(
        self, address: str | None = None, members: Ensemble | None = None
    ) -> tuple[Ensemble, pd.DataFrame | None]:
        return train_round_ensemble(self, address=address, members=members)

    def score_round(self, model: Ensemble) -> pd.DataFrame:
        return score_round(self, model)

    def select_round(self) -> pd.DataFrame:
        return select_round(self)

    def reveal_truth(self, tile_ids: list[str], cost: SimulatedCost) -> list[float]:
        """Simulation: the hidden masks of these tiles into the label store; what each would have
        cost an expert."""
        tiles = self.tiles(tile_ids)
        labels = self.labels
        labels.reveal_from_truth(tiles)
        return [cost.seconds(labels.centre(tile)) for _, tile in tiles.iterrows()]


def init_project(root: Path, config: ProjectConfig, tiles_root: Path) -> ALProject:
    """Create the pool: tiles of images with expert masks start labelled (round 0), the
    tiles of the other images are unlabelled. Held-out test images stay out of the pool."""
    tileset = load_tiles(tiles_root)
    splits = image_held_out_splits(tileset, config)
    tiles = tileset.tiles[~tileset.tiles.image_id.map(splits).isin([TEST, EXCLUDED])]
    if tiles.empty:
        raise MicroalError("al init: no tiles for the pool (every image is held out)")
    project = create_project(root, config, tiles_root, tiles)
    labelled = tiles[tiles.labelled]
    if not labelled.empty:
        project.labels.reveal_from_truth(labelled)
        project.pool.mark_labelled(labelled.tile_id, 0, note="came with expert masks")
    return project


def create_project(root: Path, config: ProjectConfig, tiles_root: Path, pool_tiles: pd.DataFrame, seed: int = 0):
    """A project whose pool is `pool_tiles`, all unlabelled (a simulation hides their masks)."""
    pool = Pool.create(ProjectFolders(root).pool, pool_tiles)
    return ALProject(root, config, tiles_root, load_tiles(tiles_root), pool, seed)


def load_project(root: Path, config: ProjectConfig, tiles_root: Path, seed: int = 0) -> ALProject:
    return ALProject(root, config, tiles_root, load_tiles(tiles_root), Pool.load(ProjectFolders(root).pool), seed)


def heldout_counts(ensemble: Ensemble, tiles_root: Path, tiles: pd.DataFrame, config: ProjectConfig) -> np.ndarray:
    """Pixel counts of the ensemble and each member on held-out tiles: [1 + members, 3, classes]."""
    parts = ensemble.map_tiles(tiles_root, tiles.tile_id.tolist(), TileScorer.pixel_counts, config)
    return np.sum(parts, axis=0)


def previous_ensemble(project: ALProject) -> Ensemble | None:
    """The latest ensemble of an earlier round (what a warm-started round starts from)."""
    for round_ in range(project.current_round - 1, -1, -1):
        ensemble = Ensemble.load(project.round_dir(round_))
        if ensemble is not None:
            return ensemble
    return None


def train_round_ensemble(
    project: ALProject, address: str | None = None, members: Ensemble | None = None
) -> tuple[Ensemble, pd.DataFrame | None]:
    """The ensemble of the current round (k-fold members trained on all labelled tiles, or the
    given members, e.g. a search's best trials), and its report: ensemble against each member on
    the held-out tiles, where there are any."""
    round_ = project.current_round
    folder = project.round_dir(round_)
    if members is not None:
        folder.mkdir(parents=True, exist_ok=True)
        members.save(folder)
        ensemble = Ensemble(members.members, members.version)  # taken, not trained here: no fits
    else:
        labelled_ids = project.pool.ids(LABELLED)
        if not labelled_ids:
            raise MicroalError("al: nothing is labelled yet; label some tiles (or ingest a few masks) first")
        ensemble = train_ensemble(
            project.config,
            project.tiles_root,
            project.tiles(labelled_ids),
            folder,
            project.config.al.members,
            seed=project.round_seed(round_),
            label_store=str(project.labels.root),
            address=address,
            init_from=previous_ensemble(project) if project.config.al.warm_start else None,
        )
    ray_backend.init_ray(address)
    report = None
    heldout = project.heldout_tiles()
    if not heldout.empty:
        counts = heldout_counts(ensemble, project.tiles_root, heldout, project.config)
        report = ensemble_report(counts, project.config.class_names)
        with atomic_path(folder / REPORT_FILE) as tmp:
            report.to_csv(tmp, index=False)
    return ensemble, report


def labelled_class_weights(project: ALProject) -> np.ndarray:
    """Balanced class weights (models.metrics.balanced_class_weights) from the pixels of the
    labelled tiles' masks: what class-balanced acquisition weighs uncertainty by."""
    labels = project.labels
    counts = np.zeros(project.config.num_classes, dtype=np.int64)
    for _, tile in project.tiles(project.pool.ids(LABELLED)).iterrows():
        counts += class_pixel_counts(labels.centre(tile), len(counts))
    return balanced_class_weights(counts)


def score_round(project: ALProject, ensemble: Ensemble | None = None) -> pd.DataFrame:
    """Score every unlabelled tile with the round's ensemble; write scores.parquet (one row per
    tile and acquisition: tile id, acquisition, reduction, score, model version) and embeddings."""
    round_ = project.current_round
    folder = project.round_dir(round_)
    ensemble = ensemble or Ensemble.load(folder)
    if ensemble is None:
        raise MicroalError(f"al score: round {round_} has no ensemble yet; run `microal al ensemble` first")
    al = project.config.al
    candidates = project.pool.ids(UNLABELLED)
    if not candidates:
        raise MicroalError("al score: no unlabelled tile left in the pool")
    acquisitions = sorted({al.acquisition, "random"} - EMBEDDING_ACQUISITIONS)
    weights = labelled_class_weights(project) if al.class_balanced else None
    score = partial(
        TileScorer.score,
        acquisitions=acquisitions,
        reduction=al.reduction,
        top_fraction=al.top_fraction,
        seed=project.round_seed(round_),
        class_weights=None if weights is None else tuple(float(w) for w in weights),
    )
    batches = ensemble.map_tiles(project.tiles_root, candidates, score, project.config)
    table, embeddings = score_table(batches, project.tileset.tiles, ensemble.version)
    # The labelled tiles' embeddings too (a call of their own, so the candidates' batches and
    # random scores stay as they were): k-center starts from them, typiclust counts them.
    labelled = project.pool.ids(LABELLED)
    if labelled:
        _, known = score_table(
            ensemble.map_tiles(project.tiles_root, labelled, partial(score, acquisitions=["random"]), project.config),
            project.tileset.tiles,
            ensemble.version,
        )
        embeddings = pd.concat([embeddings, known])
    if al.acquisition in EMBEDDING_ACQUISITIONS:
        table = pd.concat([table, typicality_rows(table, embeddings, al.acquisition, al.reduction)], ignore_index=True)
    with atomic_path(folder / SCORES_FILE) as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(folder / EMBEDDINGS_FILE) as tmp:
        embeddings.set_axis([str(c) for c in embeddings.columns], axis=1).to_parquet(tmp)
    return table


def typicality_rows(table: pd.DataFrame, embeddings: pd.DataFrame, acquisition: str, reduction: str) -> pd.DataFrame:
    """Score-table rows of an embedding acquisition: each candidate's typicality among all the
    pool's embeddings (what it is ranked by within its cluster; selection does the clustering)."""
    rows = table[table.acquisition == "random"].copy()
    typical = pd.Series(typicality(embeddings.to_numpy(dtype=np.float64)), index=embeddings.index)
    return rows.assign(acquisition=acquisition, reduction=reduction, score=typical.loc[rows.tile_id].to_numpy())


def cost_estimate(project: ALProject) -> CostEstimate:
    """What a tile will cost an expert, from what labelled tiles cost and their labels' boundaries."""
    seconds = project.costs.seconds_by_tile()
    paid = project.tiles([t for t in project.pool.ids(LABELLED) if t in seconds.index])
    labels = project.labels
    boundary = pd.Series(
        [boundary_pixels(labels.centre(tile)) for _, tile in paid.iterrows()], index=paid.tile_id, dtype=float
    )
    return CostEstimate.from_labelled(seconds, boundary, SimulatedCost())


def round_acquisition(project: ALProject) -> str:
    """al.acquisition, or random while fewer than al.random_until pool tiles are labelled (the
    cold start: see the setting)."""
    al = project.config.al
    return cold_start_acquisition(al.acquisition, len(project.pool.ids(LABELLED)), al.random_until)


def select_round(
    project: ALProject, k: int | None = None, acquisition: str | None = None, budget_minutes: float | None = None
) -> pd.DataFrame:
    """Choose the next batch from the round's score table (nothing is scored here): k tiles, or
    as many as fit `budget_minutes` of expert time (default al.budget_minutes). Tiles
    already queued, labelled or rejected are never chosen."""
    al = project.config.al
    folder = project.round_dir(project.current_round)
    if not (folder / SCORES_FILE).exists():
        raise MicroalError(f"al select: no score table in {folder}; run `microal al score` first")
    scores = pd.read_parquet(folder / SCORES_FILE)
    acquisition = acquisition or round_acquisition(project)
    scores = scores[scores.acquisition == acquisition]
    if scores.empty:
        raise MicroalError(f"al select: the score table has no {acquisition!r} scores")
    embeddings = pd.read_parquet(folder / EMBEDDINGS_FILE)
    busy = set(project.pool.table.tile_id[project.pool.table.state.isin([QUEUED, LABELLED, REJECTED])])
    budget_minutes = budget_minutes or (None if k else al.budget_minutes)
    if budget_minutes is not None:
        if "predicted_boundary_px" not in scores:
            raise MicroalError(
                f"al select: {folder / SCORES_FILE} predates cost estimates; run `microal al score` again"
            )
        estimate = cost_estimate(project)
        scores = scores.assign(estimated_seconds=estimate.seconds(scores.predicted_boundary_px))
        print(
            f"al select: {budget_minutes:g} expert minutes; a tile costs {estimate.seconds_per_tile:.0f} s + "
            f"{estimate.seconds_per_100_boundary_px:.1f} s per 100 px of phase boundary ({estimate.basis})",
            flush=True,
        )
    settings = SelectionSettings(
        k=k or al.batch_size,
        per_image_cap=al.per_image_cap,
        diversity={"random": "none", "typiclust": "typiclust"}.get(acquisition, al.diversity),
        candidates_factor=al.candidates_factor,
        stratify_by_domain=al.stratify_by_domain,
        budget_seconds=None if budget_minutes is None else budget_minutes * 60,
    )
    chosen = select_batch(scores, settings, exclude=busy, embeddings=embeddings, labelled=project.pool.ids(LABELLED))
    selection = scores.set_index("tile_id").loc[chosen].reset_index()
    selection = selection.merge(project.tileset.tiles[["tile_id", "row", "col", "y", "x"]], on="tile_id")
    with atomic_path(folder / SELECTION_FILE) as tmp:
        selection.to_csv(tmp, index=False)
    return selection


class RoundProject(Protocol):
    """What the shared round needs of a project: its pool and the three model steps. Tiles with
    segmentation ensembles (ALProject) or whole micrographs with a classifier (active/images.py)."""

    pool: Pool
    items: str  # what the pool holds, for messages: "tiles" or "images"

    @property
    def costs(self) -> CostTable: ...

    @property
    def current_round(self) -> int: ...

    def round_dir(self, round_: int) -> Path: ...

    def trained_rounds(self) -> list[int]:
        """Rounds whose model is trained."""
        ...

    def train_round(self, address: str | None = None, members=None) -> tuple[object, pd.DataFrame | None]:
        """The round's model trained on everything labelled (or `members` taken as it), and its
        report on held-out data (None without any)."""
        ...

    def score_round(self, model) -> pd.DataFrame:
        """Score every unlabelled pool item into the round's score table."""
        ...

    def select_round(self) -> pd.DataFrame:
        """The next batch, from the score table: one row per item (`tile_id`), with its score."""
        ...

    def reveal_truth(self, item_ids: list[str], cost: SimulatedCost) -> list[float]:
        """Simulation: copy the hidden labels of these items into the label store; their
        simulated expert seconds."""
        ...


class Labeller(Protocol):
    """Who labels a round's batch: the oracle (active/labellers.py) or experts in Label Studio
    (labelstudio/loop.py)."""

    name: str

    def hand_over(self, project: RoundProject, selection: pd.DataFrame, model) -> list[str]:
        """Give the selected items to the labeller; the item ids it took. The oracle labels them
        at once (labelled in the next round); Label Studio queues them."""
        ...


@dataclass
class RoundOutcome:
    round: int
    ensemble: Ensemble  # the round's model: a segmentation ensemble, or a classifier for images
    report: pd.DataFrame | None  # held-out data: ensemble and members, or the classifier (None without any)
    selection: pd.DataFrame | None = None
    handed_over: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # train, score, select, hand_over, fits

    @property
    def heldout_miou(self) -> float:
        return self.heldout("miou")

    def heldout(self, metric: str) -> float:
        """The round model's held-out `metric` (first row of the report), NaN without one."""
        return float(self.report[metric].iloc[0]) if self.report is not None else float("nan")


def _epoch_seconds(ensemble: Ensemble) -> float:
    """Time inside the training epochs of a round: the members train side by side, so the
    longest member's sum of epoch times (from the histories its last checkpoint carries)."""
    totals = []
    for member in ensemble.members:
        last = Path(member).with_name(Path(member).name.replace("best_", "last_", 1))
        history = read_history(last if last.exists() else member)
        totals.append(sum(float(row.get("epoch_seconds", 0.0)) for row in history))
    return max(totals, default=0.0)


def write_timings(project: RoundProject, round_: int, seconds: dict[str, float]) -> None:
    """rounds/round-<r>/timings.json: where a round's time went (merged with what is there)."""
    path = project.round_dir(round_) / TIMINGS_FILE
    known = json.loads(path.read_text()) if path.exists() else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({**known, **{k: round(float(v), 3) for k, v in seconds.items()}}, indent=2))


def run_round(
    project: RoundProject,
    labeller: Labeller,
    address: str | None = None,
    members=None,
    select: bool = True,
    seconds: dict[str, float] | None = None,
) -> RoundOutcome:
    """One round, whoever labels: train (or reuse, or take `members`) the current round's
    model on everything labelled, measure it on held-out data, score the pool, select a batch
    and hand it to `labeller`. Without `select` (a last round), or with nothing left
    unlabelled, it stops after the model. The time of each step goes into the round's
    timings.json, with `seconds` the caller measured before (e.g. the pull that started it)."""
    round_ = project.current_round
    seconds = dict(seconds or {})
    started = time.perf_counter()
    model, report = project.train_round(address=address, members=members)
    seconds["train"] = time.perf_counter() - started
    fits = getattr(model, "fits", None)
    if fits:  # an ensemble trained now (not reused): what the loops took, and what Ray's start-up took
        seconds["fits"] = len(fits)
        seconds["epochs"] = _epoch_seconds(model)
        seconds["loops"] = max(f.loop_seconds for f in fits)
        seconds["ray_per_fit"] = float(np.mean([f.ray_seconds for f in fits]))
    outcome = RoundOutcome(round_, model, report, seconds=seconds)
    if not select or not project.pool.ids(UNLABELLED):
        write_timings(project, round_, seconds)
        return outcome
    ray_backend.init_ray(address)
    started = time.perf_counter()
    project.score_round(model)
    seconds["score"] = time.perf_counter() - started
    started = time.perf_counter()
    outcome.selection = project.select_round()
    seconds["select"] = time.perf_counter() - started
    started = time.perf_counter()
    outcome.handed_over = labeller.hand_over(project, outcome.selection, model)
    seconds["hand_over"] = time.perf_counter() - started
    write_timings(project, round_, seconds)
    return outcome
