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
from microal.data.imageio import read_catalog_image
from microal.data.preprocess import image_stats, prepare_intensities
from microal.data.tiling import TileGrid, resample_image, resample_probabilities, scale_factor
from microal.errors import InputError, MicroalError
from microal.files import atomic_path, read_table, write_text_atomic
from microal.models.domain_bn import domain_statistics
from microal.models.metrics import phase_fractions
from microal.models.model_file import MODEL_FILE, LoadedModel, load_model

PREDICTIONS_TABLE = "predictions.csv"
PREDICTION_INFO = "prediction_info.json"  # which model made the predictions
MEMBERS_FILE = "members.json"  # an ensemble's member files (written by microal.active.ensemble)


# (quarter turns, flipped left-right) of each view; "flips" holds the identity, both mirror
# images and the half turn (the two mirrors together), "dihedral" all eight symmetries of a square.
TTA_VIEWS = {
    "none": [(0, False)],
    "flips": [(0, False), (0, True), (2, False), (2, True)],
    "dihedral": [(turns, flip) for turns in range(4) for flip in (False, True)],
}


def _view(batch: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    if flip:
        batch = batch.flip(-1)
    return torch.rot90(batch, turns, dims=(-2, -1))


def _unview(batch: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    batch = torch.rot90(batch, -turns, dims=(-2, -1))
    return batch.flip(-1) if flip else batch


@torch.no_grad()
def window_probabilities(model: LoadedModel, batch: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """Softmax of a batch of square windows [B, 1, H, W], averaged over the test-time views
    (model.tta), each view's output mapped back onto the window."""
    views = TTA_VIEWS[tta]
    total = None
    for turns, flip in views:
        probs = _unview(torch.softmax(model.forward(_view(batch, turns, flip)), dim=1), turns, flip)
        total = probs if total is None else total + probs
    return total / len(views)


@torch.no_grad()
def predict_probabilities(
    model: LoadedModel,
    image: np.ndarray,
    um_per_px: float | None,
    batch_size: int = 8,
    source: str = "image",
    domain: str = "default",
    tta: str | None = None,
) -> np.ndarray:
    """Class probabilities [C, H, W] at the image's own size, prepared exactly as in training,
    with the model's test-time augmentation (model.tta) unless `tta` names another."""
    config = model.config
    tta = tta or config.model.tta
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
            probs = window_probabilities(model, torch.from_numpy(batch).to(device), tta).cpu().numpy()
            for (row, col, _, _), p in zip(chunk, probs):
                centres[(row, col)] = grid.centre(p)
    return resample_probabilities(grid.stitch(centres), image.shape)


def write_mask_png(mask: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(np.uint8)).save(tmp, format="PNG")


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of a [C, H, W] distribution divided by log C: 0 = certain, 1 = uniform."""
    entropy = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(0)
    return entropy / np.log(probs.shape[0])


def block_class_counts(mask: np.ndarray, num_classes: int, block: int) -> np.ndarray:
    """Pixels of each class in each block x block square of `mask`: [blocks, C]."""
    h, w = mask.shape
    rows, cols = -(-h // block), -(-w // block)
    block_index = (np.arange(h)[:, None] // block) * cols + (np.arange(w)[None, :] // block)
    flat = block_index.ravel() * num_classes + mask.ravel().astype(np.int64)
    return np.bincount(flat, minlength=rows * cols * num_classes).reshape(rows * cols, num_classes)


def fraction_interval(
    member_masks: list[np.ndarray], num_classes: int, block: int, draws: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """95% interval of each phase fraction: each draw takes one member at random (the models'
    disagreement) and resamples the image's blocks with replacement (how much the fraction
    depends on which part of the field of view was imaged)."""
    counts = np.stack([block_class_counts(m, num_classes, block) for m in member_masks])  # [M, B, C]
    members, blocks = counts.shape[:2]
    member = rng.integers(members, size=draws)
    chosen = rng.integers(blocks, size=(draws, blocks))
    totals = counts[member[:, None], chosen].sum(1).astype(np.float64)  # [draws, C]
    fractions = totals / np.maximum(totals.sum(1, keepdims=True), 1)
    return np.percentile(fractions, 2.5, axis=0), np.percentile(fractions, 97.5, axis=0)


def member_model_files(paths: list[str | Path]) -> list[Path]:
    """Model files from what a user names: model files, run folders (their best model), or
    folders with an ensemble's members.json (an active-learning round)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir() and (path / MEMBERS_FILE).exists():
            files += [Path(m) for m in json.loads((path / MEMBERS_FILE).read_text())["members"]]
        elif path.is_dir():
            if not (path / f"best_{MODEL_FILE}").exists():
                raise InputError(path, f"folder has neither best_{MODEL_FILE} (a run) nor {MEMBERS_FILE} (an ensemble)")
            files.append(path / f"best_{MODEL_FILE}")
        else:
            files.append(path)
    return files


def _check_compatible(models: list[LoadedModel]) -> None:
    first = models[0]
    for other in models[1:]:
        if other.config.class_names != first.config.class_names:
            raise InputError(
                other.path,
                f"ensemble members disagree on the classes: {other.config.class_names} "
                f"against {first.config.class_names} in {first.path}",
            )


def predict_catalog(
    model_path: str | Path | list[str | Path],
    catalog: pd.DataFrame,
    out_dir: str | Path,
    progress: bool = True,
    batch_size: int = 8,
    interval_draws: int = 1000,
    seed: int = 0,
    tta: str | None = None,
) -> pd.DataFrame:
    """Write <out>/masks/<name>.png (class indices), <out>/uncertainty/<name>.png (entropy of the
    mean prediction, 0-255 for 0-1 of log C) and the per-image table: phase fractions with 95%
    intervals and the mean uncertainty. Several model files are an ensemble (mean probabilities).
    `tta` replaces each model's own test-time augmentation (model.tta)."""
    if tta is not None and tta not in TTA_VIEWS:
        raise MicroalError(f"unknown test-time augmentation {tta!r}; valid: {list(TTA_VIEWS)}")
    paths = model_path if isinstance(model_path, list) else [model_path]
    models = [load_model(p) for p in paths]
    _check_compatible(models)
    config = models[0].config
    out_dir = Path(out_dir)
    names = config.class_names
    rng = np.random.default_rng(seed)
    rows = []
    for _, row in tqdm(catalog.iterrows(), total=len(catalog), desc="predict", unit="image", disable=not progress):
        image = read_catalog_image(row, config.ingest)
        um_per_px = None if pd.isna(row.um_per_px) else float(row.um_per_px)
        member_probs = [
            predict_probabilities(
                model, image, um_per_px, batch_size, source=row.image_path, domain=str(row.domain), tta=tta
            )
            for model in models
        ]
        probs = np.mean(member_probs, axis=0)
        mask = probs.argmax(0).astype(np.uint8)
        stem = f"{Path(row.image_name).stem}_{row.image_id[:8]}"
        mask_file = out_dir / "masks" / f"{stem}.png"
        write_mask_png(mask, mask_file)
        uncertainty = normalised_entropy(probs)
        uncertainty_file = out_dir / "uncertainty" / f"{stem}.png"
        write_mask_png(np.round(uncertainty * 255), uncertainty_file)
        fractions = phase_fractions(mask, len(names))
        # Blocks of one tile centre at the model's scale: the unit the model sees at once.
        factor = scale_factor(um_per_px, config.tiling) or 1.0
        block = max(8, round(config.tiling.tile_size / factor))
        # The ensemble's own mask and each member's: their spread is the models' disagreement.
        masks = [mask] + ([p.argmax(0) for p in member_probs] if len(models) > 1 else [])
        low, high = fraction_interval(masks, len(names), block, interval_draws, rng)
        low, high = np.minimum(low, fractions), np.maximum(high, fractions)  # always holds the estimate
        rows.append(
            {
                "image_id": row.image_id,
                "image_name": row.image_name,
                "domain": row.domain,
                "mask_file": str(mask_file.relative_to(out_dir)),
                "uncertainty_file": str(uncertainty_file.relative_to(out_dir)),
                "mean_uncertainty": float(uncertainty.mean()),
                **{f"fraction_{name}": float(f) for name, f in zip(names, fractions)},
                **{f"fraction_{name}_low": float(v) for name, v in zip(names, low)},
                **{f"fraction_{name}_high": float(v) for name, v in zip(names, high)},
            }
        )
    table = pd.DataFrame(rows)
    with atomic_path(out_dir / PREDICTIONS_TABLE) as tmp:
        table.to_csv(tmp, index=False)
    info = {
        "model": str(models[0].path.resolve()),
        "members": [str(m.path.resolve()) for m in models],
        "epoch": models[0].epoch,
        "metrics": models[0].metrics,
        "tta": [tta or m.config.model.tta for m in models],
    }
    write_text_atomic(out_dir / PREDICTION_INFO, json.dumps(info, indent=2, default=float))
    return table


def splits_file(model_file: str | Path) -> Path:
    """The splits table of the run a model file belongs to (written beside it by training)."""
    return Path(model_file).parent / "splits.csv"


def run_splits(model_file: str | Path) -> pd.Series | None:
    """Each image's split (train, val, test) in the model's run, by image id; None when unknown."""
    path = splits_file(model_file)
    return read_table(path).set_index("image_id")["split"] if path.exists() else None


def select_images(
    catalog: pd.DataFrame, model_file: Path, split: str | None = None, images: list[str] | None = None
) -> pd.DataFrame:
    """The catalog rows to predict: one split of the model's run (train, val, test; from the
    splits.csv beside the model), the unlabelled images, and/or images named by file name or stem."""
    selected = catalog
    if split == "unlabelled":
        selected = selected[~selected.labelled.astype(bool)]
    elif split is not None:
        splits = run_splits(model_file)
        if splits is None:
            raise InputError(splits_file(model_file), f"--split {split}: the model's run has no splits table")
        selected = selected[selected.image_id.map(splits).eq(split)]
    if images:
        known = set(catalog.image_name) | {Path(n).stem for n in catalog.image_name}
        unknown = [name for name in images if name not in known]
        if unknown:
            raise MicroalError(f"--images: not in the catalog: {unknown}")
        wanted = set(images)
        selected = selected[
            selected.image_name.isin(wanted) | selected.image_name.map(lambda n: Path(n).stem).isin(wanted)
        ]
    return selected
