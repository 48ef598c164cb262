"""The fingerprint of real files on disk: class shares and structure widths from the training
masks only, matrix classes recognised, intensities per domain."""

import numpy as np
import pandas as pd
import pytest
import tifffile

from microal.config import parse_config
from microal.data.catalog import ingest
from microal.planning.fingerprint import fingerprint, structure_widths, weighted_median

CONFIG = {
    "classes": ["matrix", "discs", "squares"],
    "ingest": {"columns": {"sample": "sample", "domain": "domain"}},
    "split": {"method": "column", "column": "split"},
}


def _micrograph(discs: int, square: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """A 200x300 mask: matrix, `discs` discs of diameter 20 px, one square of side `square`."""
    mask = np.zeros((200, 300), dtype=np.uint8)
    yy, xx = np.mgrid[:200, :300]
    for i in range(discs):
        cy, cx = 30 + 40 * (i // 5), 30 + 40 * (i % 5)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = 1
    mask[150 : 150 + square, 240 : 240 + square] = 2
    image = (0.3 + 0.4 * (mask > 0) + 0.02 * rng.standard_normal(mask.shape)).clip(0, 1)
    return (image * 255).astype(np.uint8), mask


@pytest.fixture
def planted(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    layout = [("train", 10, 40, "A"), ("train", 5, 40, "A"), ("val", 5, 40, "B"), ("test", 0, 190, "A")]
    for i, (split, discs, square, domain) in enumerate(layout):
        square = min(square, 200 - 150) if split != "test" else square
        image, mask = _micrograph(discs, square, rng)
        if split == "test":
            mask[:, :] = 2  # a held-out image entirely of the rare class: it must not count
        tifffile.imwrite(tmp_path / f"im{i}.tif", image)
        np.save(tmp_path / f"im{i}.npy", mask)
        rows.append({"image": f"im{i}.tif", "mask": f"im{i}.npy", "split": split, "sample": f"s{i}", "domain": domain})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    config = parse_config(CONFIG)
    catalog, _ = ingest(tmp_path / "manifest.csv", config, tmp_path / "catalog.parquet", progress=False)
    return config, catalog


def test_structure_widths_and_class_shares_come_from_the_training_masks_only(planted):
    config, catalog = planted
    print_ = fingerprint(catalog, config, progress=False)
    assert (print_.train_images, print_.val_images, print_.images) == (2, 1, 3)  # the test image is left out
    matrix, discs, squares = print_.classes
    assert matrix.matrix and matrix.width_px is None
    assert not discs.matrix and discs.width_px == pytest.approx(20.0, abs=1.5)  # discs 21 px across
    assert squares.width_px == pytest.approx(40.0, abs=1.0)
    disc_px = sum(np.count_nonzero(np.load(p) == 1) for p in catalog.mask_path[:2])
    assert discs.pixel_share == pytest.approx(disc_px / (2 * 200 * 300))
    assert squares.pixel_share == pytest.approx(2 * 1600 / (2 * 200 * 300))  # not the test image's 100 %
    assert sum(c.pixel_share for c in print_.classes) == pytest.approx(1.0)
    assert print_.train_pixels == 2 * 200 * 300 and print_.val_pixels == 200 * 300
    assert set(print_.domains) == {"A", "B"} and 0 < print_.domains["A"]["mean"] < 1
    assert print_.um_per_px == [None, None, None]


def test_a_long_structure_is_as_wide_as_it_is_thick_and_the_median_weighs_by_area():
    mask = np.zeros((60, 60), dtype=np.uint8)
    mask[:3, :3] = 1  # a 3 px speck in the corner (cut by the border: as wide as seen)
    mask[30:37, 5:55] = 1  # a lath 7 px thick and 50 px long
    widths, areas, largest = structure_widths(mask, 1)
    assert sorted(widths) == [3.0, 7.0] and sorted(areas) == [9, 7 * 50]
    assert largest == pytest.approx(max(areas) / 3600)
    # a pixel picked at random most likely lies in the network: its width is the typical one
    assert weighted_median(widths, areas) == 7.0
