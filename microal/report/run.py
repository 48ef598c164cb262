"""The report of one training run: what it learned, how well it segments each domain and split,
the phase fractions it measures (with 95% intervals), where it fails and where it is unsure.

It reads what the steps wrote (runs/<name>, predictions/<name>, evaluation/<name>) and says
which command adds a missing part.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from microal.config import ProjectConfig
from microal.data.catalog import read_catalog
from microal.data.imageio import read_catalog_image, read_raw
from microal.files import read_table
from microal.inference.predict import PREDICTION_INFO, PREDICTIONS_TABLE
from microal.models.model_file import MODEL_FILE, load_model
from microal.plots import colorize, plt
from microal.report.html import Page
from microal.workspace import Workspace

SHOWN_IMAGES = 4  # worst and most uncertain images shown


def collection_fractions(predictions: pd.DataFrame, names: list[str], draws: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean phase fraction per domain with a 95% bootstrap interval over its images."""
    rng = np.random.default_rng(seed)
    rows = []
    for domain, group in predictions.groupby("domain"):
        values = group[[f"fraction_{n}" for n in names]].to_numpy()
        means = values[rng.integers(len(values), size=(draws, len(values)))].mean(1)
        for index, name in enumerate(names):
            rows.append(
                {
                    "domain": domain,
                    "images": len(values),
                    "class": name,
                    "fraction": values[:, index].mean(),
                    "low_95": np.percentile(means[:, index], 2.5),
                    "high_95": np.percentile(means[:, index], 97.5),
                }
            )
    return pd.DataFrame(rows)


def _iou_figure(per_domain: pd.DataFrame, names: list[str]):
    fig, ax = plt.subplots(figsize=(9, 3.6))
    groups = [f"{d} / {s}" for d, s in zip(per_domain.domain, per_domain.split)]
    width = 0.8 / (len(names) + 1)
    x = np.arange(len(groups))
    for index, name in enumerate(names):
        ax.bar(x + index * width, per_domain[f"iou_{name}"], width, label=name)
    ax.bar(x + len(names) * width, per_domain.miou, width, color="k", label="mIoU")
    ax.set_xticks(x + 0.4 - width / 2, groups)
    ax.set(ylim=(0, 1), ylabel="IoU", title="IoU per class, by domain / split")
    ax.legend(fontsize=8, ncol=len(names) + 1)
    return fig


def _fractions_figure(predictions: pd.DataFrame, truth: pd.DataFrame | None, names: list[str]):
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 0.25 * len(predictions) + 1.6), sharey=True)
    axes = np.atleast_1d(axes)
    y = np.arange(len(predictions))
    for ax, name in zip(axes, names):
        value = predictions[f"fraction_{name}"]
        error = [value - predictions[f"fraction_{name}_low"], predictions[f"fraction_{name}_high"] - value]
        ax.errorbar(value, y, xerr=error, fmt="o", ms=4, capsize=2, label="predicted, 95% interval")
        if truth is not None:
            expert = predictions.image_id.map(truth.set_index("image_id")[f"fraction_error_{name}"])
            ax.plot(value - expert, y, "kx", label="expert mask")
        ax.set(title=name, xlabel="area fraction")
    axes[0].set_yticks(y, predictions.image_name, fontsize=7)
    axes[0].legend(fontsize=7, loc="best")
    return fig


def _uncertainty_figure(rows: pd.DataFrame, catalog: pd.DataFrame, predictions_dir: Path, config: ProjectConfig):
    fig, axes = plt.subplots(len(rows), 3, figsize=(10, 3.2 * len(rows)), squeeze=False)
    for (ax_image, ax_mask, ax_map), (_, row) in zip(axes, rows.iterrows()):
        image = read_catalog_image(catalog.loc[row.image_id], config.ingest)
        ax_image.imshow(image, cmap="gray")
        ax_image.set_title(f"{row.image_name} ({row.domain})", fontsize=9)
        ax_mask.imshow(colorize(read_raw(predictions_dir / row.mask_file), config.classes))
        ax_mask.set_title("prediction", fontsize=9)
        shown = ax_map.imshow(read_raw(predictions_dir / row.uncertainty_file) / 255.0, cmap="inferno", vmin=0, vmax=1)
        ax_map.set_title(f"uncertainty (mean {row.mean_uncertainty:.2f})", fontsize=9)
        fig.colorbar(shown, ax=ax_map, fraction=0.046)
        for ax in (ax_image, ax_mask, ax_map):
            ax.axis("off")
    return fig


def run_report(ws: Workspace, name: str, out: str | Path | None = None) -> Path:
    """Write the run's report (default <workdir>/reports/<name>.html) and return its path."""
    run_dir, predictions_dir, evaluation_dir = ws.run(name), ws.predictions(name), ws.evaluation(name)
    model_file = run_dir / f"best_{MODEL_FILE}"
    info_file = predictions_dir / PREDICTION_INFO
    if not model_file.exists() and info_file.exists():
        model_file = Path(json.loads(info_file.read_text())["model"])
    model = load_model(model_file)  # raises a clear error when there is neither
    config, names = model.config, model.config.class_names
    page = Page(f"microal run report: {name}")
    page.text(f"Model {model_file} (epoch {model.epoch}); classes: {', '.join(names)}.")

    page.heading("Training")
    if (run_dir / "learning_curve.png").exists():
        page.figure(run_dir / "learning_curve.png", "Loss and validation IoU against epoch")
    else:
        page.missing(f"No learning curve in {run_dir}: train with `microal train --name {name}`.")
    if (run_dir / "splits.csv").exists():
        splits = read_table(run_dir / "splits.csv")
        counts = (
            splits.groupby(["domain", "split"]).size().rename("images").reset_index() if "domain" in splits else None
        )
        if counts is not None:
            page.table(counts, "Images per domain and split")

    page.heading("Segmentation quality by domain and split")
    per_domain_file, per_image_file = evaluation_dir / "per_domain.csv", evaluation_dir / "per_image.csv"
    per_image = None
    if per_domain_file.exists():
        per_domain = read_table(per_domain_file)
        page.figure(_iou_figure(per_domain, names), "IoU per class by domain and split")
        page.table(per_domain, "mIoU, IoU per class, mean absolute phase-fraction error, RDT (relative to the source)")
        per_image = read_table(per_image_file)
    else:
        page.missing(f"Not evaluated: run `microal evaluate --name {name}` (needs expert masks).")

    page.heading("Phase fractions")
    predictions = None
    if (predictions_dir / PREDICTIONS_TABLE).exists():
        predictions = read_table(predictions_dir / PREDICTIONS_TABLE)
        if f"fraction_{names[0]}_low" in predictions:
            page.figure(
                _fractions_figure(predictions, per_image, names),
                "Predicted area fraction per image with its 95% interval (bootstrap over the image's blocks"
                " and, for an ensemble, its members); x: the expert mask's fraction",
            )
            page.table(
                collection_fractions(predictions, names),
                "Mean fraction per domain, 95% bootstrap interval over the images",
            )
        else:
            page.missing("These predictions have no intervals: predict again with this version of microal.")
    else:
        page.missing(f"No predictions: run `microal predict --name {name}`.")

    page.heading("Worst images")
    if per_image is not None and not per_image.empty:
        worst = per_image.sort_values("miou").head(SHOWN_IMAGES)
        page.table(worst[["image_name", "domain", "split", "miou", "mean_abs_fraction_error"]], "Lowest mIoU")
        overlays = evaluation_dir / "overlays"
        masks = predictions.set_index("image_id").mask_file if predictions is not None else pd.Series(dtype=str)
        for _, row in worst.iterrows():
            overlay_file = overlays / f"{Path(str(masks.get(row.image_id, ''))).stem}.png"
            if overlay_file.is_file():
                page.figure(overlay_file, f"{row.image_name} ({row.domain}, {row.split}): mIoU {row.miou:.3f}")
    else:
        page.missing("No per-image scores: evaluate the predictions to see the worst images.")

    page.heading("Where the model is unsure")
    if predictions is not None and "uncertainty_file" in predictions:
        catalog = read_catalog(ws.catalog).set_index("image_id", drop=False)
        unsure = predictions[predictions.image_id.isin(catalog.index)].nlargest(SHOWN_IMAGES, "mean_uncertainty")
        if not unsure.empty:
            page.figure(
                _uncertainty_figure(unsure, catalog, predictions_dir, config),
                "The most uncertain images: micrograph, prediction, entropy of the mean prediction (0-1)",
            )
    else:
        page.missing(f"No uncertainty maps: run `microal predict --name {name}`.")
    return page.write(Path(out) if out else ws.report(name))
