"""The report of an active-learning project (or of an oracle simulation): learning curves against
labelled tiles and expert time, the rounds, who labelled what, how far annotators agreed, and
what the labels cost. It reads the project folder only (layout: microal.active.folders)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from microal.active.folders import (
    POOL_FILE,
    REPORT_FILE,
    SELECTION_FILE,
    TIMINGS_FILE,
    ProjectFolders,
    SimulationFolders,
)
from microal.errors import InputError
from microal.files import read_table
from microal.plots import plt
from microal.report.html import Page


def project_rounds(folders: ProjectFolders) -> pd.DataFrame:
    """One row per trained round: the labels its ensemble learned from (tiles labelled in an
    earlier round or at the start), their expert minutes, and its held-out mIoU."""
    pool = pd.read_parquet(folders.pool)
    costs = pd.read_parquet(folders.costs) if folders.costs.exists() else pd.DataFrame(columns=["tile_id", "seconds"])
    seconds = costs.groupby("tile_id").seconds.sum()
    rows = []
    for round_ in folders.rounds_with(REPORT_FILE) or folders.rounds_with(SELECTION_FILE):
        folder = folders.round(round_)
        labelled = pool[(pool.state == "labelled") & (pool["round"] <= round_)].tile_id
        row = {
            "round": round_,
            "labelled_tiles": len(labelled),
            "pool_fraction": len(labelled) / max(len(pool), 1),
            "expert_minutes": float(seconds.reindex(labelled).fillna(0).sum()) / 60,
        }
        if (folder / REPORT_FILE).exists():
            report = read_table(folder / REPORT_FILE)
            row["heldout_miou"] = float(report.miou.iloc[0])
            row["mean_member_miou"] = float(report.miou.iloc[1:].mean()) if len(report) > 1 else row["heldout_miou"]
        if (folder / SELECTION_FILE).exists():
            row["selected"] = len(read_table(folder / SELECTION_FILE))
        if (folder / TIMINGS_FILE).exists():
            row["round_seconds"] = sum(
                v for k, v in json.loads((folder / TIMINGS_FILE).read_text()).items() if k in ROUND_STEPS
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    if "selected" in table:
        table["selected"] = table.selected.astype("Int64")  # the last round selects nothing
    return table


ROUND_STEPS = ("pull", "train", "score", "select", "hand_over", "push")  # what a round's wall time is made of


def _curves_figure(rounds: pd.DataFrame):
    fig, (ax_tiles, ax_time) = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    ax_tiles.plot(rounds.labelled_tiles, rounds.heldout_miou, "o-")
    ax_tiles.set(xlabel="labelled tiles", ylabel="held-out mIoU", title="against tiles")
    ax_time.plot(rounds.expert_minutes, rounds.heldout_miou, "o-", color="C1")
    ax_time.set(xlabel="expert minutes", title="against expert time")
    for ax, column in ((ax_tiles, "labelled_tiles"), (ax_time, "expert_minutes")):
        for _, row in rounds.iterrows():
            ax.annotate(f"r{int(row['round'])}", (row[column], row.heldout_miou), fontsize=8)
    return fig


def _cost_figure(costs: pd.DataFrame):
    fig, (ax_hist, ax_round) = plt.subplots(1, 2, figsize=(10, 3.4))
    for source, group in costs.groupby("source"):
        ax_hist.hist(group.seconds, bins=20, alpha=0.7, label=source)
    ax_hist.set(xlabel="seconds per tile", ylabel="tiles", title="label cost per tile")
    ax_hist.legend(fontsize=8)
    per_round = costs.pivot_table(index="round", columns="annotator", values="seconds", aggfunc="sum").fillna(0) / 60
    per_round.plot.bar(stacked=True, ax=ax_round)
    ax_round.set(xlabel="round", ylabel="expert minutes", title="expert time per round and annotator")
    return fig


def _project_sections(page: Page, folders: ProjectFolders) -> None:
    rounds = project_rounds(folders)
    page.heading("Learning curve")
    evaluated = rounds.dropna(subset=["heldout_miou"]) if "heldout_miou" in rounds else rounds.iloc[:0]
    if len(evaluated) >= 2:
        page.figure(_curves_figure(evaluated), "Held-out mIoU of each round's ensemble")
    elif len(evaluated) == 1:
        page.missing(
            f"One round so far (held-out mIoU {evaluated.heldout_miou.iloc[0]:.3f}): the curve starts with the next."
        )
    else:
        page.missing("No round has been evaluated on held-out tiles yet (the project needs held-out images).")
    page.heading("Rounds")
    if rounds.empty:
        page.missing("No round has run yet: `microal al run` or `al ensemble`.")
    else:
        page.table(rounds, "Each round: labels it trained on, their cost, held-out mIoU, tiles it selected, seconds")
    pool = pd.read_parquet(folders.pool)
    page.table(
        pool.groupby(["domain", "state"]).size().rename("tiles").reset_index(), "The pool: tiles per domain and state"
    )

    page.heading("Who labelled what")
    costs = pd.read_parquet(folders.costs) if folders.costs.exists() else pd.DataFrame()
    if costs.empty:
        page.missing("No label cost recorded yet.")
    else:
        by_annotator = (
            costs.groupby("annotator")
            .agg(tiles=("tile_id", "nunique"), minutes=("seconds", "sum"), median_s_per_tile=("seconds", "median"))
            .reset_index()
        )
        by_annotator["minutes"] /= 60
        page.table(by_annotator, "Tiles and expert time per annotator")
        page.heading("Label cost")
        page.figure(_cost_figure(costs), "Seconds per tile (Label Studio lead time, or the simulated oracle)")
    page.heading("Agreement")
    shared = pool[pool.annotators.fillna(0) >= 2] if "annotators" in pool else pool.iloc[:0]
    if shared.empty:
        page.missing("No tile was labelled by two or more annotators, so there is no agreement to show.")
    else:
        agreement = shared.groupby("round").agg(tiles=("tile_id", "size"), mean_agreement=("agreement", "mean"))
        page.table(agreement.reset_index(), "Tiles with several annotators: mean pixel agreement per round")


def _simulation_sections(page: Page, folders: SimulationFolders) -> None:
    page.heading("Learning curves, acquisitions against random")
    for plot, caption in (
        (folders.curve_plot, "against labelled tiles"),
        (folders.curve_seconds_plot, "against expert time"),
    ):
        if plot.exists():
            page.figure(plot, f"Held-out mIoU {caption}, mean over seeds")
    if folders.summary.exists():
        page.table(pd.read_csv(folders.summary), "Per strategy: AULC, its gap to random with a 90% interval", digits=4)
    curve = read_table(folders.curve)
    page.table(
        curve.pivot_table(index=["round"], columns=["strategy", "seed"], values="miou").reset_index(),
        "Held-out mIoU per round, strategy and seed",
    )
    for project in sorted(p for p in folders.root.iterdir() if (p / POOL_FILE).exists()):
        if project.name.startswith("full-pool"):
            continue
        page.heading(f"Project {project.name}", level=2)
        _project_sections(page, ProjectFolders(project))


def project_report(folder: str | Path, out: str | Path) -> Path:
    """Write the report of the project (or simulation) in `folder` to `out`; return its path."""
    folder = Path(folder)
    simulation = SimulationFolders(folder)
    if simulation.curve.exists():
        page = Page(f"microal active-learning simulation: {folder.name}")
        _simulation_sections(page, simulation)
    elif (folder / POOL_FILE).exists():
        page = Page(f"microal active-learning project: {folder.name}")
        _project_sections(page, ProjectFolders(folder))
    else:
        raise InputError(folder, f"neither an active-learning project ({POOL_FILE}) nor a simulation (curve.csv)")
    return page.write(out)
