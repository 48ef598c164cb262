"""Synthetic two-domain micrographs with exact masks, for the demo and the unit tests.

Each image is drawn in physical units (µm) and rasterised at its own pixel size:
ferrite-like grains (class 0, with darker boundaries), bainite-like laths in some grains
(class 1, parallel needles with one orientation per grain) and round carbide particles
(class 2). Domain A looks like an SEM secondary-electron image (bright carbides, sharp,
0.10 µm/px, 8-bit PNG); domain B like a light-optical bright-field one (inverted contrast,
blur, uneven illumination, other noise, 0.125 µm/px, 16-bit TIFF).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile
import yaml
from PIL import Image
from scipy.spatial import cKDTree

from microal.files import atomic_path

CLASSES = [
    {"name": "matrix", "color": [70, 70, 200]},
    {"name": "laths", "color": [240, 200, 40]},
    {"name": "particles", "color": [220, 50, 50]},
]


@dataclass(frozen=True)
class DomainStyle:
    um_per_px: float
    detector: str
    etching: str
    invert: bool
    blur_sigma_px: float
    noise: float
    illumination: float  # amplitude of a smooth brightness gradient
    file_format: str  # png8 or tiff16


DOMAINS = {
    "A": DomainStyle(0.10, "SE", "nital 2%", False, 0.6, 0.06, 0.0, "png8"),
    "B": DomainStyle(0.125, "LOM bright field", "picral", True, 1.6, 0.04, 0.12, "tiff16"),
}


def _scene(rng: np.random.Generator, field_um: float, um_per_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Label map and a noiseless SEM-like intensity map for one field of view."""
    size = int(round(field_um / um_per_px))
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) * um_per_px  # pixel centres in µm

    n_grains = rng.integers(8, 14)
    seeds = rng.uniform(0, field_um, size=(n_grains, 2))
    _, grain = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], axis=1))
    grain = grain.reshape(size, size)
    boundary = np.zeros_like(grain, dtype=bool)
    boundary[:-1] |= grain[:-1] != grain[1:]
    boundary[:, :-1] |= grain[:, :-1] != grain[:, 1:]
    boundary = cv2.dilate(boundary.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)

    labels = np.zeros((size, size), dtype=np.uint8)
    intensity = 0.30 + rng.normal(0, 0.03, n_grains)[grain]
    lath_grains = rng.choice(n_grains, size=max(1, n_grains // 3), replace=False)
    for g in lath_grains:
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.9, 1.4)  # µm between laths
        phase = rng.uniform(0, period)
        along = np.cos(angle) * xx + np.sin(angle) * yy
        lath = (np.mod(along + phase, period) < 0.4 * period) & (grain == g)
        labels[lath] = 1
    intensity[labels == 1] = 0.58
    intensity[boundary] = 0.18

    n_particles = rng.integers(25, 45)
    centres = rng.uniform(0, field_um, size=(n_particles, 2))
    radii = rng.uniform(0.25, 0.7, size=n_particles)
    for (cy, cx), r in zip(centres, radii):
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        labels[disk] = 2
        intensity[disk] = 0.88
    return labels, intensity


def _render(intensity: np.ndarray, style: DomainStyle, rng: np.random.Generator) -> np.ndarray:
    image = intensity.copy()
    if style.invert:
        image = 1.0 - image
    if style.illumination:
        h, w = image.shape
        ramp = np.linspace(-1, 1, w)[None, :] * np.linspace(0.5, 1, h)[:, None]
        image = image + style.illumination * ramp
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), style.blur_sigma_px)
    image = image + rng.normal(0, style.noise, image.shape)
    return np.clip(image, 0, 1)


def _write_image(image: np.ndarray, path: Path, file_format: str) -> None:
    with atomic_path(path) as tmp:
        if file_format == "tiff16":
            tifffile.imwrite(tmp, (image * 65535).round().astype(np.uint16))
        else:
            Image.fromarray((image * 255).round().astype(np.uint8)).save(tmp, format="PNG")


def synth_config(test_samples: list[str]) -> dict:
    """The project config that goes with a synthetic set (written beside it as microal.yaml)."""
    return {
        "classes": CLASSES,
        "ingest": {
            "columns": {
                "um_per_px": "um_per_px",
                "sample": "sample",
                "domain": "domain",
                "detector": "detector",
                "etching": "etching",
            }
        },
        "tiling": {"target_um_per_px": 0.125, "tile_size": 96, "margin": 16},
        "split": {
            "method": "group_kfold",
            "n_folds": 4,
            "fold": 0,
            "test": {"column": "sample", "values": test_samples},
        },
        "model": {
            "arch": "unet",
            "encoder": "resnet18",
            "encoder_weights": "none",
            "options": {"decoder_channels": [128, 64, 32, 16, 8]},
        },
        "training": {
            "epochs": 12,
            "batch_size": 8,
            "lr": 0.002,
            "augmentation": "basic",
            "sampling": "random",
            "samples_per_epoch": 96,
        },
    }


def generate(out: str | Path, n_per_domain: tuple[int, int] = (10, 4), field_um: float = 28.0, seed: int = 0) -> Path:
    """Write images/, masks/, manifest.csv and microal.yaml under `out`; return the manifest path.

    Domain A images come in samples of two (sample keys A-s0, A-s1, ...); the last A sample
    and all of domain B are listed as test samples in the config's hold-out.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows = []
    for domain, count in zip(("A", "B"), n_per_domain):
        style = DOMAINS[domain]
        for i in range(count):
            labels, intensity = _scene(rng, field_um, style.um_per_px)
            image = _render(intensity, style, rng)
            name = f"{domain.lower()}{i:03d}"
            ext = "tif" if style.file_format == "tiff16" else "png"
            _write_image(image, out / "images" / f"{name}.{ext}", style.file_format)
            with atomic_path(out / "masks" / f"{name}.png") as tmp:
                Image.fromarray(labels).save(tmp, format="PNG")
            rows.append(
                {
                    "image": f"images/{name}.{ext}",
                    "mask": f"masks/{name}.png",
                    "um_per_px": style.um_per_px,
                    "sample": f"{domain}-s{i // 2}",
                    "domain": domain,
                    "detector": style.detector,
                    "etching": style.etching,
                }
            )
    manifest = pd.DataFrame(rows)
    a_samples = sorted(manifest[manifest.domain == "A"]["sample"].unique())
    test_samples = a_samples[-1:] + sorted(manifest[manifest.domain == "B"]["sample"].unique())
    with atomic_path(out / "manifest.csv") as tmp:
        manifest.to_csv(tmp, index=False)
    with atomic_path(out / "microal.yaml") as tmp:
        tmp.write_text(
            "# Project config for this synthetic set (written by `microal synth`).\n"
            + yaml.safe_dump(synth_config(test_samples), sort_keys=False)
        )
    return out / "manifest.csv"
