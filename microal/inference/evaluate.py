"""Scoring predicted masks against expert masks: per image, per domain, and across domains (RDT)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from microal.config import ProjectConfig
from microal.data.imageio import read_catalog_image, read_catalog_mask, read_raw
from microal.errors import InputError, MicroalError
from microal.files import atomic_path, read_table
from microal.inference.predict import PREDICTION_INFO, PREDICTIONS_TABLE, run_splits
from microal.models.metrics import PixelCounts, phase_fractions, relative_domain_transferability
from microal.plots import overlay


@dataclass
class Evaluation:
    per_image: pd.DataFrame
    per_domain: pd.DataFrame


def _iou_columns(prefix: str, names: list[str], values) -> dict[str, float]:
    return {f"{prefix}{name}": float(v) for name, v in zip(names, values)}


def evaluate_predictions(
    predictions_dir: str | Path,
    catalog: pd.DataFrame,
    config: ProjectConfig,
    out_dir: str | Path,
    source_domain: str | None = None,
    source_miou: float | None = None,
    overlays: bool = True,
    progress: bool = True,
) -> Evaluation:
    predictions_dir, out_dir = Path(predictions_dir), Path(out_dir)
    table_path = predictions_dir / PREDICTIONS_TABLE
    if not table_path.exists():
        raise InputError(table_path, "no predictions table; run `microal predict` first")
    predictions = read_table(table_path)
    merged = predictions[["image_id", "mask_file"]].merge(catalog, on="image_id", how="inner")
    merged["split"] = _splits_of(predictions_dir, merged.image_id)
    merged = merged[merged.labelled.astype(bool)]
    if merged.empty:
        raise MicroalError(f"{table_path}: none of the predicted images has an expert mask in the catalog")
    names = config.class_names
    rows, counts_by_group = [], {}
    for _, row in tqdm(merged.iterrows(), total=len(merged), desc="evaluate", unit="image", disable=not progress):
        truth = read_catalog_mask(row, config.classes, config.ingest)
        mask_path = predictions_dir / row.mask_file
        pred = read_raw(mask_path)
        if pred.shape != truth.shape:
            raise InputError(mask_path, f"predicted mask {pred.shape} and expert mask {truth.shape} differ in size")
        counts = PixelCounts.from_masks(pred, truth, len(names))
        group = (row.domain, row.split)
        counts_by_group[group] = counts_by_group.get(group, PixelCounts.zeros(len(names))) + counts
        true_f, pred_f = phase_fractions(truth, len(names)), phase_fractions(pred, len(names))
        rows.append(
            {
                "image_name": row.image_name,
                "image_id": row.image_id,
                "domain": row.domain,
                "split": row.split,
                "miou": counts.miou(),
                **_iou_columns("iou_", names, counts.iou()),
                **_iou_columns("fraction_error_", names, pred_f - true_f),
                "mean_abs_fraction_error": float(np.abs(pred_f - true_f).mean()),
            }
        )
        if overlays:
            image = read_catalog_image(row, config.ingest)
            overlay(
                image,
                pred,
                truth,
                config.classes,
                out_dir / "overlays" / f"{Path(row.mask_file).stem}.png",
                title=f"{row.image_name} ({row.domain}): mIoU {counts.miou():.3f}",
            )
    per_image = pd.DataFrame(rows)
    per_domain = _per_domain(per_image, counts_by_group, names, source_domain, source_miou)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in (("per_image.csv", per_image), ("per_domain.csv", per_domain)):
        with atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, index=False)
    return Evaluation(per_image, per_domain)


def _splits_of(predictions_dir: Path, image_ids: pd.Series) -> pd.Series:
    """Each image's role in the training run behind the predictions ("-" when unknown).

    Scores on training images flatter a model; reporting the split keeps them apart from
    the held-out ones.
    """
    info_path = predictions_dir / PREDICTION_INFO
    if info_path.exists():
        splits = run_splits(json.loads(info_path.read_text())["model"])
        if splits is not None:
            return image_ids.map(splits).fillna("-").to_numpy()
    return pd.Series("-", index=image_ids.index).to_numpy()


def _reference_group(groups: list[tuple[str, str]], source_domain: str) -> tuple[str, str]:
    """The source domain's held-out images: its test split, else validation, else all of it."""
    for split in ("test", "val", "-"):
        if (source_domain, split) in groups:
            return source_domain, split
    raise MicroalError(f"--source-domain {source_domain!r}: no held-out image of that domain was evaluated")


def _per_domain(per_image, counts_by_group, names, source_domain, source_miou) -> pd.DataFrame:
    rows = []
    for (domain, split), counts in sorted(counts_by_group.items()):
        images = per_image[(per_image.domain == domain) & (per_image.split == split)]
        rows.append(
            {
                "domain": domain,
                "split": split,
                "images": len(images),
                "miou": counts.miou(),
                **_iou_columns("iou_", names, counts.iou()),
                "mean_abs_fraction_error": float(images.mean_abs_fraction_error.mean()),
            }
        )
    table = pd.DataFrame(rows)
    if source_domain is not None:
        source_miou = counts_by_group[_reference_group(list(counts_by_group), source_domain)].miou()
    if source_miou is not None:
        table["rdt"] = [relative_domain_transferability(m, source_miou) for m in table.miou]
    return table


def format_table(frame: pd.DataFrame) -> str:
    return frame.to_string(index=False, float_format=lambda v: f"{v:.3f}")
