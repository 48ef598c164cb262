"""A synthetic stitched panorama with planted sites, for the site-detection tests: a textured
bright matrix, dark round voids and dark elongated streaks (an artefact class, as shadows)
of known position and area, one region too large and one speck too small to count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

REGION = (20, 220)  # rows and columns of the large dark region (top left)


def generate_panorama(
    path: str | Path,
    shape: tuple[int, int] = (2048, 1536),
    um_per_px: float = 0.1,
    sites: int = 24,
    boundary_rows: tuple[int, ...] = (),
    seed: int = 0,
) -> pd.DataFrame:
    """Write a tiled, compressed 8-bit TIFF; return the planted sites (y, x, kind, area_px).
    A site is planted centred on each of `boundary_rows` (to test block edges)."""
    rng = np.random.default_rng(seed)
    height, width = shape
    image = (200 + rng.normal(0, 6, shape)).astype(np.float32)
    yy, xx = np.ogrid[:height, :width]
    planted = []
    margin = 40
    centres = [(float(r), float(rng.uniform(margin, width - margin))) for r in boundary_rows]
    while len(centres) < sites + len(boundary_rows):
        y, x = rng.uniform(margin, height - margin), rng.uniform(margin, width - margin)
        clear_of_region = y > REGION[1] + 30 or x > REGION[1] + 30
        if clear_of_region and all((y - cy) ** 2 + (x - cx) ** 2 > 60**2 for cy, cx in centres):
            centres.append((y, x))
    for index, (y, x) in enumerate(centres):
        kind = "void" if index % 2 == 0 else "streak"
        if kind == "void":
            region = (yy - y) ** 2 + (xx - x) ** 2 <= 8**2
        else:
            region = (np.abs(yy - y) <= 2) & (np.abs(xx - x) <= 14)
        image[region] = 40
        planted.append({"y": y, "x": x, "kind": kind, "area_px": int(region.sum())})
    image[REGION[0] : REGION[1], REGION[0] : REGION[1]] = 40  # a dark region far above any site's area
    image[height - 30, width - 30] = 40  # a one-pixel speck, below any site's area
    tifffile.imwrite(path, np.clip(image, 0, 255).astype(np.uint8), tile=(256, 256), compression="zlib")
    return pd.DataFrame(planted)
