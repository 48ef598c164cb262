import pandas as pd
import pytest

from microal.active.selection import SelectionSettings, select_batch
from microal.errors import ConfigError


def _scores():
    # 3 images x 4 tiles; image "a" has all the high scores; domains A (a, b) and B (c).
    rows = []
    for i, image in enumerate(["a", "b", "c"]):
        for j in range(4):
            rows.append(
                {
                    "tile_id": f"{image}{j}",
                    "image_id": image,
                    "domain": "B" if image == "c" else "A",
                    "score": (3 - i) * 10 + (4 - j),
                }
            )
    return pd.DataFrame(rows)


def test_top_k_and_exclusions():
    chosen = select_batch(_scores(), SelectionSettings(k=3, diversity="none"), exclude={"a0"})
    assert chosen == ["a1", "a2", "a3"]


def test_cap_per_micrograph():
    chosen = select_batch(_scores(), SelectionSettings(k=4, diversity="none", per_image_cap=2))
    assert chosen == ["a0", "a1", "b0", "b1"]


def test_stratified_by_domain():
    chosen = select_batch(_scores(), SelectionSettings(k=3, diversity="none", stratify_by_domain=True))
    domains = ["B" if t.startswith("c") else "A" for t in chosen]
    assert domains.count("A") == 2 and domains.count("B") == 1  # 8 of 12 available tiles are A


def test_kcenter_spreads_over_the_embedding_space():
    scores = _scores()
    # a0..a3 are near-duplicates; b and c tiles sit far apart from them and from each other.
    embeddings = pd.DataFrame(
        {
            t: ([0.0, 0.0] if t.startswith("a") else [10.0, float(i)] if t.startswith("b") else [-10.0, float(i)])
            for i, t in enumerate(scores.tile_id)
        },
        index=["x", "y"],
    ).T
    chosen = select_batch(scores, SelectionSettings(k=3, candidates_factor=4), embeddings=embeddings)
    assert chosen[0] == "a0"  # the best score first
    assert {t[0] for t in chosen} == {"a", "b", "c"}  # then the farthest, not more duplicates of a
    # Already labelled tiles count as chosen: with a0's cluster covered, b and c come first.
    chosen = select_batch(scores, SelectionSettings(k=2, candidates_factor=6), embeddings=embeddings, labelled=["a3"])
    assert not any(t.startswith("a") for t in chosen)


def test_settings_are_validated_and_empty_pools_are_fine():
    with pytest.raises(ConfigError, match="k must be >= 1"):
        SelectionSettings(k=0)
    with pytest.raises(ConfigError, match="unknown diversity 'coreset'"):
        SelectionSettings(k=2, diversity="coreset")
    assert select_batch(_scores(), SelectionSettings(k=2), exclude=set(_scores().tile_id)) == []
    assert len(set(select_batch(_scores(), SelectionSettings(k=20, diversity="none")))) == 12
