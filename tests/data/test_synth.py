import numpy as np
import pandas as pd
import tifffile
from PIL import Image

from microal.data.synth import generate


def test_two_domains_with_exact_masks_and_pixel_sizes(tmp_path):
    generate(tmp_path, n_per_domain=(2, 2), field_um=12.0, seed=3)
    manifest = pd.read_csv(tmp_path / "manifest.csv")
    assert manifest.groupby("domain").um_per_px.first().to_dict() == {"A": 0.1, "B": 0.125}
    means = {}
    for _, row in manifest.iterrows():
        path = tmp_path / row.image
        image = tifffile.imread(path) / 65535 if path.suffix == ".tif" else np.asarray(Image.open(path)) / 255
        mask = np.asarray(Image.open(tmp_path / row["mask"]))
        assert image.shape == mask.shape == (round(12.0 / row.um_per_px),) * 2
        assert set(np.unique(mask)) <= {0, 1, 2} and (mask == 2).any()
        means[row.domain] = means.get(row.domain, []) + [image[mask == 2].mean() - image[mask == 0].mean()]
    # Particles are brighter than the matrix in SEM-like A, darker in light-optical-like B.
    assert min(means["A"]) > 0.2 and max(means["B"]) < -0.2
    assert (tmp_path / "microal.yaml").exists()
