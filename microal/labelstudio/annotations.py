"""Several experts on one tile: a consolidated mask (majority vote) and how much they agree."""

from __future__ import annotations

from itertools import combinations

import numpy as np

from microal.data.tiling import IGNORE_INDEX
from microal.models.metrics import PixelCounts


def consolidate(masks: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Per pixel, the class most annotators painted; unpainted votes do not count, and a tie
    (experts split evenly) leaves the pixel unknown (255) rather than guessing."""
    if not masks:
        raise ValueError("no masks to consolidate")
    if len(masks) == 1:
        return masks[0].copy()
    stack = np.stack(masks)
    votes = np.stack([(stack == c).sum(axis=0) for c in range(num_classes)])  # [classes, H, W]
    best = votes.max(axis=0)
    winners = (votes == best[None]).sum(axis=0)
    out = votes.argmax(axis=0).astype(np.uint8)
    out[(best == 0) | (winners > 1)] = IGNORE_INDEX
    return out


def agreement(masks: list[np.ndarray], num_classes: int) -> float:
    """Mean pairwise mIoU between annotators, on the pixels both painted (NaN for one annotator)."""
    scores = []
    for a, b in combinations(masks, 2):
        both = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
        if both.any():
            scores.append(PixelCounts.from_masks(a[both], b[both], num_classes).miou())
    return float(np.mean(scores)) if scores else float("nan")
