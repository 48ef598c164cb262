"""`microal demo`: the whole supervised pipeline on generated data, locally, in a few minutes."""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path

from microal import console
from microal.active.ensemble import Ensemble
from microal.active.labellers import OracleLabeller
from microal.active.rounds import create_project, run_round
from microal.active.scoring import TileScorer
from microal.config import apply_overrides, load_config
from microal.data.catalog import ingest
from microal.data.synth import generate
from microal.data.tiles import build_tiles, load_tiles
from microal.files import read_table
from microal.inference.evaluate import evaluate_predictions, format_table
from microal.inference.predict import predict_catalog
from microal.plots import batch_for_expert
from microal.report.project import project_report
from microal.report.run import run_report
from microal.training.jobs import train
from microal.workspace import Workspace

RUN_NAME = "demo"


def run_demo(out: str | Path | None = None, epochs: int | None = None) -> Path:
    started = time.time()
    out = Path(out or f"microal-demo-{datetime.now():%Y%m%d-%H%M%S}").resolve()
    console.configure(verbose=console.verbose(), log_file=out / "microal.log")
    print(f"microal demo: everything goes to {out} (Ray's own lines: {out / 'microal.log'})\n", flush=True)

    print("1/8 synth: two domains, A (SEM-like, 0.100 µm/px) and B (light-optical-like, 0.125 µm/px)", flush=True)
    manifest = generate(out / "data")
    config = load_config(out / "data" / "microal.yaml")
    if epochs is not None:
        config = config.model_copy(update={"training": config.training.model_copy(update={"epochs": epochs})})
    ws = Workspace.at(out / "work")

    print("2/8 ingest", flush=True)
    catalog, _ = ingest(manifest, config, ws.catalog)
    print(f"3/8 tile at {config.tiling.target_um_per_px} µm/px", flush=True)
    build_tiles(catalog, config, ws.tiles)
    print("4/8 train (Ray Train, local)", flush=True)
    summary = train(config, ws.tiles, ws.run(RUN_NAME), str(ws.ray_storage), RUN_NAME)
    print("5/8 predict every image at full size, with uncertainty maps and phase-fraction intervals", flush=True)
    predict_catalog(summary.best_model, catalog, ws.predictions(RUN_NAME))
    print("6/8 evaluate (held-out images are split 'test'; RDT relative to domain A's test images)", flush=True)
    result = evaluate_predictions(ws.predictions(RUN_NAME), catalog, config, ws.evaluation(RUN_NAME), source_domain="A")

    print("\nresults by domain and split:\n" + format_table(result.per_domain))

    print("\n7/8 active learning: one simulated round on the held-out images' tiles (masks hidden)", flush=True)
    batch_figure = next_batch(config, ws, summary, seed=0)
    print("8/8 reports", flush=True)
    run_html = run_report(ws, RUN_NAME)
    project_html = project_report(ws.al(RUN_NAME), ws.report(f"al-{RUN_NAME}"))
    print(
        f"\nfinished in {(time.time() - started) / 60:.1f} min. Look at:\n"
        f"  the run's report      {run_html}   <- start here\n"
        f"  next batch to label   {batch_figure}\n"
        f"  active-learning round {project_html}\n"
        f"  predicted masks       {ws.predictions(RUN_NAME) / 'masks'} (uncertainty maps beside them)\n"
        f"  tables                {ws.evaluation(RUN_NAME)}, {ws.predictions(RUN_NAME) / 'predictions.csv'}"
    )
    return out


def next_batch(config, ws: Workspace, summary, seed: int) -> Path:
    """One round of the experts' loop with the oracle as labeller: the trained model scores the
    tiles of the images it never trained on, selects a batch, and the figure shows what an
    expert would be handed: each tile with its pre-annotation and uncertainty map."""
    splits = read_table(summary.run_dir / "splits.csv")
    unseen = set(splits.image_id[splits.split == "test"])
    tileset = load_tiles(ws.tiles)
    tiles = tileset.tiles
    pool_tiles = tiles[tiles.image_id.isin(unseen) & tiles.labelled]
    root = ws.al(RUN_NAME)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    # One trained model, so the acquisition is its predictive entropy (BALD needs several members).
    config = apply_overrides(config, {"al.acquisition": "entropy"}, source="microal demo")
    project = create_project(root, config, ws.tiles, pool_tiles, seed=seed)
    model = Ensemble.from_files([summary.best_model])
    outcome = run_round(project, OracleLabeller(), members=model, select=True)
    chosen = outcome.selection.tile_id.tolist()
    images, masks, uncertainty = TileScorer(model.member_files, str(ws.tiles)).previews(chosen)
    image_names = tileset.images.set_index("image_id").image_name
    chosen_tiles = tileset.tiles.set_index("tile_id").loc[chosen]
    titles = [f"{image_names[t.image_id]}\nrow {t.row} col {t.col}" for t in chosen_tiles.itertuples()]
    path = root / "next_batch.png"
    batch_for_expert(images, masks, uncertainty, config.classes, titles, path)
    expert_seconds = project.costs.seconds_by_tile().reindex(chosen).sum()
    print(
        f"  {len(chosen)} of {len(pool_tiles)} unseen tiles chosen by {config.al.acquisition}; an expert would "
        f"spend about {expert_seconds / 60:.0f} min on them (simulated: 30 s + 10 s per 100 px of boundary)",
        flush=True,
    )
    return path
