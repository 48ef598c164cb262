"""Grad-CAM's mechanics on networks whose answer is known, and on a real segmentation model."""

import numpy as np
import torch

from microal.models.gradcam import grad_cam


class _Gain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return [x * self.gain]


class _RegionScore(torch.nn.Module):
    """The 'encoder' passes the image through (times one); the output is its deepest features."""

    def __init__(self):
        super().__init__()
        self.encoder = _Gain()

    def forward(self, x):
        return self.encoder(x)[-1]


def test_the_map_follows_the_features_that_raise_the_score():
    image = torch.zeros(1, 1, 32, 32)
    image[..., 8:16, 20:28] = 1.0
    cam = grad_cam(_RegionScore(), (image,), lambda out: out[..., :16, :].sum())
    assert cam.shape == (32, 32) and cam.max() == 1.0
    assert cam[8:16, 20:28].min() == 1.0 and cam[20:, :].max() == 0.0


def test_a_score_the_features_lower_gives_an_empty_map():
    image = torch.rand(1, 1, 16, 16) + 0.1
    cam = grad_cam(_RegionScore(), (image,), lambda out: -out.sum())
    assert np.all(cam == 0)


def test_segmentation_grad_cam_is_at_the_image_size(tiled):
    from microal.data.imageio import read_catalog_image
    from microal.inference.saliency import segmentation_grad_cam
    from microal.models.factory import build_model
    from microal.models.model_file import load_model, save_model_file

    _, catalog, config = tiled
    torch.manual_seed(0)
    path = tiled[0].root / "gradcam-model.pt"
    save_model_file(path, build_model(config.model, config.num_classes), config, 1, {}, [])
    row = catalog.iloc[0]
    image = read_catalog_image(row, config.ingest)
    cam = segmentation_grad_cam(load_model(path), image, float(row.um_per_px), 2, str(row.domain))
    assert cam.shape == image.shape and 0 <= cam.min() and cam.max() <= 1.0 + 1e-6
