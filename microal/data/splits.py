"""Train / validation / test assignment of images, grouped so one specimen never sits on both sides."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold

from microal.config import SplitConfig
from microal.errors import ConfigError

TRAIN, VAL, TEST, EXCLUDED = "train", "val", "test", "excluded"
# An image without a mask: in no split, but usable unlabelled (pre-training, a UDA target). Not the
# pool state of the same name (microal.active.pool), which is a tile waiting for its label.
NO_MASK = "unlabelled"


def _column(images: pd.DataFrame, name: str, key: str) -> pd.Series:
    if name not in images.columns:
        raise ConfigError(f"{key}: the catalog has no column {name!r}; columns: {sorted(images.columns)}")
    return images[name].astype(str)


def group_folds(groups: pd.Series, n_folds: int, seed: int) -> np.ndarray:
    """Fold number per row; rows of one group always share a fold."""
    n_groups = groups.nunique()
    if n_groups < n_folds:
        raise ConfigError(
            f"split.n_folds: {n_folds} folds need at least {n_folds} groups, but there are {n_groups} "
            "distinct values of split.group_by"
        )
    folds = np.empty(len(groups), dtype=int)
    splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, val_index) in enumerate(splitter.split(np.zeros(len(groups)), groups=groups.to_numpy())):
        folds[val_index] = fold
    return folds


def held_out_splits(images: pd.DataFrame, split: SplitConfig) -> pd.Series:
    """Only what is held out, with no folds: test and excluded images; every other labelled
    image is `train` here (what an active-learning pool needs, even with one labelled sample).

    Held-out test images take their whole group with them: other images of the same
    group are `excluded`, so no specimen seen at test time was trained on.
    """
    result = pd.Series(NO_MASK, index=images.index, dtype=object)
    labelled = images["labelled"].astype(bool)
    groups = _column(images, split.group_by, "split.group_by")
    result[labelled] = TRAIN
    if split.test is not None:
        is_test = labelled & _column(images, split.test.column, "split.test.column").isin(split.test.values)
        if split.test.values and not is_test.any():
            raise ConfigError(f"split.test: no labelled image has {split.test.column} in {split.test.values}")
        result[is_test] = TEST
        result[labelled & ~is_test & groups.isin(set(groups[is_test]))] = EXCLUDED
    if split.method == "column":
        values = _column(images, split.column, "split.column")
        available = result == TRAIN
        result[available & values.isin(split.test_values)] = TEST
        result[available & ~values.isin(split.train_values + split.val_values + split.test_values)] = EXCLUDED
    return result


def assign_splits(images: pd.DataFrame, split: SplitConfig) -> pd.Series:
    """A label per image (indexed like `images`): train, val, test, excluded or unlabelled."""
    result = held_out_splits(images, split)
    available = result == TRAIN
    if split.method == "column":
        values = _column(images, split.column, "split.column")
        result[available & values.isin(split.val_values)] = VAL
    else:
        index = images.index[available]
        if len(index):
            folds = group_folds(_column(images, split.group_by, "split.group_by")[index], split.n_folds, split.seed)
            result[index] = np.where(folds == split.fold, VAL, TRAIN)
    if not (result == TRAIN).any():
        raise ConfigError("split: no labelled image is left for training")
    return result
