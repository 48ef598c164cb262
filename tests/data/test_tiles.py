import numpy as np
import pandas as pd
import pytest

from microal.config import parse_config
from microal.data.catalog import build_catalog, ingest
from microal.data.imageio import read_image
from microal.data.tiles import build_tiles, load_tiles
from microal.data.tiling import resample_image
from microal.errors import InputError


def test_tile_set_records_scale_and_positions(tiled):
    ws, catalog, config = tiled
    tileset = load_tiles(ws.tiles)
    assert set(tileset.images.image_id) == set(catalog.image_id)
    # Domain A is 0.100 µm/px, B 0.125 µm/px, the target 0.125: A shrinks, B stays.
    factors = tileset.images.set_index("domain").scale_factor.groupby(level=0).first()
    assert factors["A"] == pytest.approx(0.8) and factors["B"] == pytest.approx(1.0)
    assert tileset.images.um_per_px_tiled.round(6).eq(0.125).all()
    counts = tileset.tiles.groupby("image_id").size()
    expected = (tileset.images.rows * tileset.images.cols).loc[counts.index]
    assert (counts == expected).all()


def test_stored_arrays_stitch_back_to_the_resampled_image(tiled):
    ws, catalog, config = tiled
    tileset = load_tiles(ws.tiles)
    row = catalog.iloc[0]
    grid = tileset.grid(row.image_id)
    padded = tileset.image_array(row.image_id)
    centres = {(r, c): grid.centre(padded[grid.window_slice(y, x)]) for r, c, y, x in grid.positions()}
    expected = resample_image(read_image(row.image_path), tileset.images.loc[row.image_id].scale_factor)
    np.testing.assert_array_equal(grid.stitch(centres), expected)


def test_missing_pixel_size_with_target_scale_is_an_error(synth_dir, tmp_path):
    manifest = pd.read_csv(synth_dir / "manifest.csv")
    manifest.loc[2, "um_per_px"] = None
    manifest["image"] = [str(synth_dir / p) for p in manifest.image]
    manifest["mask"] = [str(synth_dir / p) for p in manifest["mask"]]
    manifest.to_csv(tmp_path / "m.csv", index=False)
    config = parse_config(
        {
            "classes": ["m", "l", "p"],
            "ingest": {"columns": {"um_per_px": "um_per_px"}},
            "tiling": {"target_um_per_px": 0.125, "tile_size": 32, "margin": 16},
        }
    )
    catalog = build_catalog(tmp_path / "m.csv", config, progress=False)
    name = manifest.image[2].split("/")[-1]
    with pytest.raises(InputError, match=rf"{name}: no pixel size \(µm/px\) but tiling.target_um_per_px=0.125"):
        build_tiles(catalog, config, tmp_path / "tiles", progress=False)
    assert not (tmp_path / "tiles").exists()
    assert not list(tmp_path.glob(".tiles*")), "staging folder left behind"


def test_failed_retile_keeps_the_old_tile_set(synth_dir, tmp_path):
    config = parse_config(
        {
            "classes": ["m", "l", "p"],
            "ingest": {"columns": {"um_per_px": "um_per_px"}},
            "tiling": {"tile_size": 32, "margin": 16},
        }
    )
    catalog, _ = ingest(synth_dir / "manifest.csv", config, tmp_path / "catalog.parquet", progress=False)
    build_tiles(catalog, config, tmp_path / "tiles", progress=False)
    before = (tmp_path / "tiles" / "tiles.parquet").read_bytes()
    broken = catalog.copy()
    broken.loc[1, "height"] = 1  # as if the image changed since ingest
    with pytest.raises(InputError, match="image changed since ingest"):
        build_tiles(broken, config, tmp_path / "tiles", progress=False)
    assert (tmp_path / "tiles" / "tiles.parquet").read_bytes() == before
