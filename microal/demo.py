"""`microal demo`: the whole supervised pipeline on generated data, locally, in a few minutes."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from microal.config import load_config
from microal.data.catalog import ingest
from microal.data.synth import generate
from microal.data.tiles import build_tiles
from microal.inference.evaluate import evaluate_predictions, format_table
from microal.inference.predict import predict_catalog
from microal.training.jobs import train
from microal.workspace import Workspace

RUN_NAME = "demo"


def run_demo(out: str | Path | None = None, epochs: int | None = None) -> Path:
    started = time.time()
    out = Path(out or f"microal-demo-{datetime.now():%Y%m%d-%H%M%S}").resolve()
    print(f"microal demo: everything goes to {out}\n", flush=True)

    print("1/6 synth: two domains, A (SEM-like, 0.100 µm/px) and B (light-optical-like, 0.125 µm/px)", flush=True)
    manifest = generate(out / "data")
    config = load_config(out / "data" / "microal.yaml")
    if epochs is not None:
        config = config.model_copy(update={"training": config.training.model_copy(update={"epochs": epochs})})
    ws = Workspace.at(out / "work")

    print("2/6 ingest", flush=True)
    catalog, _ = ingest(manifest, config, ws.catalog)
    print(f"3/6 tile at {config.tiling.target_um_per_px} µm/px", flush=True)
    build_tiles(catalog, config, ws.tiles)
    print("4/6 train (Ray Train, local)", flush=True)
    summary = train(config, ws.tiles, ws.run(RUN_NAME), str(ws.ray_storage), RUN_NAME)
    print("5/6 predict every image at full size", flush=True)
    predict_catalog(summary.best_model, catalog, ws.predictions(RUN_NAME))
    print("6/6 evaluate (held-out images are split 'test'; RDT relative to domain A's test images)", flush=True)
    result = evaluate_predictions(ws.predictions(RUN_NAME), catalog, config, ws.evaluation(RUN_NAME), source_domain="A")

    print("\nresults by domain and split:\n" + format_table(result.per_domain))
    print(
        f"\nfinished in {(time.time() - started) / 60:.1f} min. Look at:\n"
        f"  learning curve  {summary.run_dir / 'learning_curve.png'}\n"
        f"  overlays        {ws.evaluation(RUN_NAME) / 'overlays'}\n"
        f"  predicted masks {ws.predictions(RUN_NAME) / 'masks'}\n"
        f"  tables          {ws.evaluation(RUN_NAME)}"
    )
    return out
