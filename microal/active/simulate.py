"""`microal al simulate`: the standard oracle experiment for active learning.

Start from `initial` labelled tiles (random, the same for every strategy of a seed), hide the
masks of the rest of the pool, and in each round: train the ensemble on what is labelled,
score it on a fixed held-out set, score the pool, select `batch` tiles, reveal their masks.
Repeat for every acquisition strategy against random, over several seeds.

Output in <workdir>/al/<name>/ (the layout: microal.active.folders): curve.csv (strategy, seed,
round, labelled tiles, fraction of the pool, held-out mIoU, ensemble and members), curve.png
(mean and spread per strategy), summary.csv, and per strategy/seed the pool state, label store
and ensembles; a stopped experiment resumes. The whole-pool reference is trained once per seed and averaged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from microal.active.acquisition import NEEDS_MEMBERS
from microal.active.ensemble import Ensemble, ensemble_report, train_ensemble
from microal.active.folders import ProjectFolders, SimulationFolders
from microal.active.pool import LABELLED, UNLABELLED, Pool
from microal.active.scoring import TileScorer, score_table
from microal.active.selection import SelectionSettings, select_batch
from microal.backend import ray as ray_backend
from microal.config import ProjectConfig, apply_overrides
from microal.data.labels import LabelStore
from microal.data.splits import TEST, TRAIN, VAL
from microal.data.tiles import TileSet, load_tiles
from microal.errors import ConfigError
from microal.files import atomic_path
from microal.models.metrics import PixelCounts
from microal.plots import learning_curves_al
from microal.training.jobs import split_table


@dataclass(frozen=True)
class Simulation:
    initial: int
    batch: int
    rounds: int
    strategies: tuple[str, ...]
    seeds: int
    # The full-pool reference is a ceiling only if it is trained to convergence: it may get more
    # epochs than a round. Default: the most any round's model has had (training.epochs, or with
    # al.warm_start the epochs accumulated over all rounds).
    full_pool_epochs: int | None = None

    def reference_epochs(self, config: ProjectConfig) -> int:
        if self.full_pool_epochs:
            return self.full_pool_epochs
        return config.training.epochs * ((self.rounds + 1) if config.al.warm_start else 1)


def pool_and_test_tiles(tileset: TileSet, config: ProjectConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pool: tiles of labelled train/val images (masks hidden); held-out: tiles of test images."""
    splits = split_table(tileset, config).set_index("image_id").split
    tiles = tileset.tiles[tileset.tiles.labelled]
    role = tiles.image_id.map(splits)
    pool, test = tiles[role.isin([TRAIN, VAL])], tiles[role == TEST]
    if test.empty:
        raise ConfigError("al simulate: the split holds out no test image (split.test) to measure mIoU on")
    return pool.reset_index(drop=True), test.reset_index(drop=True)


def heldout_counts(ensemble: Ensemble, tiles_root: Path, test: pd.DataFrame, config: ProjectConfig) -> np.ndarray:
    parts = ensemble.map_tiles(tiles_root, test.tile_id.tolist(), TileScorer.pixel_counts, config)
    return np.sum(parts, axis=0)


def score_pool(
    ensemble: Ensemble,
    tiles_root: Path,
    pool_tiles: pd.DataFrame,
    candidates: list[str],
    config: ProjectConfig,
    acquisition: str,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    al = config.al
    score = partial(
        TileScorer.score, acquisitions=[acquisition], reduction=al.reduction, top_fraction=al.top_fraction, seed=seed
    )
    batches = ensemble.map_tiles(tiles_root, candidates, score, config)
    table, embeddings = score_table(batches, pool_tiles, ensemble.version)
    return table, embeddings


def _append_curve(folders: SimulationFolders, row: dict) -> pd.DataFrame:
    path = folders.curve
    curve = pd.read_csv(path) if path.exists() else pd.DataFrame()
    curve = pd.concat([curve, pd.DataFrame([row])], ignore_index=True)
    with atomic_path(path) as tmp:
        curve.to_csv(tmp, index=False)
    return curve


def _done(folders: SimulationFolders, strategy: str, seed: int) -> set[int]:
    path = folders.curve
    if not path.exists():
        return set()
    curve = pd.read_csv(path)
    return set(curve[(curve.strategy == strategy) & (curve.seed == seed)]["round"].astype(int))


def run_strategy(
    config, tiles_root, tileset, pool_tiles, test_tiles, folders: SimulationFolders, strategy, seed, sim, address
) -> None:
    al = config.al
    run = ProjectFolders(folders.run(strategy, seed))  # a pool and a label store, as in a project
    run.root.mkdir(parents=True, exist_ok=True)
    pool = Pool.load(run.pool) if run.pool.exists() else Pool.create(run.pool, pool_tiles)
    labels = LabelStore(run.labels, tileset)
    if not pool.ids(LABELLED):
        initial = (
            np.random.default_rng(seed).choice(pool_tiles.tile_id.to_numpy(), size=sim.initial, replace=False).tolist()
        )
        labels.reveal_from_truth(pool_tiles.set_index("tile_id", drop=False).loc[initial])
        pool.mark_labelled(initial, 0, note="initial")
    done = _done(folders, strategy, seed)

    def ensemble_dir(round_: int) -> Path:
        return folders.ensemble(strategy, seed, round_)

    for round_ in range(sim.rounds + 1):
        labelled_ids = pool.table[(pool.table.state == LABELLED) & (pool.table["round"] <= round_)].tile_id.tolist()
        if round_ not in done:
            labelled = pool_tiles[pool_tiles.tile_id.isin(labelled_ids)]
            previous = Ensemble.load(ensemble_dir(round_ - 1)) if al.warm_start and round_ > 0 else None
            ensemble = train_ensemble(
                config,
                tiles_root,
                labelled,
                ensemble_dir(round_),
                al.members,
                seed=seed * 100 + round_,
                label_store=str(labels.root),
                address=address,
                init_from=previous,
            )
            counts = heldout_counts(ensemble, tiles_root, test_tiles, config)
            report = ensemble_report(counts, config.class_names)
            row = {
                "strategy": strategy,
                "seed": seed,
                "round": round_,
                "labelled_tiles": len(labelled_ids),
                "pool_fraction": len(labelled_ids) / len(pool_tiles),
                "miou": PixelCounts.from_array(counts[0]).miou(),
                "mean_member_miou": float(report.miou.iloc[1:].mean()),
                "model_version": ensemble.version,
            }
            _append_curve(folders, row)
            print(
                f"al simulate {strategy} seed {seed} round {round_}: {len(labelled_ids)} labelled tiles, "
                f"held-out mIoU {row['miou']:.4f} (members {row['mean_member_miou']:.4f})",
                flush=True,
            )
        if round_ == sim.rounds:
            break
        if pool.table["round"].max() > round_:
            continue  # this round's batch was already selected and revealed before a restart
        ensemble = Ensemble.load(ensemble_dir(round_))
        candidates = pool.ids(UNLABELLED)
        table, embeddings = score_pool(
            ensemble, tiles_root, pool_tiles, candidates, config, strategy, seed * 100 + round_
        )
        with atomic_path(folders.scores(strategy, seed, round_)) as tmp:
            table.to_parquet(tmp, index=False)
        settings = SelectionSettings(
            k=sim.batch,
            per_image_cap=al.per_image_cap,
            diversity="none" if strategy == "random" else al.diversity,
            candidates_factor=al.candidates_factor,
            stratify_by_domain=al.stratify_by_domain,
        )
        chosen = select_batch(
            table,
            settings,
            exclude=set(pool.table.tile_id[pool.table.state != UNLABELLED]),
            embeddings=embeddings,
            labelled=labelled_ids,
        )
        labels.reveal_from_truth(pool_tiles.set_index("tile_id", drop=False).loc[chosen])
        pool.mark_labelled(chosen, round_ + 1, note=strategy)


def full_pool_references(
    config, tiles_root, pool_tiles, test_tiles, folders: SimulationFolders, address, epochs: int, seeds: int
) -> list[float]:
    """mIoU of ensembles trained on the whole pool with its true masks, one per seed: the ceiling.
    One training run's held-out mIoU moves by a few points with its seed; their mean is what the
    curves are read against."""
    config = apply_overrides(config, {"training.epochs": epochs}, source="al simulate --full-pool-epochs")
    mious = []
    for seed in range(seeds):
        ensemble = train_ensemble(
            config,
            tiles_root,
            pool_tiles,
            folders.full_pool(epochs, seed),
            config.al.members,
            seed=12345 + seed,
            label_store=None,
            address=address,
        )
        mious.append(PixelCounts.from_array(heldout_counts(ensemble, tiles_root, test_tiles, config)[0]).miou())
        print(f"al simulate whole pool, seed {seed}: held-out mIoU {mious[-1]:.4f}", flush=True)
    return mious


def summarise(curve: pd.DataFrame, full_pool_miou: float) -> pd.DataFrame:
    """Per strategy: normalised area under the learning curve (mean mIoU over the labelled
    fraction axis, averaged over seeds) and the pool fraction at which the strategy's mean curve
    over seeds first reaches 95% of the full-pool mIoU (and how many single seeds do)."""
    threshold = 0.95 * full_pool_miou
    rows = []
    for strategy, part in curve.groupby("strategy"):
        aulcs, seeds_reaching = [], 0
        for _, run in part.groupby("seed"):
            run = run.sort_values("pool_fraction")
            x, y = run.pool_fraction.to_numpy(), run.miou.to_numpy()
            aulcs.append(float(np.trapezoid(y, x) / (x[-1] - x[0])) if len(x) > 1 else float(y[0]))
            seeds_reaching += int((y >= threshold).any())
        mean_curve = part.groupby("pool_fraction").miou.mean().sort_index()
        reached = mean_curve[mean_curve >= threshold]
        rows.append(
            {
                "strategy": strategy,
                "aulc": float(np.mean(aulcs)),
                "aulc_std": float(np.std(aulcs)),
                "frac_tiles_to_95pct": float(reached.index[0]) if len(reached) else float("nan"),
                "seeds_reaching_95pct": seeds_reaching,
                "seeds": len(aulcs),
            }
        )
    return pd.DataFrame(rows).sort_values("aulc", ascending=False).reset_index(drop=True)


def simulate(
    config: ProjectConfig, tiles_root: Path, out_dir: Path, sim: Simulation, address: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    if "random" not in sim.strategies:
        sim = replace(sim, strategies=tuple(sim.strategies) + ("random",))
    one_member = sorted(set(sim.strategies) & NEEDS_MEMBERS) if config.al.members < 2 else []
    if one_member:
        raise ConfigError(
            f"al simulate: {one_member} measure disagreement between members and are zero with "
            f"al.members = {config.al.members}; use 2 or more members, or entropy / margin"
        )
    tileset = load_tiles(tiles_root)
    pool_tiles, test_tiles = pool_and_test_tiles(tileset, config)
    needed = sim.initial + sim.batch * sim.rounds
    if needed > len(pool_tiles):
        raise ConfigError(
            f"al simulate: {sim.initial} + {sim.rounds} x {sim.batch} tiles exceed the pool of {len(pool_tiles)}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = SimulationFolders(out_dir)
    ray_backend.init_ray(address)
    print(
        f"al simulate: pool {len(pool_tiles)} tiles, held-out {len(test_tiles)} tiles; "
        f"strategies {list(sim.strategies)}, "
        f"{sim.seeds} seed(s), {sim.rounds} rounds of {sim.batch} from {sim.initial}",
        flush=True,
    )
    for seed in range(sim.seeds):
        for strategy in sim.strategies:
            run_strategy(config, tiles_root, tileset, pool_tiles, test_tiles, folders, strategy, seed, sim, address)
    curve = pd.read_csv(folders.curve)
    references = full_pool_references(
        config, tiles_root, pool_tiles, test_tiles, folders, address, sim.reference_epochs(config), sim.seeds
    )
    full = float(np.mean(references))
    summary = summarise(curve, full)
    with atomic_path(folders.summary) as tmp:
        summary.assign(full_pool_miou=full, full_pool_miou_std=float(np.std(references))).to_csv(tmp, index=False)
    learning_curves_al(curve, folders.curve_plot, full_pool_miou=full)
    return curve, summary, full
