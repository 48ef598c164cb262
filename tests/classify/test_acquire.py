import pandas as pd
import pytest

from microal.classify.acquire import rank_images
from microal.errors import ConfigError

TABLE = pd.DataFrame(
    {
        "image_name": ["a.png", "b.png", "c.png", "d.png"],
        "entropy": [0.2, 0.9, 0.9, 0.1],
        "novelty": [0.8, 0.1, 0.3, 0.0],
    }
)


def test_ranked_by_entropy_with_novelty_breaking_ties():
    ranked = rank_images(TABLE, by="entropy")
    assert list(ranked.image_name) == ["c.png", "b.png", "a.png", "d.png"] and list(ranked["rank"]) == [1, 2, 3, 4]


def test_ranked_by_novelty_and_cut_to_k():
    assert list(rank_images(TABLE, by="novelty", k=2).image_name) == ["a.png", "c.png"]


def test_an_unknown_criterion_is_refused():
    with pytest.raises(ConfigError, match="entropy"):
        rank_images(TABLE, by="margin")
