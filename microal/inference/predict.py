"""Full-size predictions: resample to the model's scale, tile, predict centres, stitch, resample back.

A microal model file carries its project config (classes, tiling, model), so predicting
needs only the model file and the images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from microal.data.datasets import standardise
from microal.data.imageio import read_image
from microal.data.preprocess import image_stats, prepare_intensities
from microal.data.tiling import TileGrid, resample_image, resample_probabilities, scale_factor
from microal.errors import InputError
from microal.files import atomic_path, write_text_atomic
from microal.models.domain_bn import domain_statistics
from microal.models.metrics import phase_fractions
from microal.models.model_file import LoadedModel, load_model

PREDICTIONS_TABLE = "predictions.csv"
PREDICTION_INFO = "prediction_info.json"  # which model made the predictions


@torch.no_grad()
def predict_probabilities(
    model: LoadedModel,
    image: np.ndarray,
    um_per_px: float | None,
    batch_size: int = 8,
    source: str = "image",
    domain: str = "default",
) -> np.ndarray:
    """Class probabilities [C, H, W] at the image's own size, prepared exactly as in training."""
    config = model.config
    tiling = config.tiling
    factor = scale_factor(um_per_px, tiling)
    if factor is None:
        raise InputError(source, f"no pixel size, but the model works at {tiling.target_um_per_px} µm/px")
    image = prepare_intensities(image, domain, config.preprocess)
    resampled = resample_image(image, factor, tiling.image_interpolation)
    grid = TileGrid(resampled.shape[0], resampled.shape[1], tiling.tile_size, tiling.margin)
    mean, std = image_stats(resampled)
    if config.preprocess.normalize == "domain" and domain in model.domain_stats:
        mean, std = model.domain_stats[domain]
    padded = standardise(grid.pad_image(resampled), mean, std)
    device = next(model.net.parameters()).device
    positions = list(grid.positions())
    centres = {}
    with domain_statistics(model.net, model.bn_stats.get(domain)):
        for start in range(0, len(positions), batch_size):
            chunk = positions[start : start + batch_size]
            batch = np.stack([padded[grid.window_slice(y, x)] for _, _, y, x in chunk])[:, None]
            probs = torch.softmax(model.forward(torch.from_numpy(batch).to(device)), dim=1).cpu().numpy()
            for (row, col, _, _), p in zip(chunk, probs):
                centres[(row, col)] = grid.centre(p)
    return resample_probabilities(grid.stitch(centres), image.shape)


def write_mask_png(mask: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(np.uint8)).save(tmp, format="PNG")


def predict_catalog(
    model_path: str | Path, catalog: pd.DataFrame, out_dir: str | Path, progress: bool = True, batch_size: int = 8
) -> pd.DataFrame:
    """Write <out>/masks/<name>.png (class indices) and the per-image phase-fraction table."""
    model = load_model(model_path)
    out_dir = Path(out_dir)
    names = model.config.class_names
    rows = []
    for _, row in tqdm(catalog.iterrows(), total=len(catalog), desc="predict", unit="image", disable=not progress):
        image = read_image(row.image_path, model.config.ingest)
        um_per_px = None if pd.isna(row.um_per_px) else float(row.um_per_px)
        probs = predict_probabilities(
            model, image, um_per_px, batch_size, source=row.image_path, domain=str(row.domain)
        )
        mask = probs.argmax(0).astype(np.uint8)
        mask_file = out_dir / "masks" / f"{Path(row.image_name).stem}_{row.image_id[:8]}.png"
        write_mask_png(mask, mask_file)
        fractions = phase_fractions(mask, len(names))
        rows.append(
            {
                "image_id": row.image_id,
                "image_name": row.image_name,
                "domain": row.domain,
                "mask_file": str(mask_file.relative_to(out_dir)),
                **{f"fraction_{name}": float(f) for name, f in zip(names, fractions)},
            }
        )
    table = pd.DataFrame(rows)
    with atomic_path(out_dir / PREDICTIONS_TABLE) as tmp:
        table.to_csv(tmp, index=False)
    info = {"model": str(model.path.resolve()), "epoch": model.epoch, "metrics": model.metrics}
    write_text_atomic(out_dir / PREDICTION_INFO, json.dumps(info, indent=2, default=float))
    return table
