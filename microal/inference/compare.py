"""`microal compare`: several runs (e.g. source-only, AdaptSegNet, ADVENT) scored on the same
images, as one table per domain and one figure of overlays side by side."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from microal.config import ProjectConfig
from microal.data.imageio import read_catalog_image, read_catalog_mask, read_raw
from microal.files import atomic_path, read_table
from microal.inference.evaluate import evaluate_predictions
from microal.inference.predict import PREDICTIONS_TABLE, predict_catalog
from microal.plots import side_by_side
from microal.workspace import Workspace


def compare_runs(
    ws: Workspace,
    catalog: pd.DataFrame,
    config: ProjectConfig,
    runs: list[str],
    out: Path,
    source_domain: str | None = None,
    figure_domain: str | None = None,
    figure_images: int = 3,
) -> pd.DataFrame:
    """Predict (where not done yet) and evaluate each run; write compare.csv and compare.png."""
    tables, predictions = [], {}
    for run in runs:
        pred_dir = ws.predictions(run)
        if not (pred_dir / PREDICTIONS_TABLE).exists():
            predict_catalog(ws.run(run) / "best_model.pt", catalog, pred_dir, progress=False)
        result = evaluate_predictions(
            pred_dir, catalog, config, ws.evaluation(run), source_domain=source_domain, overlays=False, progress=False
        )
        tables.append(result.per_domain.assign(run=run))
        predictions[run] = read_table(pred_dir / PREDICTIONS_TABLE).set_index("image_id").mask_file
    table = pd.concat(tables, ignore_index=True)
    table = table[["run"] + [c for c in table.columns if c != "run"]]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "compare.csv") as tmp:
        table.to_csv(tmp, index=False)

    labelled = catalog[catalog.labelled.astype(bool)]
    if figure_domain is not None:
        labelled = labelled[labelled.domain.astype(str) == figure_domain]
    rows = []
    for _, row in labelled.head(figure_images).iterrows():
        masks = {run: read_raw(ws.predictions(run) / predictions[run][row.image_id]) for run in runs}
        rows.append(
            (
                f"{row.image_name} ({row.domain})",
                read_catalog_image(row, config.ingest),
                read_catalog_mask(row, config.classes, config.ingest),
                masks,
            )
        )
    if rows:
        side_by_side(rows, config.classes, out / "compare.png")
    return table
