"""Segmentation models from segmentation-models-pytorch, one input channel, with encoder weights
from nowhere (``none``), ImageNet (smp's own loader, needs the network) or a local checkpoint file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch

from microal.config import ModelConfig
from microal.errors import ConfigError, InputError, MicroalError
from microal.models.model_file import read_encoder_state, read_state_dict


def architectures() -> list[str]:
    return sorted(smp.MODEL_ARCHITECTURES_MAPPING)


def build_model(model: ModelConfig, num_classes: int) -> torch.nn.Module:
    """An smp model with random weights, or ImageNet or local encoder weights as configured."""
    if model.arch.lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ConfigError(f"model.arch: unknown architecture {model.arch!r}; valid: {architectures()}")
    if model.encoder not in smp.encoders.get_encoder_names():
        raise ConfigError(
            f"model.encoder: unknown encoder {model.encoder!r}; "
            "see segmentation_models_pytorch.encoders.get_encoder_names()"
        )
    weights = model.encoder_weights
    smp_weights = "imagenet" if weights == "imagenet" else None
    try:
        net = smp.create_model(
            model.arch,
            encoder_name=model.encoder,
            encoder_weights=smp_weights,
            in_channels=1,
            classes=num_classes,
            **model.options,
        )
    except (OSError, ConnectionError) as error:
        # huggingface_hub raises OSError subclasses when it can neither download nor find a cached copy.
        raise MicroalError(
            f"model.encoder_weights: imagenet: could not download the ImageNet weights of encoder "
            f"{model.encoder!r} ({type(error).__name__}: no network access?). Use encoder_weights: none, "
            "or a local checkpoint file of the encoder."
        ) from None
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"model: {model.arch}/{model.encoder}: {error}") from None
    if weights not in ("none", "imagenet"):
        load_encoder_weights(net, Path(weights))
    return net


def load_encoder_weights(net: torch.nn.Module, path: Path) -> None:
    state = read_encoder_state(path)
    own = net.encoder.state_dict()
    adapted = {}
    for key, value in state.items():
        target = own.get(key)
        if target is not None and value.ndim == 4 and target.ndim == 4 and value.shape[1] != target.shape[1] == 1:
            value = value.sum(dim=1, keepdim=True)  # an RGB first layer onto one channel, as smp does
        adapted[key] = value
    missing = sorted(set(own) - set(adapted))
    unexpected = sorted(set(adapted) - set(own))
    wrong = sorted(k for k in set(own) & set(adapted) if own[k].shape != adapted[k].shape)
    if missing or unexpected or wrong:
        raise InputError(
            path,
            "encoder checkpoint does not fit model.encoder "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]})",
        )
    net.encoder.load_state_dict(adapted)


def load_model_weights(net: torch.nn.Module, path: str | Path) -> None:
    """Start from a whole microal model file (fine-tuning, a warm-started round)."""
    state = read_state_dict(path)
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise InputError(path, f"model file does not fit the configured model ({first})") from None


def parameter_groups(net: torch.nn.Module, lr: float, encoder_lr_factor: float) -> list[dict[str, Any]]:
    """Encoder at lr x factor (a pre-trained encoder is disturbed less), the rest at lr."""
    module = getattr(net, "module", net)  # unwrap DistributedDataParallel
    encoder_ids = {id(p) for p in module.encoder.parameters()}
    encoder = [p for p in module.parameters() if id(p) in encoder_ids]
    rest = [p for p in module.parameters() if id(p) not in encoder_ids]
    return [
        {"params": encoder, "lr": lr * encoder_lr_factor, "name": "encoder"},
        {"params": rest, "lr": lr, "name": "decoder"},
    ]
