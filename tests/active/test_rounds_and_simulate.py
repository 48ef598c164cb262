"""Active learning end to end on a local Ray: ensembles, a project's round, and the oracle simulation."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import quick_config_dict

from microal.active.ensemble import Ensemble, member_folds
from microal.active.pool import LABELLED, UNLABELLED
from microal.active.rounds import (
    init_project,
    labelled_class_weights,
    load_project,
    previous_ensemble,
    score_round,
    select_round,
    train_round_ensemble,
)
from microal.active.simulate import Simulation, aulc_gap_interval, initial_candidates, simulate, summarise
from microal.config import apply_overrides, parse_config
from microal.data.tiles import load_tiles
from microal.data.tiling import IGNORE_INDEX
from microal.errors import ConfigError, MicroalError
from microal.models.metrics import balanced_class_weights
from microal.training.jobs import split_table


def _config(synth_dir, **al):
    raw = quick_config_dict(synth_dir, epochs=2, samples_per_epoch=16)
    raw["al"] = {"members": 2, "batch_size": 4, "score_batch_size": 32, **al}
    return parse_config(raw)


def test_member_folds_are_grouped_by_image():
    tiles = pd.DataFrame({"tile_id": [f"t{i}" for i in range(12)], "image_id": [f"i{i // 3}" for i in range(12)]})
    folds = member_folds(tiles, 3, seed=0)
    assert len(folds) == 3
    for train, val in folds:
        assert not {t[1:] for t in train} & {t[1:] for t in val}
        train_images = {int(t[1:]) // 3 for t in train}
        assert not train_images & {int(t[1:]) // 3 for t in val}  # no image on both sides
    assert sorted(t for _, val in folds for t in val) == sorted(tiles.tile_id)
    with pytest.raises(MicroalError, match="need at least 3 labelled tiles"):
        member_folds(tiles.head(2), 3, seed=0)


def test_more_folds_than_members_give_each_member_more_of_the_labels(synth_dir):
    tiles = pd.DataFrame({"tile_id": [f"t{i}" for i in range(20)], "image_id": [f"i{i // 2}" for i in range(20)]})
    halves = member_folds(tiles, 2, seed=0)
    fifths = member_folds(tiles, 2, seed=0, folds=5)
    assert [len(train) for train, _ in halves] == [10, 10]
    assert [len(train) for train, _ in fifths] == [16, 16]  # each leaves out one fifth
    assert not set(fifths[0][1]) & set(fifths[1][1])  # and a different fifth
    for train, val in fifths:
        assert not {int(t[1:]) // 2 for t in train} & {int(t[1:]) // 2 for t in val}
    with pytest.raises(MicroalError, match="at least as many folds"):
        member_folds(tiles, 3, seed=0, folds=2)
    with pytest.raises(ConfigError, match=r"al.folds \(2\) must be at least al.members \(3\)"):
        _config(synth_dir, members=3, folds=2)


def test_one_fold_is_a_deep_ensemble_of_members_that_see_every_label(synth_dir):
    tiles = pd.DataFrame({"tile_id": [f"t{i}" for i in range(6)], "image_id": [f"i{i // 2}" for i in range(6)]})
    deep = member_folds(tiles, 3, seed=0, folds=1)
    assert [sorted(train) for train, _ in deep] == [sorted(tiles.tile_id)] * 3
    assert all(val == [] for _, val in deep)
    assert _config(synth_dir, members=3, folds=1).al.folds == 1


def test_a_project_starts_without_enough_groups_for_folds(tiled, synth_dir, tmp_path):
    """Masks on one or two samples are a normal start: init needs the hold-out, not folds."""
    ws, catalog, _ = tiled
    raw = quick_config_dict(synth_dir)
    raw["split"]["n_folds"] = catalog["sample"].nunique() + 1  # more folds than samples
    config = parse_config(raw)
    with pytest.raises(ConfigError, match="split.n_folds"):
        split_table(load_tiles(ws.tiles), config)
    project = init_project(tmp_path / "al", config, ws.tiles)
    test_images = set(catalog.image_id[catalog["sample"].isin(raw["split"]["test"]["values"])])
    assert test_images and not test_images & set(project.tiles(project.pool.ids(LABELLED)).image_id)
    assert set(project.heldout_tiles().image_id) == test_images


def test_a_project_round(ray_local, tiled, synth_dir, tmp_path):
    ws, catalog, _ = tiled
    config = _config(synth_dir)
    project = init_project(tmp_path / "al", config, ws.tiles)
    counts = project.pool.counts()
    # Every pool image came with a mask here, so all its tiles start labelled; unlabel most of
    # them to have something to select from (as if only a few tiles had masks).
    keep = project.pool.ids(LABELLED)[:6]
    project.pool.table.loc[~project.pool.table.tile_id.isin(keep), ["state", "round"]] = [UNLABELLED, -1]
    project.pool.save()
    project = load_project(tmp_path / "al", config, ws.tiles)
    assert counts[LABELLED] > 6 and project.pool.counts()[LABELLED] == 6

    ensemble, report = train_round_ensemble(project)
    assert len(ensemble.members) == 2 and all(m.exists() for m in ensemble.members)
    assert report.model.tolist() == ["ensemble", "member 0", "member 1"] and report.miou.between(0, 1).all()
    again, _ = train_round_ensemble(project)  # a restarted round reuses its ensemble
    assert again.version == ensemble.version

    # Class-balanced acquisition weighs by the classes of the labelled tiles' masks (from truth
    # here); the random baseline is scored as without it.
    tileset = load_tiles(ws.tiles)
    truth = np.concatenate(
        [
            np.asarray(tileset.mask_array(t.image_id)[tileset.grid(t.image_id).centre_slices(t.y, t.x)]).ravel()
            for _, t in project.tiles(keep).iterrows()
        ]
    )
    counts = np.bincount(truth[truth != IGNORE_INDEX], minlength=config.num_classes)
    np.testing.assert_allclose(labelled_class_weights(project), balanced_class_weights(counts))
    project.config = apply_overrides(config, {"al.class_balanced": True})
    balanced = score_round(project, ensemble).set_index(["acquisition", "tile_id"]).score
    project.config = config
    table = score_round(project, ensemble)
    plain = table.set_index(["acquisition", "tile_id"]).score
    pd.testing.assert_series_equal(balanced.loc["random"], plain.loc["random"])
    assert not np.allclose(balanced.loc["bald"], plain.loc["bald"].loc[balanced.loc["bald"].index])
    unlabelled = project.pool.ids(UNLABELLED)
    assert set(table.tile_id) == set(unlabelled) and set(table.acquisition) == {"bald", "random"}
    assert table.model_version.eq(ensemble.version).all()
    assert (table.predicted_boundary_px >= 0).all() and table.predicted_boundary_px.notna().all()
    selection = select_round(project)
    assert len(selection) == 4 and set(selection.tile_id) <= set(unlabelled)
    assert (project.round_dir(0) / "selection.csv").exists()
    # The cold start: under al.random_until labelled tiles the batch is the random baseline's
    # (no k-center either); from that many on, the acquisition's again.
    random = select_round(project, acquisition="random")
    project.config = apply_overrides(config, {"al.random_until": 7})
    cold = select_round(project)
    assert cold.tile_id.tolist() == random.tile_id.tolist() and set(cold.acquisition) == {"random"}
    project.config = apply_overrides(config, {"al.random_until": 6})
    warm = select_round(project)
    assert warm.tile_id.tolist() == selection.tile_id.tolist() and set(warm.acquisition) == {"bald"}
    project.config = config
    # A budget in expert minutes instead of k: nothing paid yet, so the prior prices the tiles.
    budgeted = select_round(project, budget_minutes=3)
    assert 1 <= len(budgeted) and budgeted.estimated_seconds.sum() <= 180
    assert budgeted.estimated_seconds.sum() + budgeted.estimated_seconds.min() > 180 or len(budgeted) == len(unlabelled)
    # The labelled tiles' embeddings are kept too: k-center starts from them, typiclust counts them.
    embeddings = pd.read_parquet(project.round_dir(0) / "embeddings.parquet")
    assert set(embeddings.index) == set(unlabelled) | set(project.pool.ids(LABELLED))
    # TypiClust: each candidate scored by its typicality, the batch chosen by clusters.
    project.config = apply_overrides(config, {"al.acquisition": "typiclust"})
    typical = score_round(project, ensemble)
    assert set(typical.acquisition) == {"random", "typiclust"}
    assert typical[typical.acquisition == "typiclust"].score.between(1 / 3, 1).all()
    pd.testing.assert_series_equal(
        typical.set_index(["acquisition", "tile_id"]).score.loc["random"], plain.loc["random"]
    )
    clustered = select_round(project)
    assert (
        len(clustered) == 4
        and set(clustered.tile_id) <= set(unlabelled)
        and set(clustered.acquisition) == {"typiclust"}
    )
    project.config = config


def _first_weights(path):
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return state["encoder.conv1.weight"]


def test_a_warm_started_round_starts_from_the_latest_earlier_ensemble(tiled, synth_dir, tmp_path):
    ws, _, _ = tiled
    project = init_project(tmp_path / "al", _config(synth_dir, warm_start=True), ws.tiles)
    project.pool.table.loc[project.pool.table.index[0], "round"] = 3  # round 3 is the current one
    assert project.current_round == 3 and previous_ensemble(project) is None

    def saved(round_):
        member = tmp_path / f"member-r{round_}.pt"
        member.write_bytes(b"weights")
        ensemble = Ensemble.from_files([member])
        project.round_dir(round_).mkdir(parents=True)
        ensemble.save(project.round_dir(round_))
        return ensemble

    first = saved(0)
    assert previous_ensemble(project).members == first.members
    latest = saved(2)  # round 1 never trained: skipped
    assert previous_ensemble(project).members == latest.members
    saved(3)  # the current round's own ensemble is not its start
    assert previous_ensemble(project).members == latest.members == [tmp_path / "member-r2.pt"]


def test_oracle_simulation_and_resume(ray_local, tiled, synth_dir, tmp_path):
    ws, _, _ = tiled
    # One member keeps it short (entropy needs no more); rounds warm-start from the last one.
    config = _config(synth_dir, members=1, warm_start=True)
    sim = Simulation(initial=4, batch=4, rounds=1, strategies=("entropy",), seeds=1)
    curve, summary, full = simulate(config, ws.tiles, tmp_path / "sim", sim)
    assert sorted(curve.strategy.unique()) == ["entropy", "random"]
    for _, run in curve.groupby("strategy"):
        assert run.labelled_tiles.tolist() == [4, 8]
        assert run.miou.between(0, 1).all()
    # Round 0 is shared: both strategies start from the same labelled tiles and ensemble.
    assert curve[curve["round"] == 0].model_version.nunique() == 1
    assert set(summary.strategy) == {"entropy", "random"} and summary.aulc.between(0, 1).all()
    assert (tmp_path / "sim" / "curve.png").exists() and (tmp_path / "sim" / "summary.csv").exists()
    assert (tmp_path / "sim" / "curve_seconds.png").stat().st_size > 10_000
    # The simulation's report: its curves, summary, and each strategy's project on one page.
    from microal.report.project import project_report

    page = project_report(tmp_path / "sim", tmp_path / "sim.html").read_text()
    assert page.count('<figure class="plot">') >= 2 + 2  # two curves, and each project's learning curve
    assert "Project entropy-s0" in page and "Project random-s0" in page and "full-pool" not in page
    assert "aulc_gap_ci90_low" in page
    # The oracle's simulated cost: at least the fixed share per tile, growing with the labels.
    for _, run in curve.groupby("strategy"):
        assert run.expert_seconds.is_monotonic_increasing and (run.expert_seconds >= 30 * run.labelled_tiles).all()
    # Warm start: round 1 fine-tuned the shared round-0 member, so no weight moved further than
    # its few Adam steps allow (a fresh start differs by the scale of the initial weights).
    training = config.training
    steps = training.epochs * training.samples_per_epoch // training.batch_size
    # Round 0 is trained by the first strategy's project and shared with the others.
    start = _first_weights(tmp_path / "sim" / "entropy-s0" / "rounds" / "round-0" / "member-0" / "best_model.pt")
    assert not (tmp_path / "sim" / "random-s0" / "rounds" / "round-0" / "member-0").exists()
    for strategy in ("entropy", "random"):
        member = tmp_path / "sim" / f"{strategy}-s0" / "rounds" / "round-1" / "member-0" / "best_model.pt"
        moved = (_first_weights(member) - start).abs().max()
        assert 0 < moved <= 4 * steps * training.lr
    # The whole-pool ceiling trains as long as the longest-trained round model: with warm start,
    # the epochs of all rounds together (2 rounds x 2 epochs), not one round's 2.
    reference = tmp_path / "sim" / "full-pool-4ep-s0" / "member-0" / "last_model.pt"
    history = torch.load(reference, map_location="cpu", weights_only=False)["history"]
    assert training.epochs == 2 and [row["epoch"] for row in history] == [1, 2, 3, 4] and 0 <= full <= 1

    stamp = reference.stat().st_mtime_ns
    again, _, full_again = simulate(config, ws.tiles, tmp_path / "sim", sim)
    pd.testing.assert_frame_equal(again, curve)  # nothing re-run, the reference neither
    assert full_again == full and reference.stat().st_mtime_ns == stamp


def test_rounds_under_random_until_are_trained_once_per_seed(ray_local, tiled, synth_dir, tmp_path):
    ws, _, _ = tiled
    # From 4 tiles, under 8: round 0's batch is random for both, so round 1 has the same 8 tiles.
    config = _config(synth_dir, members=1, random_until=8)
    sim = Simulation(initial=4, batch=4, rounds=2, strategies=("entropy",), seeds=1)
    curve, _, _ = simulate(config, ws.tiles, tmp_path / "sim", sim)
    versions = curve.groupby("round").model_version.nunique()
    assert versions.to_dict() == {0: 1, 1: 1, 2: 2}  # rounds 0 and 1 shared, round 2 each its own
    rounds_of = {s: tmp_path / "sim" / f"{s}-s0" / "rounds" for s in ("entropy", "random")}
    assert not (rounds_of["random"] / "round-1" / "member-0").exists()
    assert (rounds_of["random"] / "round-2" / "member-0").exists()
    chosen = {
        (strategy, r): pd.read_csv(rounds_of[strategy] / f"round-{r}" / "selection.csv")
        for strategy in rounds_of
        for r in (0, 1)
    }
    assert chosen["entropy", 0].tile_id.tolist() == chosen["random", 0].tile_id.tolist()
    assert set(chosen["entropy", 0].acquisition) == {"random"}
    assert set(chosen["entropy", 1].acquisition) == {"entropy"}
    assert chosen["entropy", 1].tile_id.tolist() != chosen["random", 1].tile_id.tolist()


def test_a_one_member_simulation_refuses_disagreement_acquisitions(synth_dir, tmp_path):
    config = _config(synth_dir, members=1)
    sim = Simulation(initial=4, batch=4, rounds=1, strategies=("entropy", "bald"), seeds=1)
    with pytest.raises(ConfigError, match=r"\['bald'\] measure disagreement .* al.members = 1"):
        simulate(config, tmp_path / "no-tiles-needed", tmp_path / "sim", sim)
    assert not (tmp_path / "sim").exists()


def test_initial_tiles_from_chosen_domains(tiled, synth_dir, tmp_path):
    pool = pd.DataFrame({"tile_id": [f"t{i}" for i in range(10)], "domain": ["A"] * 7 + ["B"] * 3})
    everything = Simulation(initial=2, batch=2, rounds=1, strategies=("entropy",), seeds=1)
    assert list(initial_candidates(pool, everything)) == list(pool.tile_id)
    only_b = Simulation(2, 2, 1, ("entropy",), 1, initial_domains=("B",))
    assert list(initial_candidates(pool, only_b)) == ["t7", "t8", "t9"]
    too_few = Simulation(4, 2, 1, ("entropy",), 1, initial_domains=("B",))
    with pytest.raises(ConfigError, match=r"4 initial tiles from domain\(s\) \['B'\].* 3 tiles .*\['A', 'B'\]"):
        initial_candidates(pool, too_few)
    # The synthetic set holds its light-optical domain B out as test images: no pool tile to start
    # from, refused before the simulation writes anything.
    ws, _, _ = tiled
    sim = Simulation(4, 4, 1, ("entropy",), 1, initial_domains=("B",))
    with pytest.raises(ConfigError, match=r"domain\(s\) \['B'\], but the pool holds 0 tiles"):
        simulate(_config(synth_dir, members=1), ws.tiles, tmp_path / "sim", sim)
    assert not (tmp_path / "sim").exists()


def test_reference_epochs(synth_dir):
    cold, warm = _config(synth_dir), _config(synth_dir, warm_start=True)  # 2 epochs a round
    sim = Simulation(initial=4, batch=4, rounds=3, strategies=("entropy",), seeds=1)
    assert sim.reference_epochs(cold) == 2 and sim.reference_epochs(warm) == 8
    assert Simulation(4, 4, 3, ("entropy",), 1, full_pool_epochs=5).reference_epochs(warm) == 5


def test_summary_measures():
    curve = pd.DataFrame(
        {
            "strategy": ["a"] * 3 + ["random"] * 3,
            "seed": 0,
            "round": [0, 1, 2] * 2,
            "pool_fraction": [0.1, 0.2, 0.3] * 2,
            "miou": [0.5, 0.7, 0.8, 0.5, 0.6, 0.7],
        }
    )
    summary = summarise(curve, full_pool_miou=0.8).set_index("strategy")
    assert summary.loc["a", "aulc"] == pytest.approx((0.6 + 0.75) / 2)
    assert summary.loc["a", "frac_tiles_to_95pct"] == pytest.approx(0.3)  # 0.8 >= 0.76 first at 0.3
    assert pd.isna(summary.loc["random", "frac_tiles_to_95pct"])  # never reached
    assert summary.seeds_reaching_95pct.to_dict() == {"a": 1, "random": 0}


def test_the_95_percent_fraction_is_read_off_the_mean_curve_over_seeds():
    # Seed 1 dips below 95% of 0.8 (0.76) at 0.2 where seed 0 is above: the mean (0.77) is
    # above, so the strategy gets there at 0.2; seed 1 alone reaches it only at 0.3.
    curve = pd.DataFrame(
        {
            "strategy": "a",
            "seed": [0, 0, 0, 1, 1, 1],
            "round": [0, 1, 2] * 2,
            "pool_fraction": [0.1, 0.2, 0.3] * 2,
            "miou": [0.5, 0.79, 0.8, 0.5, 0.75, 0.77],
        }
    )
    row = summarise(curve, full_pool_miou=0.8).iloc[0]
    assert row.frac_tiles_to_95pct == pytest.approx(0.2)
    assert row.seeds_reaching_95pct == 2 and row.seeds == 2
    assert pd.isna(summarise(curve, full_pool_miou=0.84).iloc[0].frac_tiles_to_95pct)  # mean peaks at 0.785 < 0.798


def test_the_aulc_gap_interval_pairs_each_seed_with_itself():
    # Seeds differ a lot (0.3 / 0.5 / 0.7: their starting tiles), the lead over random much less
    # (0.02 / 0.04 / 0.06): paired, the interval sees only the leads.
    rows = []
    for seed, (level, lead) in enumerate([(0.3, 0.02), (0.5, 0.04), (0.7, 0.06)]):
        for strategy, miou in (("random", level), ("a", level + lead)):
            for round_, fraction in enumerate((0.1, 0.2)):
                rows.append(
                    {"strategy": strategy, "seed": seed, "round": round_, "pool_fraction": fraction, "miou": miou}
                )
    curve = pd.DataFrame(rows)
    gap, low, high = aulc_gap_interval(curve, "a")
    assert gap == pytest.approx(0.04)
    assert 0.02 <= low < 0.04 < high <= 0.06
    summary = summarise(curve, full_pool_miou=0.9).set_index("strategy")
    assert summary.loc["a", "aulc_gap"] == pytest.approx(0.04) and summary.loc["a", "aulc_gap_ci90_low"] == low
    assert pd.isna(summary.loc["random", "aulc_gap"])
