"""Which unlabelled micrographs an expert should label next (image-level active learning, the
ranking half): by the entropy of their averaged crop distribution (the classifier cannot decide
between classes) or by novelty (the share of their crops that are "none of these": a
microstructure the classifier has not seen)."""

from __future__ import annotations

import pandas as pd

from microal.errors import ConfigError

CRITERIA = ("entropy", "novelty")


def rank_images(predictions: pd.DataFrame, by: str = "entropy", k: int | None = None) -> pd.DataFrame:
    """The predictions table ordered by `by` (highest first, ties by the other criterion, then by
    name), with a `rank` column from 1; the first k rows when k is given."""
    if by not in CRITERIA:
        raise ConfigError(f"unknown ranking criterion {by!r}; valid: {list(CRITERIA)}")
    other = next(c for c in CRITERIA if c != by)
    ranked = predictions.sort_values([by, other, "image_name"], ascending=[False, False, True], kind="stable")
    ranked = ranked.reset_index(drop=True).assign(rank=lambda t: t.index + 1)
    return ranked if k is None else ranked.head(k)
