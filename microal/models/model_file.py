"""The model file: the one owner of a saved microal model.

A model file is self-contained: the network's weights, the project config it was trained with
(classes, tiling, model), the epoch, its metrics and the whole history, the per-domain intensity
statistics that ``preprocess.normalize: domain`` standardises new images with, and, for adapted
models, batch-norm statistics of each target domain (see ``domain_bn``). Training loops write it
(every checkpoint, then the run's ``best_model.pt`` / ``last_model.pt``); prediction, scoring,
fine-tuning, ensembles taken from a search and run export read it here, and nowhere else.

The format carries a version: a file written by a newer microal is refused with a message that
says so, rather than misread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from microal.config import ProjectConfig, parse_config
from microal.errors import InputError
from microal.files import atomic_path
from microal.models.compute import autocast, channels_last, resolve_precision

MODEL_FILE = "model.pt"  # the name inside a checkpoint; a run exports best_model.pt and last_model.pt
ENCODER_FILE = "encoder.pt"  # pre-training's output: an encoder that model.encoder_weights accepts
FORMAT_NAME = "microal-model"
FORMAT_VERSION = 1
MODEL_FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
DOMAIN_BN_KEY = "bn_stats_by_domain"  # {domain: {batch-norm buffer name: tensor}}


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel (or the module itself)."""
    return getattr(module, "module", module)


def save_model_file(
    path: str | Path,
    net: torch.nn.Module,
    config: ProjectConfig | dict,
    epoch: int,
    metrics: dict,
    history: list,
    domain_stats: dict[str, tuple[float, float]] | None = None,
) -> None:
    """Write a model file (atomically: a failed write leaves no half-written file)."""
    config_dict = config if isinstance(config, dict) else config.model_dump(mode="json")
    blob = {
        "format": MODEL_FORMAT,
        "state_dict": unwrap(net).state_dict(),
        "config": config_dict,
        "epoch": epoch,
        "metrics": metrics,
        "history": history,
        "domain_stats": domain_stats or {},
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def _load_blob(path: Path, missing: str, unreadable: str, weights_only: bool = False) -> Any:
    if not path.exists():
        raise InputError(path, missing)
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # torch raises many types for a damaged or foreign file
        raise InputError(path, f"{unreadable} ({error})") from None


def _check_version(path: Path, blob: dict) -> None:
    """Refuse a model file of a newer format than this microal reads."""
    match = re.fullmatch(rf"{FORMAT_NAME}/(\d+)", str(blob.get("format", "")))
    if match and int(match.group(1)) > FORMAT_VERSION:
        raise InputError(
            path,
            f"written by a newer microal (format {blob['format']}); this microal reads {MODEL_FORMAT} "
            "and older: upgrade microal to use it",
        )


def read_model_file(path: str | Path) -> dict:
    """The model file's contents, checked to be a microal model file this version can read."""
    path = Path(path)
    blob = _load_blob(path, "model file does not exist", "cannot load model file")
    if not isinstance(blob, dict):
        raise InputError(path, f"not a microal model file (expected format {MODEL_FORMAT})")
    _check_version(path, blob)
    if blob.get("format") != MODEL_FORMAT:
        raise InputError(path, f"not a microal model file (expected format {MODEL_FORMAT})")
    return blob


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a model file to start from (fine-tuning, a warm-started round). A bare
    ``{"state_dict": ...}`` file is accepted too."""
    path = Path(path)
    blob = _load_blob(path, "model file to start from does not exist", "cannot load the model to start from")
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict):
        raise InputError(path, "cannot load the model to start from (no state_dict in the file)")
    _check_version(path, blob)
    return blob["state_dict"]


def read_history(path: str | Path) -> list[dict]:
    """The per-epoch history a model file (or a pre-training encoder file) carries."""
    path = Path(path)
    blob = _load_blob(path, "file does not exist", "cannot load file")
    if not isinstance(blob, dict):
        raise InputError(path, "no training history in the file")
    _check_version(path, blob)
    return list(blob.get("history", []))


def read_metrics(path: str | Path) -> dict:
    """The metrics of the epoch a model file was saved at."""
    return dict(read_model_file(path).get("metrics", {}))


def add_domain_bn_statistics(path: str | Path, statistics: dict[str, dict[str, torch.Tensor]]) -> None:
    """Keep batch-norm statistics of each target domain in the model file (rewritten atomically)."""
    blob = read_model_file(path)
    blob[DOMAIN_BN_KEY] = statistics
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def save_encoder_file(
    path: str | Path,
    encoder: torch.nn.Module,
    encoder_name: str,
    method: str,
    labels: dict[str, int] | None,
    epoch: int,
    metrics: dict,
    history: list,
) -> None:
    """Write a pre-trained encoder (``{"encoder": state_dict, ...}``), with how it was trained."""
    blob = {
        "encoder": unwrap(encoder).state_dict(),
        "encoder_name": encoder_name,
        "method": method,
        "labels": labels,
        "epoch": epoch,
        "metrics": metrics,
        "history": history,
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def read_encoder_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Encoder weights for ``model.encoder_weights``: a pre-trained encoder file, the encoder of a
    whole model file, or a plain state dict of an encoder."""
    path = Path(path)
    blob = _load_blob(
        path,
        "encoder checkpoint file does not exist (model.encoder_weights)",
        "cannot load encoder checkpoint",
        weights_only=True,
    )
    if isinstance(blob, dict) and isinstance(blob.get("encoder"), dict):
        return blob["encoder"]  # microal pre-training output
    if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        _check_version(path, blob)
        state = blob["state_dict"]  # a whole microal model file: take its encoder
        return {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    if isinstance(blob, dict) and all(isinstance(v, torch.Tensor) for v in blob.values()):
        return blob
    raise InputError(path, "not an encoder checkpoint: expected a state dict or {'encoder': state_dict}")


@dataclass
class LoadedModel:
    net: torch.nn.Module
    config: ProjectConfig
    epoch: int
    metrics: dict
    path: Path
    domain_stats: dict[str, tuple[float, float]]
    # Batch-norm statistics re-estimated on target domains (domain_bn), by domain name.
    bn_stats: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    precision: str = "fp32"  # what it predicts in (models/compute.py)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (fp32) of a batch already on the network's device, in the model's precision."""
        with autocast(batch.device, self.precision):
            return self.net(batch).float()


def load_model(path: str | Path, device: str | torch.device = "cpu", precision: str | None = None) -> LoadedModel:
    """The network of a model file, ready to predict (eval mode, channels-last, on `device`), in
    `precision` (default: the precision setting it was trained with, resolved for `device`)."""
    from microal.models.domain_bn import check_statistics
    from microal.models.factory import build_model

    path = Path(path)
    blob = read_model_file(path)
    config = parse_config(blob["config"], source=f"{path} (embedded config)")
    # The weights come from the file; never fetch ImageNet weights just to overwrite them.
    net = build_model(config.model.model_copy(update={"encoder_weights": "none"}), config.num_classes)
    net.load_state_dict(blob["state_dict"])
    channels_last(net).to(device).eval()
    stats = {str(k): tuple(v) for k, v in blob.get("domain_stats", {}).items()}
    bn_stats = {str(k): v for k, v in blob.get(DOMAIN_BN_KEY, {}).items()}
    for domain, domain_bn in bn_stats.items():
        try:
            check_statistics(net, domain_bn)
        except ValueError as error:
            raise InputError(path, f"domain {domain!r}: {error}") from None
    precision = resolve_precision(precision or config.training.precision, device)
    return LoadedModel(
        net, config, int(blob.get("epoch", 0)), dict(blob.get("metrics", {})), path, stats, bn_stats, precision
    )
