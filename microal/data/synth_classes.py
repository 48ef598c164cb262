"""Synthetic micrographs with image labels, for the classification track's demo and tests.

Three classes drawn in physical units (µm) and rasterised at each image's own pixel size (drawn
log-uniformly over a 4x range, as magnifications vary in a real set): `particles` (round
carbides in a dark matrix, as spheroidite), `lamellae` (parallel plates, one orientation per
colony, as pearlite) and `network` (bright boundaries around cells, as a carbide network).
Images come in samples of two, so splits can group by specimen.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import yaml
from PIL import Image
from scipy.spatial import cKDTree

from microal.files import atomic_path

CLASS_NAMES = ["particles", "lamellae", "network"]


def _particles(rng, yy, xx, field):
    image = np.full(yy.shape, 0.25)
    count = int(field[0] * field[1] / 2.5)
    for cy, cx, r in zip(
        rng.uniform(0, field[0], count), rng.uniform(0, field[1], count), rng.uniform(0.3, 0.7, count)
    ):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = 0.85
    return image


def _lamellae(rng, yy, xx, field):
    seeds = rng.uniform(0, max(field), size=(4, 2))
    _, colony = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], axis=1))
    colony = colony.reshape(yy.shape)
    image = np.full(yy.shape, 0.3)
    for c in range(len(seeds)):
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.8, 1.2)
        along = np.cos(angle) * xx + np.sin(angle) * yy
        image[(colony == c) & (np.mod(along, period) < 0.35 * period)] = 0.8
    return image


def _network(rng, yy, xx, field):
    count = max(4, int(field[0] * field[1] / 16))
    seeds = rng.uniform(0, 1, size=(count, 2)) * np.array(field)
    distances, _ = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], axis=1), k=2)
    gap = (distances[:, 1] - distances[:, 0]).reshape(yy.shape)
    image = np.full(yy.shape, 0.3)
    image[gap < 0.35] = 0.85
    return image


DRAW = {"particles": _particles, "lamellae": _lamellae, "network": _network}


def generate_classes(
    out: str | Path, per_class: int = 8, size: tuple[int, int] = (128, 160), seed: int = 0
) -> tuple[Path, dict]:
    """Write images/ and manifest.csv (image, label, um_per_px, sample) under `out`; return the
    manifest's path and a project config for it."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows = []
    for label in CLASS_NAMES:
        for i in range(per_class):
            um_per_px = float(np.exp(rng.uniform(np.log(0.05), np.log(0.2))))
            yy, xx = (np.mgrid[0 : size[0], 0 : size[1]] + 0.5) * um_per_px
            image = DRAW[label](rng, yy, xx, (size[0] * um_per_px, size[1] * um_per_px))
            image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.8) + rng.normal(0, 0.05, image.shape)
            name = f"{label}{i:03d}.png"
            with atomic_path(out / "images" / name) as tmp:
                Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(tmp, format="PNG")
            rows.append(
                {"image": f"images/{name}", "label": label, "um_per_px": um_per_px, "sample": f"{label}-{i // 2}"}
            )
    manifest = out / "manifest.csv"
    with atomic_path(manifest) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    config = {
        "classes": CLASS_NAMES,
        "ingest": {"columns": {"um_per_px": "um_per_px", "sample": "sample"}},
        "split": {"method": "group_kfold", "n_folds": 4, "fold": 0},
        "model": {"encoder": "resnet18", "encoder_weights": "none"},
        "classify": {"crop_size": 64, "epochs": 3, "crops_per_epoch": 96, "batch_size": 24, "predict_crops": 16},
    }
    with atomic_path(out / "microal.yaml") as tmp:
        tmp.write_text(
            "# Project config for this synthetic classification set.\n" + yaml.safe_dump(config, sort_keys=False)
        )
    return manifest, config
