"""`microal al simulate`: the standard oracle experiment for active learning.

Start from `initial` labelled tiles (random, the same for every strategy of a seed; optionally
from the pool's tiles of some imaging domains only, `initial_domains`), hide the
masks of the rest of the pool, and run the experts' round (active/rounds.run_round) with the
oracle as labeller: train the ensemble on what is labelled, measure it on the fixed held-out
tiles, score the pool, select `batch` tiles, reveal their masks (with a simulated expert cost).
Repeat for every acquisition strategy against random, over several seeds.

Output in <workdir>/al/<name>/ (the layout: microal.active.folders): curve.csv (strategy, seed,
round, labelled tiles, fraction of the pool, simulated expert seconds, held-out mIoU, ensemble
and members), curve.png and curve_seconds.png (mean and spread per strategy, against tiles and
against expert time), summary.csv, and per strategy/seed a project (pool, label store, costs,
rounds); a stopped experiment resumes. The whole-pool reference is trained once per seed and averaged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from microal.active.acquisition import NEEDS_MEMBERS
from microal.active.costs import SimulatedCost
from microal.active.ensemble import Ensemble, train_ensemble
from microal.active.folders import ProjectFolders, SimulationFolders
from microal.active.labellers import OracleLabeller
from microal.active.pool import LABELLED, Pool
from microal.active.rounds import (
    ALProject,
    create_project,
    heldout_counts,
    image_held_out_splits,
    load_project,
    run_round,
)
from microal.backend import ray as ray_backend
from microal.config import ProjectConfig, apply_overrides
from microal.data.splits import TEST, TRAIN
from microal.data.tiles import TileSet, load_tiles
from microal.errors import ConfigError
from microal.files import atomic_path, read_table
from microal.models.metrics import PixelCounts
from microal.plots import learning_curves_al


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
    cost: SimulatedCost = field(default_factory=SimulatedCost)  # the oracle's seconds per tile
    # Imaging domains round 0's tiles are drawn from (empty: the whole pool). A lab that has
    # labelled its own microscope's micrographs and now pools another's starts this way: the new
    # domain's tiles are in the pool, unlabelled, and in the held-out set.
    initial_domains: tuple[str, ...] = ()

    def reference_epochs(self, config: ProjectConfig) -> int:
        if self.full_pool_epochs:
            return self.full_pool_epochs
        return config.training.epochs * ((self.rounds + 1) if config.al.warm_start else 1)


def pool_and_test_tiles(tileset: TileSet, config: ProjectConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pool: tiles of the labelled images a project would pool (masks hidden); held-out: tiles
    of the split's test images, as a project measures its rounds."""
    splits = image_held_out_splits(tileset, config)
    tiles = tileset.tiles[tileset.tiles.labelled]
    role = tiles.image_id.map(splits)
    pool, test = tiles[role == TRAIN], tiles[role == TEST]
    if test.empty:
        raise ConfigError("al simulate: the split holds out no test image (split.test) to measure mIoU on")
    return pool.reset_index(drop=True), test.reset_index(drop=True)


def _append_curve(folders: SimulationFolders, row: dict) -> pd.DataFrame:
    path = folders.curve
    curve = read_table(path) if path.exists() else pd.DataFrame()
    curve = pd.concat([curve, pd.DataFrame([row])], ignore_index=True)
    with atomic_path(path) as tmp:
        curve.to_csv(tmp, index=False)
    return curve


def _done(folders: SimulationFolders, strategy: str, seed: int) -> set[int]:
    path = folders.curve
    if not path.exists():
        return set()
    curve = read_table(path)
    return set(curve[(curve.strategy == strategy) & (curve.seed == seed)]["round"].astype(int))


def initial_candidates(pool_tiles: pd.DataFrame, sim: Simulation) -> np.ndarray:
    """The tile ids round 0 draws its `initial` tiles from: the pool, or its tiles of
    `sim.initial_domains`."""
    if not sim.initial_domains:
        return pool_tiles.tile_id.to_numpy()
    wanted = [str(d) for d in sim.initial_domains]
    candidates = pool_tiles[pool_tiles.domain.astype(str).isin(wanted)]
    if len(candidates) < sim.initial:
        present = sorted(pool_tiles.domain.astype(str).unique())
        raise ConfigError(
            f"al simulate: {sim.initial} initial tiles from domain(s) {wanted}, but the pool holds "
            f"{len(candidates)} tiles of them (its domains: {present})"
        )
    return candidates.tile_id.to_numpy()


def strategy_project(
    config: ProjectConfig,
    tiles_root: Path,
    pool_tiles: pd.DataFrame,
    root: Path,
    strategy: str,
    seed: int,
    sim: Simulation,
    oracle: OracleLabeller,
) -> ALProject:
    """The project of one strategy and seed: the pool with its masks hidden, `initial` random
    tiles (the same for every strategy of a seed) revealed in round 0."""
    run_config = apply_overrides(
        config, {"al.acquisition": strategy, "al.batch_size": sim.batch}, source=f"al simulate {strategy}"
    )
    if ProjectFolders(root).pool.exists():
        project = load_project(root, run_config, tiles_root, seed=seed)
    else:
        root.mkdir(parents=True, exist_ok=True)
        project = create_project(root, run_config, tiles_root, pool_tiles, seed=seed)
    if not project.pool.ids(LABELLED):
        rng = np.random.default_rng(seed)
        initial = rng.choice(initial_candidates(pool_tiles, sim), size=sim.initial, replace=False).tolist()
        oracle.reveal(project, initial, 0, note="initial")
    return project


def same_round_elsewhere(project: ALProject, reference: Path | None) -> Ensemble | None:
    """The ensemble of the same round in the `reference` project (another strategy of the seed)
    when it was trained on exactly the tiles this project has labelled now, else None. Round 0
    always is (the strategies share their initial tiles), and so is every round under
    al.random_until (each strategy's batch is then random's): trained once, not once per strategy."""
    if reference is None:
        return None
    round_ = project.current_round
    folders = ProjectFolders(reference)
    ensemble = Ensemble.load(folders.round(round_))
    if ensemble is None or not folders.pool.exists():
        return None
    theirs = Pool.load(folders.pool).table
    theirs = set(theirs.tile_id[(theirs.state == LABELLED) & (theirs["round"] <= round_)])
    return ensemble if theirs == set(project.pool.ids(LABELLED)) else None


def run_strategy(
    config, tiles_root, pool_tiles, folders: SimulationFolders, strategy, seed, sim, address, reference
) -> None:
    """Rounds 0..sim.rounds of one strategy and seed, each the experts' round with the oracle; a
    round whose labelled tiles the `reference` project's same round had takes its ensemble."""
    oracle = OracleLabeller(sim.cost)
    project = strategy_project(config, tiles_root, pool_tiles, folders.run(strategy, seed), strategy, seed, sim, oracle)
    done = _done(folders, strategy, seed)
    while True:
        round_ = project.current_round
        members = same_round_elsewhere(project, reference)
        outcome = run_round(project, oracle, address=address, members=members, select=round_ < sim.rounds)
        if round_ not in done:
            pool = project.pool.table
            labelled = pool[(pool.state == LABELLED) & (pool["round"] <= round_)].tile_id
            seconds = project.costs.seconds_by_tile()
            report = outcome.report
            row = {
                "strategy": strategy,
                "seed": seed,
                "round": round_,
                "labelled_tiles": len(labelled),
                "pool_fraction": len(labelled) / len(pool_tiles),
                "expert_seconds": float(seconds.reindex(labelled).fillna(0).sum()),
                "miou": outcome.heldout_miou,
                "mean_member_miou": float(report.miou.iloc[1:].mean()),
                "model_version": outcome.ensemble.version,
            }
            _append_curve(folders, row)
            print(
                f"al simulate {strategy} seed {seed} round {round_}: {len(labelled)} labelled tiles "
                f"({row['expert_seconds'] / 60:.0f} expert minutes), held-out mIoU {row['miou']:.4f} "
                f"(members {row['mean_member_miou']:.4f})",
                flush=True,
            )
        if round_ >= sim.rounds:
            break


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


def aulc_by_seed(curve: pd.DataFrame) -> pd.DataFrame:
    """Normalised area under each run's learning curve (mean mIoU over the labelled fraction
    axis): one row per seed, one column per strategy."""
    rows = []
    for (strategy, seed), run in curve.groupby(["strategy", "seed"]):
        run = run.sort_values("pool_fraction")
        x, y = run.pool_fraction.to_numpy(), run.miou.to_numpy()
        aulc = float(np.trapezoid(y, x) / (x[-1] - x[0])) if len(x) > 1 else float(y[0])
        rows.append({"strategy": strategy, "seed": seed, "aulc": aulc})
    return pd.DataFrame(rows).pivot(index="seed", columns="strategy", values="aulc")


def aulc_gap_interval(
    curve: pd.DataFrame, strategy: str, baseline: str = "random", level: float = 0.9, resamples: int = 10_000
) -> tuple[float, float, float]:
    """The AULC lead of `strategy` over `baseline` (mean over seeds) and its paired bootstrap
    interval: seeds are resampled with replacement and each keeps its own pair, since a seed fixes
    the starting tiles both strategies share. With few seeds the interval is optimistic (a
    bootstrap cannot see spread the seeds did not show); it is a floor on the uncertainty."""
    table = aulc_by_seed(curve)[[strategy, baseline]].dropna()
    gaps = (table[strategy] - table[baseline]).to_numpy()
    rng = np.random.default_rng(0)
    means = gaps[rng.integers(0, len(gaps), size=(resamples, len(gaps)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(gaps.mean()), float(low), float(high)


def summarise(curve: pd.DataFrame, full_pool_miou: float) -> pd.DataFrame:
    """Per strategy: normalised area under the learning curve (mean mIoU over the labelled
    fraction axis, averaged over seeds), its lead over random with a paired bootstrap 90%
    interval over seeds, and the pool fraction (and simulated expert seconds) at which the
    strategy's mean curve over seeds, round by round, first reaches 95% of the full-pool mIoU
    (and how many single seeds do)."""
    threshold = 0.95 * full_pool_miou
    aulcs = aulc_by_seed(curve)
    rows = []
    for strategy, part in curve.groupby("strategy"):
        seeds_reaching = sum(int((run.miou >= threshold).any()) for _, run in part.groupby("seed"))
        columns = {"pool_fraction": ("pool_fraction", "mean"), "miou": ("miou", "mean")}
        if "expert_seconds" in part:
            columns["expert_seconds"] = ("expert_seconds", "mean")
        mean_curve = part.groupby("round").agg(**columns).sort_index()
        reached = mean_curve[mean_curve.miou >= threshold]
        row = {
            "strategy": strategy,
            "aulc": float(aulcs[strategy].mean()),
            "aulc_std": float(aulcs[strategy].std(ddof=0)),
            "frac_tiles_to_95pct": float(reached.pool_fraction.iloc[0]) if len(reached) else float("nan"),
            "seeds_reaching_95pct": seeds_reaching,
            "seeds": int(aulcs[strategy].notna().sum()),
        }
        if "expert_seconds" in mean_curve:
            row["expert_seconds_to_95pct"] = float(reached.expert_seconds.iloc[0]) if len(reached) else float("nan")
        if strategy != "random" and "random" in aulcs:
            row["aulc_gap"], row["aulc_gap_ci90_low"], row["aulc_gap_ci90_high"] = aulc_gap_interval(curve, strategy)
        rows.append(row)
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
    initial_candidates(pool_tiles, sim)  # a domain the pool lacks fails before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = SimulationFolders(out_dir)
    ray_backend.init_ray(address)
    print(
        f"al simulate: pool {len(pool_tiles)} tiles, held-out {len(test_tiles)} tiles; "
        f"strategies {list(sim.strategies)}, "
        f"{sim.seeds} seed(s), {sim.rounds} rounds of {sim.batch} from {sim.initial}"
        + (f" of domain(s) {list(sim.initial_domains)}" if sim.initial_domains else ""),
        flush=True,
    )
    for seed in range(sim.seeds):
        # Rounds with the same labelled tiles (round 0; those under al.random_until) are trained
        # once, by the first strategy of the seed, and shared with the others.
        reference = None
        for strategy in sim.strategies:
            run_strategy(config, tiles_root, pool_tiles, folders, strategy, seed, sim, address, reference)
            reference = reference or folders.run(strategy, seed)
    curve = read_table(folders.curve)
    references = full_pool_references(
        config, tiles_root, pool_tiles, test_tiles, folders, address, sim.reference_epochs(config), sim.seeds
    )
    full = float(np.mean(references))
    summary = summarise(curve, full)
    with atomic_path(folders.summary) as tmp:
        summary.assign(full_pool_miou=full, full_pool_miou_std=float(np.std(references))).to_csv(tmp, index=False)
    learning_curves_al(curve, folders.curve_plot, full_pool_miou=full)
    learning_curves_al(curve, folders.curve_seconds_plot, full_pool_miou=full, x="expert_seconds")
    return curve, summary, full
