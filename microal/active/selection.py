"""Choosing the next batch of tiles for experts, from a score table (selection never scores).

Steps: drop tiles that are queued, labelled or rejected; optionally split the budget over
domains; within each, take the best-scored candidates, spread them over the candidates'
embedding space (k-center greedy, starting from the tiles already labelled), and never take
more than `per_image_cap` tiles of one micrograph.

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


@dataclass(frozen=True)
class SelectionSettings:
    k: int
    per_image_cap: int | None = None
    diversity: str = "kcenter"  # kcenter | none
    candidates_factor: int = 5  # k-center picks among the top k x factor by score
    stratify_by_domain: bool = False
    budget_seconds: float | None = None  # instead of k: the expert time the batch may take

    def __post_init__(self):
        if self.k < 1:
            raise ConfigError(f"selection: k must be >= 1, got {self.k}")
        if self.diversity not in ("kcenter", "none"):
            raise ConfigError(f"selection: unknown diversity {self.diversity!r}; valid: ['kcenter', 'none']")
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
        if settings.diversity == "kcenter" and embeddings is not None:
            candidates = part.head(quota * (settings.candidates_factor if budget is None else 1))
            anchors = embeddings.loc[[t for t in labelled if t in embeddings.index]].to_numpy(dtype=np.float64)
            order = _kcenter(candidates, embeddings, quota, anchors, settings.per_image_cap)
        else:
            order = _top_with_cap(part, quota, settings.per_image_cap)
        if budget is not None:
            order = _within_budget(order, part.set_index("tile_id").estimated_seconds, quota_budget)
        chosen += order
    return chosen
