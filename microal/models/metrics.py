"""Segmentation metrics: per-class IoU from pixel counts (smp's metric functions), mIoU, phase
fractions and relative domain transferability.

IoU is computed from counts summed over everything evaluated (all pixels of all images in a set),
not averaged per image, so a small image does not weigh as much as a large one. A class that
appears in neither prediction nor truth has no IoU (NaN) and is left out of the mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import segmentation_models_pytorch as smp
import torch

from microal.data.tiling import IGNORE_INDEX, class_pixel_counts


def _flat_labels(labels) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        return labels.long().reshape(1, -1)
    return torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(1, -1))


@dataclass
class PixelCounts:
    """True positives, false positives and false negatives per class."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @classmethod
    def zeros(cls, num_classes: int) -> PixelCounts:
        return cls(*(np.zeros(num_classes, dtype=np.int64) for _ in range(3)))

    @classmethod
    def from_masks(cls, pred, truth, num_classes: int) -> PixelCounts:
        """Counts of class-index masks (numpy arrays, or tensors counted on their own device)."""
        tp, fp, fn, _ = smp.metrics.get_stats(
            _flat_labels(pred),
            _flat_labels(truth),
            mode="multiclass",
            num_classes=num_classes,
            ignore_index=IGNORE_INDEX,
        )
        return cls(*(count.sum(0).cpu().numpy() for count in (tp, fp, fn)))

    def __add__(self, other: PixelCounts) -> PixelCounts:
        return PixelCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def as_array(self) -> np.ndarray:
        return np.stack([self.tp, self.fp, self.fn])

    @classmethod
    def from_array(cls, array: np.ndarray) -> PixelCounts:
        return cls(*(np.asarray(a, dtype=np.int64) for a in array))

    def iou(self) -> np.ndarray:
        tp, fp, fn = (torch.as_tensor(a) for a in (self.tp, self.fp, self.fn))
        return smp.metrics.iou_score(
            tp, fp, fn, torch.zeros_like(tp), reduction="none", zero_division=float("nan")
        ).numpy()

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def phase_fractions(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Area fraction of each class among the labelled pixels."""
    counts = class_pixel_counts(mask, num_classes)
    return counts / max(counts.sum(), 1)


def balanced_class_weights(pixel_counts: np.ndarray) -> np.ndarray:
    """One weight per class, 1/sqrt of its share of the pixels, scaled so that an average pixel
    weighs 1: a phase of 2 % weighs about 6 times one of 70 %. A class with no pixels gets the
    largest weight (nothing is known of it). Used by the loss (training.class_weights: balanced)
    and by class-balanced acquisition (al.class_balanced)."""
    share = np.asarray(pixel_counts, dtype=np.float64)
    share = share / max(share.sum(), 1)
    present = share > 0
    weights = np.zeros_like(share)
    weights[present] = share[present] ** -0.5
    weights[~present] = weights[present].max() if present.any() else 1.0
    return weights / max(float((weights * share).sum()), 1e-12)


def relative_domain_transferability(miou_target: float, miou_source: float) -> float:
    """RDT = (mIoU_target - mIoU_source) / mIoU_source: 0 means no loss on the new domain, -0.4 a 40% drop."""
    if not miou_source > 0:
        return float("nan")
    return (miou_target - miou_source) / miou_source
