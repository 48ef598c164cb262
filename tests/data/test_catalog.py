"""Ingest: stable ids, metadata, and a clear error (and no catalog) for every kind of bad input."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from microal.config import parse_config
from microal.data.catalog import build_catalog, ingest, read_catalog
from microal.errors import InputError

CONFIG = parse_config({"classes": ["a", "b", "c"], "ingest": {"mask_dir": "masks"}})
rng = np.random.default_rng(1)


def _folder(tmp_path, n=3, size=(24, 32)):
    root = tmp_path / "data"
    (root / "masks").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(root / f"img{i}.png")
        Image.fromarray(rng.integers(0, 3, size).astype(np.uint8)).save(root / "masks" / f"img{i}.png")
    return root


def test_folder_ingest_finds_masks_and_ids_are_stable(tmp_path):
    root = _folder(tmp_path)
    Image.fromarray(rng.integers(0, 256, (24, 32), dtype=np.uint8)).save(root / "unlabelled.png")
    out = tmp_path / "catalog.parquet"
    table, written = ingest(root, CONFIG, out, progress=False)
    assert written and len(table) == 4
    assert table.labelled.tolist() == [True, True, True, False]
    assert table.image_id.str.len().eq(16).all() and table.image_id.is_unique
    before = (out.read_bytes(), os.stat(out).st_mtime_ns)
    again, written_again = ingest(root, CONFIG, out, progress=False)
    assert not written_again and (out.read_bytes(), os.stat(out).st_mtime_ns) == before
    assert again.image_id.tolist() == table.image_id.tolist()


def test_manifest_metadata_pixel_size_and_free_columns(tmp_path):
    root = _folder(tmp_path, n=2)
    manifest = pd.DataFrame(
        {
            "file": ["img0.png", "img1.png"],
            "label": ["masks/img0.png", "masks/img1.png"],
            "mag": ["1000X", "500x"],
            "specimen": ["S1", "S2"],
            "operator": ["ana", "ben"],
        }
    )
    manifest.to_csv(root / "manifest.csv", index=False)
    config = parse_config(
        {
            "classes": ["a", "b", "c"],
            "ingest": {
                "columns": {"image": "file", "mask": "label", "magnification": "mag", "sample": "specimen"},
                "calibration_um_per_px_at_1x": 100.0,
                "detector": "SE",
            },
        }
    )
    table = build_catalog(root / "manifest.csv", config, progress=False)
    assert table.um_per_px.tolist() == [0.1, 0.2]
    assert table["sample"].tolist() == ["S1", "S2"] and table.detector.eq("SE").all()
    assert table.operator.tolist() == ["ana", "ben"]


# ---- bad input: a clear error naming the file, and no catalog written ------------------------


def _expect_error(source, out, match, config=CONFIG):
    with pytest.raises(InputError, match=match):
        ingest(source, config, out, progress=False)
    assert not out.exists(), "a failed ingest must not write a catalog"
    assert not list(out.parent.glob(".catalog*")), "no temporary file may be left behind"


def test_corrupt_image(tmp_path):
    root = _folder(tmp_path)
    (root / "img1.png").write_bytes(b"this is not a png")
    _expect_error(root, tmp_path / "catalog.parquet", r"img1.png: cannot read: corrupt")


def test_truncated_image(tmp_path):
    root = _folder(tmp_path)
    data = (root / "img2.png").read_bytes()
    (root / "img2.png").write_bytes(data[: len(data) // 2])
    _expect_error(root, tmp_path / "catalog.parquet", r"img2.png: cannot read: corrupt, truncated")


def test_mask_size_differs_from_image(tmp_path):
    root = _folder(tmp_path)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "img0.png")
    _expect_error(
        root, tmp_path / "catalog.parquet", r"masks/img0.png: mask size 10x10 differs from its image img0.png \(32x24\)"
    )


def test_mask_values_outside_class_table(tmp_path):
    root = _folder(tmp_path)
    Image.fromarray(np.full((24, 32), 7, np.uint8)).save(root / "masks" / "img1.png")
    _expect_error(root, tmp_path / "catalog.parquet", r"masks/img1.png: mask values outside the class table: \[7\]")


def test_duplicate_ids(tmp_path):
    root = _folder(tmp_path)
    shutil.copy(root / "img0.png", root / "img9.png")
    shutil.copy(root / "masks" / "img0.png", root / "masks" / "img9.png")
    _expect_error(root, tmp_path / "catalog.parquet", r"img9.png: duplicate id \w+: same content as .*img0.png")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    _expect_error(tmp_path / "empty", tmp_path / "catalog.parquet", r"empty: no images found")


def test_unreadable_paths(tmp_path):
    _expect_error(tmp_path / "nowhere", tmp_path / "catalog.parquet", r"nowhere: path does not exist")
    root = _folder(tmp_path)
    (root / "dir.png").mkdir()  # a folder where a file is expected
    pd.DataFrame({"image": ["img0.png", "dir.png"]}).to_csv(root / "m.csv", index=False)
    _expect_error(root / "m.csv", tmp_path / "catalog.parquet", r"dir.png: not a regular file")


def test_existing_catalog_survives_a_failed_ingest(tmp_path):
    root = _folder(tmp_path)
    out = tmp_path / "catalog.parquet"
    table, _ = ingest(root, CONFIG, out, progress=False)
    (root / "img1.png").write_bytes(b"broken")
    with pytest.raises(InputError):
        ingest(root, CONFIG, out, progress=False)
    pd.testing.assert_frame_equal(read_catalog(out), table)


def _banded_micrograph(height=80, width=96, band=14, seed=0):
    """A grey SEM-like micrograph with a coloured instrument band (black, with a red scale bar and
    green text) along the bottom, as some instruments save it."""
    r = np.random.default_rng(seed)
    grey = (r.normal(128, 25, (height, width)) + np.linspace(0, 30, width)).clip(0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[height - band :] = 0
    rgb[height - band + 4 : height - band + 7, 5:40] = (220, 30, 30)  # scale bar
    rgb[height - band + 8 : height - 2 : 2, 50:90] = (40, 200, 60)  # text
    return rgb


def _banded_folder(tmp_path, bands=(14, 15), mask_sizes=("full", "cropped")):
    root = tmp_path / "banded"
    (root / "masks").mkdir(parents=True)
    for i, (band, mask_size) in enumerate(zip(bands, mask_sizes)):
        rgb = _banded_micrograph(band=band, seed=i)
        Image.fromarray(rgb).save(root / f"img{i}.png")
        rows = rgb.shape[0] if mask_size == "full" else rgb.shape[0] - band
        Image.fromarray((np.arange(rows)[:, None] // 20 % 3).repeat(rgb.shape[1], 1).astype(np.uint8)).save(
            root / "masks" / f"img{i}.png"
        )
    return root


def test_the_info_band_is_cut_before_the_colour_check_and_masks_by_their_size(tmp_path):
    root = _banded_folder(tmp_path, bands=(14, 14))
    with pytest.raises(InputError, match="colour image with differing channels"):
        build_catalog(root, CONFIG, progress=False)  # the band's colour, uncropped
    config = parse_config({"classes": ["a", "b", "c"], "ingest": {"mask_dir": "masks", "crop": {"bottom": 14}}})
    table = build_catalog(root, config, progress=False)
    assert table.height.tolist() == [66, 66] and table.crop_bottom.tolist() == [14, 14]
    # img0's mask has the image's full size and is cut; img1's was drawn on the cropped image.
    assert table.mask_cropped.tolist() == [True, False]
    from microal.data.imageio import read_catalog_image, read_catalog_mask

    for _, row in table.iterrows():
        assert (
            read_catalog_image(row, config.ingest).shape == read_catalog_mask(row, config.classes, config.ingest).shape
        )
    forced = parse_config(
        {"classes": ["a", "b", "c"], "ingest": {"mask_dir": "masks", "crop": {"bottom": 14}, "crop_masks": True}}
    )
    with pytest.raises(InputError, match="img1.png: mask size 96x52 differs from its image"):
        build_catalog(root, forced, progress=False)


def test_a_band_whose_height_differs_per_image_is_detected_or_given_per_image(tmp_path):
    root = _banded_folder(tmp_path, bands=(14, 15), mask_sizes=("full", "full"))
    detect = parse_config({"classes": ["a", "b", "c"], "ingest": {"mask_dir": "masks", "detect_info_band": True}})
    table = build_catalog(root, detect, progress=False)
    assert table.crop_bottom.tolist() == [14, 15] and table.height.tolist() == [66, 65]
    from microal.data.imageio import detect_info_band

    plain = tmp_path / "plain.png"
    Image.fromarray(_banded_micrograph(band=0, seed=3)).save(plain)
    assert detect_info_band(plain) == 0  # no band: nothing is cut
    # The same crop from a manifest column, one value per image.
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(
        {
            "image": [str(root / "img0.png"), str(root / "img1.png")],
            "mask": [str(root / "masks" / "img0.png"), str(root / "masks" / "img1.png")],
            "crop_bottom": [14, 15],
        }
    ).to_csv(manifest, index=False)
    by_column = build_catalog(manifest, parse_config({"classes": ["a", "b", "c"]}), progress=False)
    assert by_column.crop_bottom.tolist() == [14, 15] and by_column.mask_cropped.all()
    pd.DataFrame({"image": [str(root / "img0.png")], "crop_bottom": ["1.5"]}).to_csv(manifest, index=False)
    with pytest.raises(InputError, match="img0.png: crop_bottom must be a whole number"):
        build_catalog(manifest, parse_config({"classes": ["a", "b", "c"]}), progress=False)
