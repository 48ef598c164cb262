import numpy as np
import pytest
from conftest import quick_config_dict

from microal.config import parse_config
from microal.data.catalog import ingest
from microal.data.imageio import read_image
from microal.data.tiles import build_tiles
from microal.data.tiling import resample_image
from microal.inference.predict import predict_probabilities
from microal.models.model_file import load_model


def test_inversion_and_domain_normalisation(synth_dir, tmp_path):
    raw = quick_config_dict(synth_dir)
    raw["preprocess"] = {"invert_domains": ["B"], "normalize": "domain"}
    config = parse_config(raw)
    catalog, _ = ingest(synth_dir / "manifest.csv", config, tmp_path / "catalog.parquet", progress=False)
    tileset = build_tiles(catalog, config, tmp_path / "tiles", progress=False)

    row = catalog[catalog.domain == "B"].iloc[0]
    grid = tileset.grid(row.image_id)
    stored = tileset.image_array(row.image_id)[
        grid.margin : grid.margin + grid.height, grid.margin : grid.margin + grid.width
    ]
    expected = 1.0 - resample_image(read_image(row.image_path), tileset.images.loc[row.image_id].scale_factor)
    np.testing.assert_allclose(stored, expected, atol=1e-6)

    images = tileset.images
    for domain, group in images.groupby("domain"):
        assert group["mean"].nunique() == 1 and group["std"].nunique() == 1
        assert group["mean"].iloc[0] == pytest.approx(tileset.domain_stats()[domain][0])
    # Inverted B (dark particles -> bright) looks like A again: their means are close.
    stats = tileset.domain_stats()
    assert abs(stats["A"][0] - stats["B"][0]) < 0.25


def test_predict_applies_the_same_preparation(synth_dir, tmp_path):
    import torch

    from microal.models.factory import build_model
    from microal.models.model_file import save_model_file

    raw = quick_config_dict(synth_dir)
    raw["preprocess"] = {"invert_domains": ["B"]}
    config = parse_config(raw)
    torch.manual_seed(0)
    save_model_file(tmp_path / "m.pt", build_model(config.model, 3), config, 1, {}, [])
    model = load_model(tmp_path / "m.pt")
    image = np.random.default_rng(0).random((60, 60)).astype(np.float32)
    as_b = predict_probabilities(model, image, 0.125, domain="B")
    inverted_as_a = predict_probabilities(model, 1.0 - image, 0.125, domain="A")
    np.testing.assert_allclose(as_b, inverted_as_a, atol=1e-5)
