"""What a training job hands its workers: the validated project config and a typed payload per
job kind. Plain dataclasses and a pydantic config, so Ray can pickle them as they are."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from microal.config import ProjectConfig


@dataclass(frozen=True)
class LabelledTiles:
    """Training on named tiles rather than whole images (active learning): their labels come
    from a label store (folder), or from the tile set's own masks when there is none."""

    train_tiles: list[str]
    val_tiles: list[str] = field(default_factory=list)
    label_store: str | None = None


@dataclass(frozen=True)
class SupervisedData:
    """Labelled images to train and validate on (or, with `tiles`, tiles of them)."""

    train_images: list[str]
    val_images: list[str]
    tiles: LabelledTiles | None = None


@dataclass(frozen=True)
class AdaptationData(SupervisedData):
    """Labelled source images as in SupervisedData, plus the unlabelled target images and the
    optional small labelled target set (uda.target_val)."""

    target_images: list[str] = field(default_factory=list)
    target_val_images: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PretrainData:
    """Images whose windows pre-train the encoder; `labels` (image id -> class index) for the
    classification head, None for self-supervised pre-training."""

    train_images: list[str]
    val_images: list[str]
    labels: dict[str, int] | None = None


Payload = SupervisedData | AdaptationData | PretrainData


@dataclass
class TrainJob:
    """Everything a worker needs."""

    config: ProjectConfig
    tiles_root: str
    data: Payload
    init_model: str | None = None  # a microal model file to start from (fine-tuning, warm start)
    progress: tuple[str, ...] = ()  # metrics the epoch line shows besides the losses (the job kind's)
    # The metric (and mode) that picks the best epoch: an epoch that improves it is checkpointed.
    selection: tuple[str, str] = ("val_miou", "max")
    # time.time() when the job was built: a time budget (training.budget) counts from here.
    started_at: float = field(default_factory=time.time)
