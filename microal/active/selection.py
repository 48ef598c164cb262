"""Choosing the next batch of tiles for experts, from a score table (selection never scores).

Steps: drop tiles that are queued, labelled or rejected; optionally split the budget over
domains; within each, take the best-scored candidates, spread them over the candidates'
embedding space (k-center greedy, starting from the tiles already labelled), and never take
more than `per_image_cap` tiles of one micrograph. TypiClust (`diversity="typiclust"`, the
acquisition `typiclust`) instead clusters the embeddings and takes the most typical tile of
each cluster that labels do not cover yet.

With a budget in expert seconds (`budget_seconds`, and an `estimated_seconds` column in the
score table), the batch is not k tiles but as many as fit the budget, in the same order of
preference: a tile that would overrun it is passed over for a cheaper one further down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from microal.errors import ConfigError


def cold_start_acquisition(acquisition: str, labelled: int, random_until: int | None, items: str = "tiles") -> str:
    """`acquisition`, or random while fewer than `random_until` items are labelled (al.random_until:
    a model of a handful of labels is unsure wherever it has seen nothing alike)."""
    if random_until is not None and labelled < random_until and acquisition != "random":
        print(
            f"al select: {labelled} labelled {items}, under al.random_until ({random_until}): "
            f"this batch is random, {acquisition} from {random_until} on",
            flush=True,
        )
        return "random"
    return acquisition


DIVERSITIES = ("kcenter", "none", "typiclust")
# TypiClust's constants (Hacohen et al. 2022): typicality from up to 20 neighbours; clusters of
# fewer than 5 tiles are outliers, taken only when no larger cluster is left.
TYPICALITY_NEIGHBOURS = 20
MIN_CLUSTER_SIZE = 5


@dataclass(frozen=True)
class SelectionSettings:
    k: int
    per_image_cap: int | None = None
    diversity: str = "kcenter"  # kcenter | none | typiclust (ignores the scores' order)
    candidates_factor: int = 5  # k-center picks among the top k x factor by score
    stratify_by_domain: bool = False
    budget_seconds: float | None = None  # instead of k: the expert time the batch may take

    def __post_init__(self):
        if self.k < 1:
            raise ConfigError(f"selection: k must be >= 1, got {self.k}")
        if self.diversity not in DIVERSITIES:
            raise ConfigError(f"selection: unknown diversity {self.diversity!r}; valid: {list(DIVERSITIES)}")
        if self.budget_seconds is not None and self.budget_seconds <= 0:
            raise ConfigError(f"selection: the budget must be positive, got {self.budget_seconds} s")


def _domain_quotas(available: pd.DataFrame, k: int) -> dict[str, int]:
    """Budget per domain in proportion to its available tiles (largest remainders)."""
    sizes = available.groupby("domain").size()
    exact = k * sizes / sizes.sum()
    quotas = np.floor(exact).astype(int)
    for domain in (exact - quotas).sort_values(ascending=False).index[: k - quotas.sum()]:
        quotas[domain] += 1
    return quotas.to_dict()


def _kcenter(
    candidates: pd.DataFrame, embeddings: pd.DataFrame, k: int, anchors: np.ndarray, cap: int | None
) -> list[str]:
    points = embeddings.loc[candidates.tile_id].to_numpy(dtype=np.float64)
    scale = np.linalg.norm(points, axis=1, keepdims=True).mean() or 1.0
    points = points / scale
    if len(anchors):
        distance = np.min(np.linalg.norm(points[:, None] - anchors[None] / scale, axis=2), axis=1)
    else:
        distance = np.full(len(points), np.inf)
    chosen: list[int] = []
    per_image: dict[str, int] = {}
    scores = candidates.score.to_numpy()
    images = candidates.image_id.to_numpy()
    while len(chosen) < k:
        allowed = np.array([cap is None or per_image.get(img, 0) < cap for img in images])
        allowed[chosen] = False
        if not allowed.any():
            break
        # Farthest from everything chosen (or labelled); ties (e.g. no anchors yet) by score.
        key = np.where(allowed, distance, -np.inf)
        best = np.flatnonzero(key == key.max())
        pick = int(best[np.argmax(scores[best])])
        chosen.append(pick)
        per_image[images[pick]] = per_image.get(images[pick], 0) + 1
        distance = np.minimum(distance, np.linalg.norm(points - points[pick], axis=1))
    return candidates.tile_id.to_numpy()[chosen].tolist()


def _unit(points: np.ndarray) -> np.ndarray:
    return points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)


def typicality(points: np.ndarray, neighbours: int = TYPICALITY_NEIGHBOURS) -> np.ndarray:
    """1 / (1 + mean distance to the nearest `neighbours` other points), on unit-length
    embeddings: high where the pool is dense (a typical tile), in (1/3, 1]."""
    from sklearn.neighbors import NearestNeighbors

    points = _unit(np.asarray(points, dtype=np.float64))
    if len(points) < 2:
        return np.ones(len(points))
    k = min(neighbours, len(points) - 1)
    distance, _ = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
    return 1.0 / (1.0 + distance[:, 1:].mean(axis=1))  # column 0: the point itself


def _typiclust(
    candidates: pd.DataFrame, embeddings: pd.DataFrame, k: int, labelled: list[str], cap: int | None
) -> list[str]:
    """TypiClust: k-means of the candidates and labelled tiles into (labelled + k) clusters; k
    times, the largest cluster with the fewest labelled or chosen tiles gives its most typical
    candidate (typicality within the cluster), never more than `cap` tiles of one micrograph."""
    from sklearn.cluster import KMeans

    anchors = [t for t in labelled if t in embeddings.index]
    ids = candidates.tile_id.tolist()
    points = _unit(embeddings.loc[ids + anchors].to_numpy(dtype=np.float64))
    clusters = min(len(anchors) + k, len(points))
    assignment = KMeans(n_clusters=clusters, n_init=3, random_state=0).fit_predict(points)
    is_candidate = np.arange(len(points)) < len(ids)
    covered = np.bincount(assignment[~is_candidate], minlength=clusters)
    sizes = np.bincount(assignment, minlength=clusters)
    typical = np.zeros(len(points))
    for cluster in range(clusters):
        members = np.flatnonzero(assignment == cluster)
        typical[members] = typicality(points[members])
    images = candidates.image_id.to_numpy()
    chosen: list[int] = []
    per_image: dict[str, int] = {}
    open_clusters = set(range(clusters))
    while len(chosen) < k and open_clusters:
        # Outlier clusters last; then the least covered, the largest first.
        cluster = min(open_clusters, key=lambda c: (sizes[c] < MIN_CLUSTER_SIZE, covered[c], -sizes[c], c))
        members = [
            i
            for i in np.flatnonzero((assignment == cluster) & is_candidate)
            if i not in chosen and (cap is None or per_image.get(images[i], 0) < cap)
        ]
        if not members:
            open_clusters.discard(cluster)
            continue
        pick = max(members, key=lambda i: (typical[i], -i))
        chosen.append(int(pick))
        covered[cluster] += 1
        per_image[images[pick]] = per_image.get(images[pick], 0) + 1
    return [ids[i] for i in chosen]


def _top_with_cap(candidates: pd.DataFrame, k: int, cap: int | None) -> list[str]:
    if cap is None:
        return candidates.tile_id.head(k).tolist()
    ranked = candidates.assign(rank_in_image=candidates.groupby("image_id").cumcount())
    return ranked[ranked.rank_in_image < cap].tile_id.head(k).tolist()


def _within_budget(order: list[str], seconds: pd.Series, budget: float) -> list[str]:
    chosen, spent = [], 0.0
    for tile_id in order:
        cost = float(seconds[tile_id])
        if spent + cost <= budget:
            chosen.append(tile_id)
            spent += cost
    return chosen


def select_batch(
    scores: pd.DataFrame,
    settings: SelectionSettings,
    exclude: set[str] = frozenset(),
    embeddings: pd.DataFrame | None = None,
    labelled: list[str] = (),
) -> list[str]:
    """Tile ids to queue next. `scores`: one row per tile with tile_id, image_id, domain, score
    (and estimated_seconds with a budget)."""
    available = scores[~scores.tile_id.isin(exclude)].sort_values("score", ascending=False, kind="stable")
    if available.empty:
        return []
    budget = settings.budget_seconds
    if budget is not None:
        if "estimated_seconds" not in available:
            raise ConfigError("selection: a budget in expert time needs the tiles' estimated_seconds")
        # How many tiles the budget buys at the typical cost of the best-scored ones: k-center
        # then orders top-scored candidates as for a batch of that size.
        typical = float(available.estimated_seconds.head(settings.k * settings.candidates_factor).median())
        k = max(1, int(np.ceil(budget / max(typical, 1e-9))))
    else:
        k = settings.k
    quotas = _domain_quotas(available, k) if settings.stratify_by_domain else {None: k}
    chosen: list[str] = []
    for domain, quota in quotas.items():
        part = available if domain is None else available[available.domain == domain]
        if quota == 0 or part.empty:
            continue
        if budget is not None:
            # Order more tiles than the quota (some will not fit), then spend this domain's share.
            quota_budget = budget * quota / k
            quota = min(len(part), quota * settings.candidates_factor)
        if settings.diversity == "typiclust":
            if embeddings is None:
                raise ConfigError("selection: typiclust needs the tiles' embeddings")
            order = _typiclust(part, embeddings, quota, list(labelled), settings.per_image_cap)
        elif settings.diversity == "kcenter" and embeddings is not None:
            candidates = part.head(quota * (settings.candidates_factor if budget is None else 1))
            anchors = embeddings.loc[[t for t in labelled if t in embeddings.index]].to_numpy(dtype=np.float64)
            order = _kcenter(candidates, embeddings, quota, anchors, settings.per_image_cap)
        else:
            order = _top_with_cap(part, quota, settings.per_image_cap)
        if budget is not None:
            order = _within_budget(order, part.set_index("tile_id").estimated_seconds, quota_budget)
        chosen += order
    return chosen
