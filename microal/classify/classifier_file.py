"""The classifier file: the one owner of a saved image classifier.

Self-contained like the segmentation model file: the embedding network's weights, the project
config it was trained with, the trained classes, epoch, metrics and history, and, once training
has finished, the open set (the mixtures and threshold, see openset.py). Training writes it at
every checkpoint (exported as best_classifier.pt / last_classifier.pt); prediction reads it here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from microal.classify.openset import OpenSet
from microal.config import ProjectConfig, parse_config
from microal.errors import InputError
from microal.files import atomic_path
from microal.models.compute import autocast, channels_last, resolve_precision
from microal.models.embedding import EmbeddingNet, build_embedding_net
from microal.models.model_file import unwrap

CLASSIFIER_FILE = "classifier.pt"
FORMAT_NAME = "microal-classifier"
FORMAT_VERSION = 1
CLASSIFIER_FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"


def save_classifier_file(
    path: str | Path,
    net: torch.nn.Module,
    config: ProjectConfig,
    classes: list[str],
    epoch: int,
    metrics: dict,
    history: list,
    open_set: OpenSet | None = None,
) -> None:
    blob = {
        "format": CLASSIFIER_FORMAT,
        "state_dict": unwrap(net).state_dict(),
        "config": config.model_dump(mode="json"),
        "classes": list(classes),
        "epoch": epoch,
        "metrics": metrics,
        "history": history,
        "open_set": open_set,
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def read_classifier_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "classifier file does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)  # our own file: it holds the mixtures
    except Exception as error:  # torch raises many types for a damaged or foreign file
        raise InputError(path, f"cannot load classifier file ({error})") from None
    version = re.fullmatch(rf"{FORMAT_NAME}/(\d+)", str(blob.get("format", ""))) if isinstance(blob, dict) else None
    if version is None:
        raise InputError(path, f"not a microal classifier file (expected format {CLASSIFIER_FORMAT})")
    if int(version.group(1)) > FORMAT_VERSION:
        raise InputError(path, f"written by a newer microal ({blob['format']}); upgrade microal to use it")
    return blob


def add_open_set(path: str | Path, open_set: OpenSet) -> None:
    """Keep the fitted open set in the classifier file (rewritten atomically)."""
    blob = read_classifier_file(path)
    blob["open_set"] = open_set
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


@dataclass
class Classifier:
    net: EmbeddingNet
    config: ProjectConfig
    classes: list[str]
    open_set: OpenSet | None
    metrics: dict
    path: Path
    precision: str = "fp32"

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def describe(self, crops: torch.Tensor, log_density: torch.Tensor) -> torch.Tensor:
        """Descriptors (fp32, on the CPU) of a batch of crops."""
        crops, log_density = crops.to(self.device), log_density.to(self.device)
        with autocast(self.device, self.precision):
            return self.net(crops, log_density).float().cpu()


def load_classifier(path: str | Path, device: str | torch.device = "cpu", precision: str | None = None) -> Classifier:
    path = Path(path)
    blob = read_classifier_file(path)
    config = parse_config(blob["config"], source=f"{path} (embedded config)")
    classes = list(blob["classes"])
    net = build_embedding_net(
        config.model.model_copy(update={"encoder_weights": "none"}), config.classify, len(classes)
    )
    net.load_state_dict(blob["state_dict"])
    channels_last(net).to(device).eval()
    precision = resolve_precision(precision or config.training.precision, torch.device(device))
    return Classifier(net, config, classes, blob.get("open_set"), dict(blob["metrics"]), path, precision)
