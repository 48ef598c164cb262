"""The tile set on disk: resampled, padded arrays per image plus the image and tile tables.

Layout of a tile folder::

    images.parquet   one row per image: scale factor, resampled size, grid, intensity stats
    tiles.parquet    one row per tile: image id, grid row/col, window corner, scale
    arrays/<id>.image.npy   padded float32 image at the tiling scale
    arrays/<id>.mask.npy    padded uint8 mask (255 outside the image), labelled images only
    tiling.json      the tiling settings the folder was made with

The folder is built beside the target and swapped in only when every image succeeded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from microal.config import PreprocessConfig, ProjectConfig, TilingConfig
from microal.data.imageio import read_catalog_image, read_catalog_mask
from microal.data.preprocess import domain_stats, image_stats, normalisation_table, prepare_intensities
from microal.data.tiling import TileGrid, resample_image, resample_mask, scale_factor
from microal.errors import InputError


@dataclass
class TileSet:
    root: Path
    images: pd.DataFrame
    tiles: pd.DataFrame
    tiling: TilingConfig
    preprocess: PreprocessConfig

    def grid(self, image_id: str) -> TileGrid:
        row = self.images.loc[image_id]
        return TileGrid(int(row.height_resampled), int(row.width_resampled), self.tiling.tile_size, self.tiling.margin)

    def image_array(self, image_id: str, mmap: bool = True) -> np.ndarray:
        return _load_array(self.root / "arrays" / f"{image_id}.image.npy", mmap)

    def domain_stats(self) -> dict[str, tuple[float, float]]:
        return domain_stats(self.images)

    def mask_array(self, image_id: str, mmap: bool = True) -> np.ndarray | None:
        path = self.root / "arrays" / f"{image_id}.mask.npy"
        return _load_array(path, mmap) if path.exists() else None


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise InputError(path, f"damaged tile array ({error}); run `microal tile` again") from None


def _check_pixel_sizes(catalog: pd.DataFrame, tiling: TilingConfig) -> None:
    if tiling.target_um_per_px is None:
        return
    for _, row in catalog.iterrows():
        if scale_factor(row.um_per_px, tiling) is None:
            raise InputError(
                row.image_path,
                f"no pixel size (µm/px) but tiling.target_um_per_px={tiling.target_um_per_px} asks for one; "
                "give it in the manifest (um_per_px or magnification with ingest.calibration_um_per_px_at_1x) "
                "or ingest.um_per_px",
            )


def _tile_one(row: pd.Series, config: ProjectConfig, arrays: Path) -> tuple[dict, list[dict]]:
    tiling = config.tiling
    factor = scale_factor(row.um_per_px, tiling)
    image = read_catalog_image(row, config.ingest)
    if image.shape != (row.height, row.width):
        raise InputError(row.image_path, "image changed since ingest; run `microal ingest` again")
    image = prepare_intensities(image, str(row.domain), config.preprocess)
    resampled = resample_image(image, factor, tiling.image_interpolation)
    grid = TileGrid(resampled.shape[0], resampled.shape[1], tiling.tile_size, tiling.margin)
    np.save(arrays / f"{row.image_id}.image.npy", grid.pad_image(resampled).astype(np.float32))
    labelled = bool(row.labelled)
    if labelled:
        mask = resample_mask(read_catalog_mask(row, config.classes, config.ingest), shape=resampled.shape)
        np.save(arrays / f"{row.image_id}.mask.npy", grid.pad_mask(mask))
    mean, std = image_stats(resampled)
    # Every catalog column travels along, so splits and reports can use any metadata.
    image_row = {
        **row.to_dict(),
        "scale_factor": float(factor),
        "um_per_px_tiled": float(row.um_per_px) / factor if pd.notna(row.um_per_px) else np.nan,
        "height_resampled": grid.height,
        "width_resampled": grid.width,
        "rows": grid.rows,
        "cols": grid.cols,
        # Intensity statistics: inputs are standardised per image (or per domain), so 8- and
        # 16-bit micrographs and differently exposed ones look alike to the network.
        "image_mean": mean,
        "image_std": std,
    }
    tile_rows = [
        {
            "tile_id": f"{row.image_id}_r{r:03d}_c{c:03d}",
            "image_id": row.image_id,
            "row": r,
            "col": c,
            "y": y,
            "x": x,
            "domain": row.domain,
            "sample": row["sample"],
            "labelled": labelled,
            "scale_factor": float(factor),
        }
        for r, c, y, x in grid.positions()
    ]
    return image_row, tile_rows


def build_tiles(catalog: pd.DataFrame, config: ProjectConfig, out: str | Path, progress: bool = True) -> TileSet:
    """Resample, pad and index every catalog image; replace `out` only when all succeeded."""
    out = Path(out)
    if catalog.empty:
        raise InputError(None, "the catalog is empty")
    _check_pixel_sizes(catalog, config.tiling)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        arrays = staging / "arrays"
        arrays.mkdir()
        image_rows, tile_rows = [], []
        for _, row in tqdm(catalog.iterrows(), total=len(catalog), desc="tile", unit="image", disable=not progress):
            image_row, tiles = _tile_one(row, config, arrays)
            image_rows.append(image_row)
            tile_rows.extend(tiles)
        images = pd.DataFrame(image_rows)
        images["mean"], images["std"] = normalisation_table(images, config.preprocess)
        images.to_parquet(staging / "images.parquet", index=False)
        pd.DataFrame(tile_rows).to_parquet(staging / "tiles.parquet", index=False)
        settings = {**config.tiling.model_dump(mode="json"), "preprocess": config.preprocess.model_dump(mode="json")}
        (staging / "tiling.json").write_text(json.dumps(settings, indent=2))
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_tiles(out)


def _swap_in(staging: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_tiles(root: str | Path) -> TileSet:
    root = Path(root)
    for name in ("images.parquet", "tiles.parquet", "tiling.json"):
        if not (root / name).exists():
            raise InputError(root / name, "tile set incomplete or missing; run `microal tile` first")
    images = pd.read_parquet(root / "images.parquet").set_index("image_id", drop=False)
    tiles = pd.read_parquet(root / "tiles.parquet")
    settings = json.loads((root / "tiling.json").read_text())
    preprocess = PreprocessConfig.model_validate(settings.pop("preprocess", {}))
    tiling = TilingConfig.model_validate(settings)
    return TileSet(root=root, images=images, tiles=tiles, tiling=tiling, preprocess=preprocess)
