"""The example configs ingest the real data sets in ../shared/datasets exactly (skipped where absent)."""

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, shared_dataset

from microal.config import load_config
from microal.data.catalog import build_catalog
from microal.data.imageio import read_mask
from microal.data.tiles import build_tiles
from microal.errors import InputError


def _fractions(row, config):
    mask = read_mask(row.mask_path, config.classes, config.ingest)
    return np.bincount(mask.ravel(), minlength=config.num_classes) / mask.size


def test_uhcs_example_config():
    data = shared_dataset("uhcs")
    config = load_config(REPO / "examples" / "uhcs.yaml")
    catalog = build_catalog(data / "manifest.csv", config, progress=False)
    assert len(catalog) == 24 and catalog.labelled.all()
    assert catalog.image_id.is_unique and catalog["sample"].nunique() > 10
    manifest = pd.read_csv(data / "manifest.csv")
    for _, row in catalog.iloc[::6].iterrows():
        expected = manifest[manifest.image.str.endswith(row.image_name)].iloc[0]
        np.testing.assert_allclose(
            _fractions(row, config), expected[["frac_0", "frac_1", "frac_2", "frac_3"]].astype(float), atol=1e-3
        )
    # uhcs0333 has no magnification: a physical target scale must be refused, naming it.
    scaled = config.model_copy(
        update={
            "ingest": config.ingest.model_copy(update={"calibration_um_per_px_at_1x": 100.0}),
            "tiling": config.tiling.model_copy(update={"target_um_per_px": 0.1}),
        }
    )
    catalog = build_catalog(data / "manifest.csv", scaled, progress=False)
    with pytest.raises(InputError, match=r"uhcs0333.tif: no pixel size"):
        build_tiles(catalog, scaled, REPO / "never-written", progress=False)


def test_nasa_super_example_config():
    data = shared_dataset("nasa-super")
    config = load_config(REPO / "examples" / "nasa-super.yaml")
    catalog = build_catalog(data / "manifest.csv", config, progress=False)
    assert catalog.groupby("domain").size().to_dict() == {"A": 18, "B": 5}
    manifest = pd.read_csv(data / "manifest.csv")
    for _, row in catalog.iterrows():  # includes the uint16 images and masks of domain B
        expected = manifest[manifest.image.str.endswith(row.image_name)].iloc[0]
        np.testing.assert_allclose(
            _fractions(row, config),
            expected[["frac_matrix", "frac_secondary", "frac_tertiary"]].astype(float),
            atol=1e-3,
        )
