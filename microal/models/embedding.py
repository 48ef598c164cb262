"""The image classifier's network: an smp encoder, pooled, with the crop's pixel density joined
to the pooled features, and a small head giving a low-dimensional descriptor (2-D by default, as
Larmuseau et al. 2021: a plane one can look at). Classes are regions of that plane, modelled
after training by a Gaussian mixture each (microal.classify.openset)."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

from microal.config import ClassifyConfig, ModelConfig
from microal.errors import ConfigError
from microal.models.factory import check_encoder_name, load_configured_encoder_weights

# Crops' log10 px/µm are centred and scaled by these before they join the features: densities of
# micrographs span about 1e-1 to 1e3 px/µm, so log10 lies within -1..3.
DENSITY_CENTRE, DENSITY_SCALE = 1.0, 1.0


class EmbeddingNet(nn.Module):
    """Crops -> descriptors. `classify` is a linear softmax layer on the pooled features (and
    density) whose cross-entropy training may add to the triplet loss: from a random start it
    teaches the encoder far faster than triplets through a 2-D descriptor do (which barely moved
    on a real set in the first epochs). Prediction uses the descriptor only."""

    def __init__(self, encoder: nn.Module, features: int, hidden: int, embedding_dim: int, classes: int):
        super().__init__()
        self.encoder = encoder
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Linear(features + 1, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, embedding_dim),
            # Unit spread per dimension: without it the triplet margin is met by scaling the
            # plane up, and the crops collapse onto a line (seen on a real set).
            nn.BatchNorm1d(embedding_dim, affine=False),
        )
        self.classify = nn.Linear(features + 1, classes)

    def features(self, images: torch.Tensor, log_density: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features with the crop's standardised log density appended."""
        pooled = self.pool(self.encoder(images)[-1]).flatten(1)
        density = (log_density.reshape(-1, 1).to(pooled.dtype) - DENSITY_CENTRE) / DENSITY_SCALE
        return torch.cat([pooled, density], dim=1)

    def forward(self, images: torch.Tensor, log_density: torch.Tensor, with_logits: bool = False):
        """Descriptors; with_logits: (descriptors, class logits) of one pass (training, through
        DDP's forward)."""
        features = self.features(images, log_density)
        if with_logits:
            return self.head(features), self.classify(features)
        return self.head(features)


def build_embedding_net(model: ModelConfig, settings: ClassifyConfig, classes: int) -> EmbeddingNet:
    """The encoder of model.encoder (one grey channel; model.encoder_weights as for segmentation)
    and the descriptor head."""
    check_encoder_name(model)
    try:
        encoder = smp.encoders.get_encoder(model.encoder, in_channels=1, depth=5, weights=None)
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"model.encoder: {model.encoder}: {error}") from None
    net = EmbeddingNet(encoder, encoder.out_channels[-1], settings.hidden, settings.embedding_dim, classes)
    load_configured_encoder_weights(net, model)
    return net
