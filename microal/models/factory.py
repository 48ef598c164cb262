"""Segmentation models from segmentation-models-pytorch, one input channel, with encoder weights
from nowhere (``none``), a pretrained source (ImageNet, MicroNet: see ``weights``) or a local
checkpoint file. Pretrained RGB encoders meet grey micrographs through ``adapt_first_conv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch

from microal.config import ModelConfig
from microal.errors import ConfigError, InputError
from microal.models import weights as pretrained
from microal.models.model_file import read_encoder_state, read_state_dict


def architectures() -> list[str]:
    return sorted(smp.MODEL_ARCHITECTURES_MAPPING)


def build_model(model: ModelConfig, num_classes: int) -> torch.nn.Module:
    """An smp model with random weights, or ImageNet or local encoder weights as configured."""
    if model.arch.lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ConfigError(f"model.arch: unknown architecture {model.arch!r}; valid: {architectures()}")
    check_encoder_name(model)
    try:
        net = smp.create_model(
            model.arch,
            encoder_name=model.encoder,
            encoder_weights=None,  # pretrained weights are loaded below, from microal's cache
            in_channels=1,
            classes=num_classes,
            **model.options,
        )
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"model: {model.arch}/{model.encoder}: {error}") from None
    load_configured_encoder_weights(net, model)
    return net


def check_encoder_name(model: ModelConfig) -> None:
    """smp's own encoders, or any timm model as `tu-<name>` (smp's universal timm encoder:
    light ones such as tu-regnetx_002 train several times faster on a CPU)."""
    name = model.encoder
    if name in smp.encoders.get_encoder_names():
        return
    if name.startswith("tu-"):
        import timm

        if timm.is_model(name[3:]):
            return
    raise ConfigError(
        f"model.encoder: unknown encoder {name!r}; see segmentation_models_pytorch.encoders.get_encoder_names(), "
        "or tu-<name> for a timm model (timm.list_models())"
    )


def load_configured_encoder_weights(net: torch.nn.Module, model: ModelConfig) -> None:
    """model.encoder_weights into `net.encoder`: none, a pretrained source, or a local file."""
    weights = model.encoder_weights
    if weights in pretrained.PRETRAINED:
        state, path = pretrained.encoder_state(model.encoder, weights)
        load_encoder_state(net, state, path)
    elif weights != "none":
        load_encoder_state(net, read_encoder_state(Path(weights)), Path(weights))


def adapt_first_conv(kernel: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB first-layer kernel (out, 3, k, k) for `in_channels` grey inputs.

    A grey micrograph fed to an RGB network would be the same image in all three channels, so
    the one-channel kernel that gives the same response is the sum over R, G and B (what smp
    does for ImageNet weights). For other channel counts, the mean kernel repeated, scaled so
    the response to equal channels is kept."""
    if kernel.shape[1] == in_channels:
        return kernel
    summed = kernel.sum(dim=1, keepdim=True)
    if in_channels == 1:
        return summed
    return summed.repeat(1, in_channels, 1, 1) / in_channels


# Keys of a classification network that an smp encoder does not have (its head).
HEAD_PREFIXES = ("fc.", "classifier.", "last_linear.", "_fc.")


def load_encoder_state(net: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Encoder weights into `net`; the first convolution adapted to the model's input channels."""
    own = net.encoder.state_dict()
    adapted = {}
    for key, value in state.items():
        if key.startswith(HEAD_PREFIXES) and key not in own:
            continue
        target = own.get(key)
        if target is not None and value.ndim == 4 and target.ndim == 4 and value.shape[1] != target.shape[1]:
            value = adapt_first_conv(value, target.shape[1])
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
