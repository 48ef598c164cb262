import pandas as pd
import pytest

from microal.config import SplitConfig
from microal.data.splits import EXCLUDED, NO_MASK, TEST, TRAIN, VAL, assign_splits, held_out_splits
from microal.errors import ConfigError


def _images():
    samples = ["s1", "s1", "s2", "s2", "s3", "s4", "s4", "s5", "s6", "s6"]
    return pd.DataFrame(
        {
            "image_name": [f"i{i}.tif" for i in range(10)] + ["pool.tif"],
            "sample": samples + ["s7"],
            "labelled": [True] * 10 + [False],
            "split": ["train"] * 6 + ["val"] * 2 + ["test"] * 2 + [""],
        }
    )


@pytest.mark.parametrize("fold", range(3))
def test_group_kfold_never_splits_a_sample(fold):
    images = _images()
    roles = assign_splits(images, SplitConfig(n_folds=3, fold=fold))
    assert roles.iloc[-1] == NO_MASK
    by_sample = pd.DataFrame({"sample": images["sample"], "role": roles})[images.labelled]
    assert (by_sample.groupby("sample").role.nunique() == 1).all()
    assert (roles == VAL).any() and (roles == TRAIN).any()


def test_folds_cover_every_labelled_image_once():
    images = _images()
    val_counts = sum((assign_splits(images, SplitConfig(n_folds=3, fold=f)) == VAL).astype(int) for f in range(3))
    assert val_counts[images.labelled].eq(1).all()


def test_holdout_takes_its_samples_out_of_training():
    images = _images()
    roles = assign_splits(images, SplitConfig(n_folds=2, test={"column": "image_name", "values": ["i0.tif"]}))
    assert roles.iloc[0] == TEST and roles.iloc[1] == EXCLUDED  # i1 shares sample s1 with the test image
    assert not roles.iloc[2:10].isin([TEST, EXCLUDED]).any()


def test_column_method():
    roles = assign_splits(_images(), SplitConfig(method="column"))
    assert roles.tolist() == [TRAIN] * 6 + [VAL] * 2 + [TEST] * 2 + [NO_MASK]
    images = _images().assign(split=["train"] * 6 + ["val"] * 2 + ["other"] * 2 + [""])
    assert assign_splits(images, SplitConfig(method="column")).tolist()[8:10] == [EXCLUDED] * 2


def test_too_few_groups_is_explained():
    with pytest.raises(ConfigError, match="7 folds need at least 7 groups, but there are 6"):
        assign_splits(_images(), SplitConfig(n_folds=7))
    with pytest.raises(ConfigError, match="no column 'specimen'"):
        assign_splits(_images(), SplitConfig(group_by="specimen"))


def test_held_out_needs_no_folds_so_one_labelled_sample_is_enough():
    """An active-learning pool starts from masks on a single sample: only the hold-out is needed."""
    images = _images()
    images["labelled"] = images["sample"].isin(["s1", "s6"])  # s6 is held out: one sample left
    config = SplitConfig(n_folds=4, test={"column": "sample", "values": ["s6"]})
    with pytest.raises(ConfigError, match="split.n_folds: 4 folds need at least 4 groups"):
        assign_splits(images, config)
    roles = held_out_splits(images, config)
    assert roles.tolist() == [TRAIN] * 2 + [NO_MASK] * 6 + [TEST] * 2 + [NO_MASK]
    # The same hold-out as the full assignment wherever that one works.
    full = _images()
    config = SplitConfig(n_folds=2, test={"column": "image_name", "values": ["i0.tif"]})
    assert (
        held_out_splits(full, config).isin([TEST, EXCLUDED]) == assign_splits(full, config).isin([TEST, EXCLUDED])
    ).all()
    column = held_out_splits(_images(), SplitConfig(method="column"))
    assert column.tolist() == [TRAIN] * 8 + [TEST] * 2 + [NO_MASK]
