import numpy as np
import pandas as pd
import pytest

from microal.active.selection import SelectionSettings, select_batch, typicality
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


def test_a_budget_in_expert_time_takes_the_best_tiles_that_fit():
    scores = _scores()
    # a0 is the best tile and the dearest (a long phase boundary); the others cost 60 s.
    scores["estimated_seconds"] = [300.0 if t == "a0" else 60.0 for t in scores.tile_id]
    settings = SelectionSettings(k=3, diversity="none", budget_seconds=240)
    chosen = select_batch(scores, settings)
    # a0 would overrun 4 minutes: passed over for the next best tiles, as many as fit.
    assert chosen == ["a1", "a2", "a3", "b0"]
    assert scores.set_index("tile_id").loc[chosen, "estimated_seconds"].sum() <= 240
    enough = select_batch(scores, SelectionSettings(k=3, diversity="none", budget_seconds=420))
    assert enough[0] == "a0" and len(enough) == 3  # 300 + 60 + 60
    with pytest.raises(ConfigError, match="estimated_seconds"):
        select_batch(_scores(), settings)
    with pytest.raises(ConfigError, match="budget must be positive"):
        SelectionSettings(k=3, budget_seconds=0)


def _blobs():
    """Two groups of tiles on the unit sphere (8 around x, 6 around y), each with one tile at its
    centre, and 2 outliers around z; a tile's image is its group."""
    rows, points = [], {}
    for group, axis, size in (("g", 0, 8), ("h", 1, 6), ("o", 2, 2)):
        for i in range(size):
            angle = 2 * np.pi * i / max(size - 1, 1)
            radius = 0.0 if i == 0 else (0.05 if group != "o" else 0.6)
            point = np.zeros(3)
            point[axis] = 1.0
            point[(axis + 1) % 3] = radius * np.cos(angle)
            point[(axis + 2) % 3] = radius * np.sin(angle)
            points[f"{group}{i}"] = point
            rows.append({"tile_id": f"{group}{i}", "image_id": group, "domain": "A", "score": 0.0})
    return pd.DataFrame(rows), pd.DataFrame(points).T


def test_typicality_is_highest_where_the_pool_is_dense():
    _, embeddings = _blobs()
    blob = embeddings[embeddings.index.str.startswith("g")]
    within = pd.Series(typicality(blob.to_numpy()), index=blob.index)
    assert within.idxmax() == "g0"  # a blob's centre over its rim
    typical = pd.Series(typicality(embeddings.to_numpy(), neighbours=3), index=embeddings.index)
    assert typical[["o0", "o1"]].max() < typical.drop(["o0", "o1"]).min()  # outliers least
    assert typical.between(1 / 3, 1).all() and within.between(1 / 3, 1).all()


def test_typiclust_takes_the_typical_tile_of_each_uncovered_cluster():
    scores, embeddings = _blobs()
    settings = SelectionSettings(k=2, diversity="typiclust")
    # Nothing labelled: the centres of the two real clusters, the larger first; outliers last.
    assert select_batch(scores, settings, embeddings=embeddings) == ["g0", "h0"]
    # g is covered by a label: h's centre first, then g's most typical other tile, not an outlier.
    chosen = select_batch(scores, settings, exclude={"g0"}, embeddings=embeddings, labelled=["g0"])
    assert chosen[0] == "h0" and chosen[1].startswith("g")
    # At most one tile per micrograph: the third tile comes from the outliers' image.
    capped = select_batch(scores, SelectionSettings(k=3, diversity="typiclust", per_image_cap=1), embeddings=embeddings)
    assert [t[0] for t in capped] == ["g", "h", "o"]
    with pytest.raises(ConfigError, match="typiclust needs the tiles' embeddings"):
        select_batch(scores, settings)
