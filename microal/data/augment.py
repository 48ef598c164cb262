"""Augmentation pipelines, written in albumentations' YAML format and loaded by albumentations.

Built in: ``basic`` (flips, 90° rotations), ``extended`` (plus elastic, shear, blur,
brightness/contrast, noise, pixel dropout) and ``strong`` (image classification: heavier, plus
local blur and an edge-filter view), in ``microal/data/augmentations/``. A config can name one of
them, ``none``, or a path to a lab's own YAML file, which may use microal's own transforms below
by their full names (``microal.data.augment.LocalBlur``).
"""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import ImageOnlyTransform

from microal.errors import ConfigError


class LocalBlur(ImageOnlyTransform):
    """Blur inside a random disc (dust or a smear on the lens or sample), sharp elsewhere."""

    def __init__(self, radius_fraction: tuple[float, float] = (0.1, 0.35), sigma: float = 3.0, p: float = 0.5):
        super().__init__(p=p)
        self.radius_fraction, self.sigma = tuple(radius_fraction), float(sigma)

    def get_params_dependent_on_data(self, params, data):
        height, width = params["shape"][:2]
        rng = self.py_random
        return {
            "centre": (rng.uniform(0, height), rng.uniform(0, width)),
            "radius": rng.uniform(*self.radius_fraction) * min(height, width),
        }

    def apply(self, img, centre=(0.0, 0.0), radius=1.0, **params):
        yy, xx = np.ogrid[: img.shape[0], : img.shape[1]]
        distance = np.hypot(yy - centre[0], xx - centre[1])
        weight = np.clip((radius - distance) / max(radius * 0.3, 1.0), 0, 1).astype(img.dtype)
        blurred = cv2.GaussianBlur(img, (0, 0), self.sigma)
        if img.ndim == 3:
            weight = weight[..., None]
        return (weight * blurred + (1 - weight) * img).astype(img.dtype)

    def get_transform_init_args_names(self):
        return ("radius_fraction", "sigma")


class EdgeView(ImageOnlyTransform):
    """The image replaced by its edge strength (Sobel magnitude, scaled to the image's range):
    the shapes of the phases without their grey levels, which etching and detectors change."""

    def apply(self, img, **params):
        gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)
        magnitude = np.hypot(gx, gy)
        low, high = float(img.min()), float(img.max())
        scaled = magnitude / max(float(magnitude.max()), 1e-6) * (high - low) + low
        return scaled.astype(img.dtype)

    def get_transform_init_args_names(self):
        return ()


PIPELINE_DIR = Path(__file__).parent / "augmentations"


def builtin_pipelines() -> list[str]:
    return sorted(p.stem for p in PIPELINE_DIR.glob("*.yaml"))


def pipeline_path(name: str, key: str = "training.augmentation") -> Path:
    if name in builtin_pipelines():
        return PIPELINE_DIR / f"{name}.yaml"
    path = Path(name)
    if path.suffix.lower() in {".yaml", ".yml"}:
        if not path.exists():
            raise ConfigError(f"{key}: {path} does not exist")
        return path
    raise ConfigError(
        f"{key}: unknown pipeline {name!r}; valid: {builtin_pipelines() + ['none']} "
        "or a path to an albumentations YAML file"
    )


def load_pipeline(name: str, seed: int | None = None, key: str = "training.augmentation") -> A.Compose | None:
    """The pipeline named in the config (`key` says which setting), seeded so a run can be
    repeated; None for 'none'."""
    if name == "none":
        return None
    path = pipeline_path(name, key)
    try:
        pipeline = A.load(str(path), data_format="yaml")
    except Exception as error:  # albumentations raises several types for a bad file
        raise ConfigError(f"{key}: {path}: not a valid albumentations pipeline ({error})") from None
    if not isinstance(pipeline, A.Compose):
        pipeline = A.Compose([pipeline])
    pipeline.set_random_seed(seed)
    return pipeline


def _transform_names(transform) -> set[str]:
    names = {type(transform).__name__} if getattr(transform, "p", 1.0) > 0 else set()
    for child in getattr(transform, "transforms", []) or []:
        names |= _transform_names(child)
    return names


def trained_symmetries(name: str, key: str = "training.augmentation") -> str:
    """The test-time views a model trained with this pipeline was taught to treat alike:
    "dihedral" (all flips and 90° rotations), "flips" (both mirrors) or "none"."""
    pipeline = load_pipeline(name, seed=0, key=key)
    names = _transform_names(pipeline) if pipeline is not None else set()
    if names & {"SquareSymmetry", "D4"} or ("RandomRotate90" in names and names & {"HorizontalFlip", "VerticalFlip"}):
        return "dihedral"
    if {"HorizontalFlip", "VerticalFlip"} <= names:
        return "flips"
    return "none"
