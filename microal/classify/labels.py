"""Image labels for classification: which catalog images carry a class from the config's class
table, the class index of each, and their train / val / test roles (grouped by specimen)."""

from __future__ import annotations

import pandas as pd

from microal.config import ProjectConfig
from microal.data.splits import EXCLUDED, TRAIN, VAL, assign_splits
from microal.errors import ConfigError, InputError

NONE_CLASS = "none"  # the answer for a micrograph of none of the trained classes


def trained_classes(config: ProjectConfig) -> list[str]:
    """The class table less classify.leave_out (classes kept out of training: an open-set experiment)."""
    return [name for name in config.class_names if name not in config.classify.leave_out]


def labelled_images(catalog: pd.DataFrame, config: ProjectConfig) -> pd.DataFrame:
    """The catalog with `labelled` meaning "has an image label"; a label outside the class table
    is an error naming the image."""
    if "label" not in catalog.columns:
        raise ConfigError("classify: the catalog has no image labels; ingest a manifest with a `label` column")
    labels = catalog.label.map(lambda v: "" if pd.isna(v) else str(v).strip())  # (missing: None or NaN)
    unknown = catalog[(labels != "") & ~labels.isin(config.class_names)]
    if len(unknown):
        row = unknown.iloc[0]
        raise InputError(
            row.image_path,
            f"label {row.label!r} is not in the class table {config.class_names} "
            f"({len(unknown)} image(s) with unknown labels, e.g. {sorted(set(unknown.label))[:5]})",
        )
    if NONE_CLASS in config.class_names:
        raise ConfigError(f"classes: {NONE_CLASS!r} is microal's answer for 'none of these'; rename that class")
    return catalog.assign(label=labels.where(labels != "", None), labelled=labels != "")


def split_table(images: pd.DataFrame, config: ProjectConfig) -> pd.DataFrame:
    """Each image's role (train, val, test, excluded, unlabelled), by config.split as for
    segmentation; images of a left-out class never train or validate (their role: test when held
    out, else excluded)."""
    splits = assign_splits(images, config.split)
    left_out = images.label.isin(config.classify.leave_out)
    splits[left_out & splits.isin([TRAIN, VAL])] = EXCLUDED
    table = pd.DataFrame(
        {
            "image_id": images.image_id,
            "image_name": images.image_name,
            "label": images.label,
            "sample": images["sample"],
            "split": splits.values,
        }
    )
    if not (table.split == TRAIN).any():
        raise ConfigError("classify: no labelled image is left for training")
    return table
