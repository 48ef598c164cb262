"""Where in a micrograph the classifier sees each class.

- `evidence_map`: the map of Larmuseau et al. 2021: many overlapping crops of one physical size
  (the middle of the image's crop range), each classified; every pixel gets the mean class
  distribution (with "none") of the crops that cover it.
- `classifier_grad_cam`: Grad-CAM of a class's mixture log-likelihood of the descriptor of one
  crop covering the whole image (its short side, centred), resampled back onto the image.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from microal.classify.classifier_file import Classifier
from microal.data.crops import crop_box, crop_range, cut_crop, log_density
from microal.data.datasets import standardise
from microal.models.gradcam import grad_cam


def evidence_map(
    classifier: Classifier, image: np.ndarray, um_per_px: float, crops: int = 400, seed: int = 0, batch: int = 64
) -> np.ndarray:
    """(classes + 1, H, W): the mean crop distribution over the crops covering each pixel."""
    settings = classifier.config.classify
    feasible = crop_range(*image.shape, um_per_px, settings)
    side = math.sqrt(feasible.min_px * feasible.max_px)
    mean, std = float(image.mean()), float(image.std()) or 1.0
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, size=(crops, 2)) * np.array(image.shape)
    density = torch.full((1,), log_density(side, um_per_px, settings.crop_size))
    totals = np.zeros((len(classifier.classes) + 1, *image.shape))
    cover = np.zeros(image.shape)
    for start in range(0, crops, batch):
        chunk = centres[start : start + batch]
        tensors = torch.from_numpy(
            np.stack([standardise(cut_crop(image, side, y, x, settings.crop_size), mean, std) for y, x in chunk])[
                :, None
            ]
        )
        descriptors = classifier.describe(tensors, density.expand(len(chunk), 1).clone()).numpy()
        distribution = classifier.open_set.crop_distribution(descriptors)
        for (y, x), dist in zip(chunk, distribution, strict=True):
            top, left, size = crop_box(image.shape, side, y, x)
            totals[:, top : top + size, left : left + size] += dist[:, None, None]
            cover[top : top + size, left : left + size] += 1
    return totals / np.maximum(cover, 1)[None]


def classifier_grad_cam(classifier: Classifier, image: np.ndarray, um_per_px: float, class_index: int) -> np.ndarray:
    """Grad-CAM (H, W in 0..1) of class `class_index`'s log-likelihood, for the largest centred crop."""
    settings = classifier.config.classify
    side = float(min(image.shape))
    top, left, size = crop_box(image.shape, side, image.shape[0] / 2, image.shape[1] / 2)
    crop = cut_crop(image, side, image.shape[0] / 2, image.shape[1] / 2, settings.crop_size)
    tensor = torch.from_numpy(standardise(crop, float(image.mean()), float(image.std()) or 1.0)[None, None])
    density = torch.tensor([[log_density(side, um_per_px, settings.crop_size)]], dtype=torch.float32)
    net = classifier.net.float()
    cam = grad_cam(
        net,
        (tensor, density),
        lambda descriptor: classifier.open_set.class_log_likelihood_torch(descriptor, class_index).sum(),
    )
    import cv2

    full = np.zeros(image.shape, dtype=np.float32)
    full[top : top + size, left : left + size] = cv2.resize(cam, (size, size), interpolation=cv2.INTER_LINEAR)
    return full
