"""Grad-CAM (Selvaraju et al. 2017) for any network with an smp encoder (`net.encoder`): the
encoder's deepest feature maps, weighted by the mean gradient of a score with respect to each,
summed and rectified: where the evidence for the score sits in the input."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


def grad_cam(
    net: torch.nn.Module, inputs: tuple[torch.Tensor, ...], score: Callable[[object], torch.Tensor]
) -> np.ndarray:
    """Grad-CAM of `score(net(*inputs))` (a scalar) for the first input's image, at its size, in 0..1
    (all zeros where nothing supports the score)."""
    captured: dict[str, torch.Tensor] = {}

    def keep(module, args, output):
        deepest = output[-1] if isinstance(output, list | tuple) else output
        deepest.retain_grad()
        captured["features"] = deepest

    handle = net.encoder.register_forward_hook(keep)
    was_training = net.training
    net.eval()
    try:
        with torch.enable_grad():
            net.zero_grad(set_to_none=True)
            value = score(net(*inputs))
            value.backward()
    finally:
        handle.remove()
        net.train(was_training)
    features = captured["features"]
    weights = features.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * features).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=inputs[0].shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam.detach().float().cpu().numpy()
    top = float(cam.max())
    return cam / top if top > 0 else cam
