"""Grad-CAM for segmentation models: where the encoder's evidence for a class sits in a
micrograph. The image is prepared exactly as for prediction (intensities, scale, standardisation)
and seen whole (mirror-padded to the encoders' stride); the score is the class's mean logit over
the pixels the model assigns to it (over all pixels where it assigns none)."""

from __future__ import annotations

import numpy as np
import torch

from microal.config import ENCODER_STRIDE
from microal.data.datasets import standardise
from microal.data.preprocess import image_stats, prepare_intensities
from microal.data.tiling import resample_image, resample_probabilities, scale_factor
from microal.errors import InputError
from microal.models.domain_bn import domain_statistics
from microal.models.gradcam import grad_cam
from microal.models.model_file import LoadedModel


def segmentation_grad_cam(
    model: LoadedModel, image: np.ndarray, um_per_px: float | None, class_index: int, domain: str = "default"
) -> np.ndarray:
    """Grad-CAM (H, W in 0..1) of class `class_index` at the image's own size."""
    config = model.config
    factor = scale_factor(um_per_px, config.tiling)
    if factor is None:
        raise InputError("image", f"no pixel size, but the model works at {config.tiling.target_um_per_px} µm/px")
    prepared = resample_image(
        prepare_intensities(image, domain, config.preprocess), factor, config.tiling.image_interpolation
    )
    mean, std = image_stats(prepared)
    if config.preprocess.normalize == "domain" and domain in model.domain_stats:
        mean, std = model.domain_stats[domain]
    height, width = prepared.shape
    pad = [(-n) % ENCODER_STRIDE for n in (height, width)]
    padded = np.pad(standardise(prepared, mean, std), ((0, pad[0]), (0, pad[1])), mode="reflect")
    tensor = torch.from_numpy(padded[None, None]).to(next(model.net.parameters()).device)

    def score(logits: torch.Tensor) -> torch.Tensor:
        logits = logits[:, :, :height, :width].float()
        chosen = logits.argmax(1) == class_index
        own = logits[:, class_index]
        return own[chosen].mean() if chosen.any() else own.mean()

    with domain_statistics(model.net, model.bn_stats.get(domain)):  # an adapted model's target-domain statistics
        cam = grad_cam(model.net.float(), (tensor,), score)[:height, :width]
    return resample_probabilities(cam[None], image.shape)[0]
