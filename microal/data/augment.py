"""Augmentation pipelines, written in albumentations' YAML format and loaded by albumentations.

Built in: ``basic`` (flips, 90° rotations) and ``extended`` (plus elastic, shear, blur,
brightness/contrast, noise, pixel dropout), in ``microal/augmentations/``. A config can
name one of them, ``none``, or a path to a lab's own YAML file.
"""

from __future__ import annotations

from pathlib import Path

import albumentations as A

from microal.errors import ConfigError

PIPELINE_DIR = Path(__file__).parent / "augmentations"


def builtin_pipelines() -> list[str]:
    return sorted(p.stem for p in PIPELINE_DIR.glob("*.yaml"))


def pipeline_path(name: str) -> Path:
    if name in builtin_pipelines():
        return PIPELINE_DIR / f"{name}.yaml"
    path = Path(name)
    if path.suffix.lower() in {".yaml", ".yml"}:
        if not path.exists():
            raise ConfigError(f"training.augmentation: {path} does not exist")
        return path
    raise ConfigError(
        f"training.augmentation: unknown pipeline {name!r}; valid: {builtin_pipelines() + ['none']} "
        "or a path to an albumentations YAML file"
    )


def load_pipeline(name: str, seed: int | None = None) -> A.Compose | None:
    """The pipeline named in the config, seeded so a run can be repeated; None for 'none'."""
    if name == "none":
        return None
    path = pipeline_path(name)
    try:
        pipeline = A.load(str(path), data_format="yaml")
    except Exception as error:  # albumentations raises several types for a bad file
        raise ConfigError(f"training.augmentation: {path}: not a valid albumentations pipeline ({error})") from None
    if not isinstance(pipeline, A.Compose):
        pipeline = A.Compose([pipeline])
    pipeline.set_random_seed(seed)
    return pipeline
