"""Typed, validated project configuration loaded from YAML.

One YAML file describes a project: its class table and one section per step
(ingest, tiling, split, model, training). Every section has defaults, so a
minimal config is just the class table. Unknown keys and bad values are
rejected with the key's dotted name, e.g. ``training.lr: must be > 0``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from microal.errors import ConfigError

# smp encoders halve the resolution five times: inputs must be multiples of this.
ENCODER_STRIDE = 32


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassSpec(_Strict):
    name: str = Field(min_length=1)
    # Display colour for overlays and Label Studio; also the key of colour-coded masks
    # unless ingest.mask_colors says otherwise.
    color: tuple[int, int, int] | None = None

    @field_validator("color")
    @classmethod
    def _rgb_range(cls, value):
        if value is not None and not all(0 <= c <= 255 for c in value):
            raise ValueError("colour components must be within 0..255")
        return value


class MaskColor(_Strict):
    color: tuple[int, int, int]
    label: str  # a class name from the class table


class Crop(_Strict):
    """Pixels to cut off each edge when reading, e.g. an instrument info bar at the bottom."""

    top: int = Field(0, ge=0)
    bottom: int = Field(0, ge=0)
    left: int = Field(0, ge=0)
    right: int = Field(0, ge=0)


CROP_FIELDS = ("crop_top", "crop_bottom", "crop_left", "crop_right")  # per-image crop, from a manifest


class IngestConfig(_Strict):
    # Manifest column -> microal field. Fields: image, mask, label (the image's class, for
    # `microal classify`), um_per_px, magnification, detector, etching, sample, domain. Other
    # manifest columns are kept as free metadata.
    columns: dict[str, str] = Field(default_factory=dict)
    # Folder ingest: masks live in mask_dir (relative to the folder) named <stem><mask_suffix>.<ext>.
    mask_dir: str | None = None
    mask_suffix: str = ""
    recursive: bool = False
    mask_encoding: Literal["index", "color"] = "index"
    # Colour-coded masks: colour -> class; pixels of any other colour go to unmatched_color_class
    # (e.g. NASA masks paint phases over a grey copy of the image), or are an error when it is None.
    mask_colors: list[MaskColor] = Field(default_factory=list)
    unmatched_color_class: str | None = None
    # Cut before anything else is read (the colour check included). A manifest's crop_top,
    # crop_bottom, crop_left, crop_right columns give it per image instead.
    crop: Crop = Field(default_factory=Crop)
    # Masks are cropped like their image when they have the uncropped image's size (None: decide
    # per mask by its size); True/False force it.
    crop_masks: bool | None = None
    # Find an instrument's info band at the bottom of each image (rows unlike the micrograph:
    # colour, flat background, or far outside the image's row statistics) and cut it.
    detect_info_band: bool = False
    # Pixel size: from a manifest column, from magnification x calibration, or one value for all.
    um_per_px: float | None = Field(None, gt=0)
    calibration_um_per_px_at_1x: float | None = Field(None, gt=0)
    color_images: Literal["error", "luminance"] = "error"
    # Defaults for fields a manifest or folder does not give.
    detector: str | None = None
    etching: str | None = None
    domain: str = "default"

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, value: dict[str, str]):
        known = {
            "image",
            "mask",
            "label",
            "um_per_px",
            "magnification",
            "detector",
            "etching",
            "sample",
            "domain",
            *CROP_FIELDS,
        }
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; valid: {sorted(known)}")
        return value


class TilingConfig(_Strict):
    # Either a physical target scale (needs every image's pixel size) or a plain factor.
    target_um_per_px: float | None = Field(None, gt=0)
    scale: float = Field(1.0, gt=0, le=4)
    # tile_size is the centre on which the loss is taken; margin is context on each side.
    tile_size: int = Field(448, ge=16)
    margin: int = Field(32, ge=0)
    image_interpolation: Literal["area", "bilinear"] = "area"

    @property
    def window(self) -> int:
        return self.tile_size + 2 * self.margin

    @model_validator(mode="after")
    def _window_divisible(self):
        if self.window % ENCODER_STRIDE:
            raise ValueError(
                f"tile_size + 2*margin = {self.window} must be a multiple of {ENCODER_STRIDE} "
                "(the encoders downsample five times)"
            )
        return self


class HoldoutConfig(_Strict):
    """Images kept out of training and validation; their samples are excluded from training too."""

    column: str = "image_name"
    values: list[str] = Field(default_factory=list)


class SplitConfig(_Strict):
    method: Literal["group_kfold", "column"] = "group_kfold"
    n_folds: int = Field(5, ge=2)
    fold: int = Field(0, ge=0)
    group_by: str = "sample"
    seed: int = 0
    # method=column: which catalog column and which of its values go where.
    column: str = "split"
    train_values: list[str] = Field(default_factory=lambda: ["train"])
    val_values: list[str] = Field(default_factory=lambda: ["val"])
    test_values: list[str] = Field(default_factory=lambda: ["test"])
    test: HoldoutConfig | None = None

    @model_validator(mode="after")
    def _fold_in_range(self):
        if self.fold >= self.n_folds:
            raise ValueError(f"fold {self.fold} is out of range for n_folds={self.n_folds}")
        return self


class ModelConfig(_Strict):
    arch: str = "unet"
    encoder: str = "resnet18"
    # "none", a pretrained source ("imagenet", "micronet": NASA's encoders pretrained on micrographs,
    # "image-micronet": ImageNet then MicroNet), downloaded once into the weights cache (see
    # microal.models.weights), or a path to a local encoder checkpoint.
    encoder_weights: str = "none"
    options: dict[str, Any] = Field(default_factory=dict)  # passed to smp.create_model
    # Test-time augmentation of full-size predictions: the mean probabilities of the window's
    # flips ("flips", 4 views) or of its flips and 90° rotations ("dihedral", 8 views), each mapped
    # back. Worth it where training augmented with the same symmetries; costs that many times the
    # prediction time. Not used for active-learning scores, which rank tiles, not finished masks.
    tta: Literal["none", "flips", "dihedral"] = "none"


DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|min|m|h)\s*$")
DURATION_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """Seconds in "90s", "20min", "1.5h"."""
    match = DURATION.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 90s, 20min or 1.5h")
    return float(match.group(1)) * DURATION_SECONDS[match.group(2)]


class _EpochsOrTime(_Strict):
    """`epochs`, or a `budget` of time for them: "20min" (counted from the job's start, Ray's
    start-up included) runs as many of `epochs` as fit, measured as it goes, and the cosine
    schedule ends with the last of them; "40 epochs" (or 40) is the same as epochs: 40."""

    epochs: int = Field(20, ge=1)
    budget: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _budget_in_epochs(cls, data):
        if isinstance(data, dict) and data.get("budget") is not None:
            match = re.fullmatch(r"(\d+)(\s*epochs?)?", str(data["budget"]).strip())
            if match:
                data = {**data, "epochs": int(match.group(1)), "budget": None}
        return data

    @field_validator("budget")
    @classmethod
    def _budget_is_a_duration(cls, value):
        if value is not None:
            parse_duration(value)
        return value

    @property
    def budget_seconds(self) -> float | None:
        return parse_duration(self.budget) if self.budget is not None else None


class TrainingConfig(_EpochsOrTime):
    # epochs, budget: a time for the whole fit ("20min"); a timing probe on the worker decides
    # how many epochs fit at first, and the measured epochs correct it.
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)  # decoder and head
    encoder_lr_factor: float = Field(0.1, gt=0, le=10)  # encoder lr = lr x factor (seed: 0.1)
    weight_decay: float = Field(1e-4, ge=0)
    # Linear warm-up over this fraction of the epochs, then cosine decay to zero (0: cosine only).
    warmup: float = Field(0.0, ge=0, lt=1)
    dice_weight: float = Field(1.0, ge=0)  # loss = cross-entropy + dice_weight x Dice
    # Cross-entropy class weights: none, balanced (1/sqrt of each class's pixel share in the
    # training images, so rare phases count), or one number per class.
    class_weights: Literal["none", "balanced"] | list[float] = "none"
    augmentation: str = "basic"  # basic, extended, none, or a path to an albumentations YAML
    # grid: every tile once per epoch; random: samples_per_epoch windows at random positions.
    sampling: Literal["grid", "random"] = "grid"
    samples_per_epoch: int = Field(256, ge=1)
    # With random sampling: this fraction of the windows is centred on a pixel of a class other
    # than the most common one (drawn in turn among them), so rare phases are seen more often
    # (nnU-Net's foreground oversampling); the rest fall anywhere.
    class_windows: float = Field(0.0, ge=0, le=1)
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    # auto: bf16 where the device computes it natively (a CUDA GPU, a CPU with AMX or AVX512-BF16), else fp32.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # DataLoader processes per training worker; default: a quarter of the worker's CPUs, at most 8
    # (none on a 2-CPU worker, where cutting and augmenting windows costs little beside the network).
    loader_workers: int | None = Field(None, ge=0)
    # Validate every n-th epoch, checkpoint every n-th epoch; the last epoch always does both, and an
    # epoch whose validation beats every earlier one is always checkpointed (the best model is kept).
    validate_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(1, ge=1)
    # Validate on this many validation tiles, a fixed seeded subset (default: all of them); full-image
    # evaluation of the chosen model is `microal evaluate`'s job.
    val_windows: int | None = Field(None, ge=1)
    cpus_per_worker: int | None = Field(None, ge=1)  # default: share the machine's CPUs
    seed: int = 0
    max_failures: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _class_windows_need_random_sampling(self):
        if self.class_windows and self.sampling != "random":
            raise ValueError("training.class_windows needs training.sampling: random (grid visits every tile once)")
        return self


class PreprocessConfig(_Strict):
    """Intensity preparation applied before tiling and prediction alike."""

    # Bright-field light-optical images are dark where SEM images are bright: inverting
    # them makes the two look alike to the network (as Goetz et al. 2022 do).
    invert_domains: list[str] = Field(default_factory=list)
    # Inputs are standardised by mean/std of each image, of each domain, or not at all.
    normalize: Literal["image", "domain"] = "image"


class UdaConfig(_Strict):
    """Unsupervised domain adaptation (AdaptSegNet multi-level, or its ADVENT entropy variant)."""

    method: Literal["adaptsegnet", "advent", "source_only"] = "adaptsegnet"
    source_domains: list[str] = Field(default_factory=list)  # default: every domain with masks
    target_domains: list[str] = Field(default_factory=list)
    # Images of the target domain whose masks may be used to choose the model (a small
    # labelled target set); their labels never enter the training loss.
    target_val: HoldoutConfig | None = None
    weight_seg_aux: float = Field(0.1, ge=0)
    weight_adv: float = Field(0.001, ge=0)
    weight_adv_aux: float = Field(0.0002, ge=0)
    weight_entropy: float = Field(0.001, ge=0)  # ADVENT's direct entropy minimisation
    lr_discriminator: float = Field(1e-4, gt=0)
    poly_power: float = Field(0.9, ge=0)
    discriminator_channels: int = Field(64, ge=4)
    aux_level: int = Field(-2, le=-1)  # encoder feature level feeding the auxiliary output
    target_batch_size: int | None = Field(None, ge=1)  # default: training.batch_size
    select_by: Literal["val_miou", "target_miou", "target_entropy"] = "val_miou"
    # After training, an adapted model (not source_only) re-estimates its batch-norm statistics
    # on each target domain's unlabelled windows (AdaBN) and predicts that domain's images with
    # them; source images keep the training statistics.
    target_bn_statistics: bool = True
    bn_windows: int = Field(256, ge=16)  # target windows per domain for those statistics


class PretrainConfig(_Strict):
    """Encoder pre-training: image-level classification with an auxiliary head, or SimCLR."""

    method: Literal["classification", "simclr"] = "simclr"
    label_column: str = "domain"  # classification: the catalog column holding the image class
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    samples_per_epoch: int = Field(512, ge=2)
    temperature: float = Field(0.2, gt=0)  # SimCLR's NT-Xent temperature
    projection_dim: int = Field(64, ge=2)
    dropout: float = Field(0.5, ge=0, lt=1)  # classification head, as in Goetz et al. 2022
    augmentation: str = "extended"
    use_unlabelled: bool = True  # images without masks take part (they are the point of SSL)


class SitesConfig(_Strict):
    """Candidate sites in a large stitched panorama (microal classify sites): pixels darker (or
    brighter) than a threshold, joined into connected components, kept within an area range;
    each is cut at one physical size around its centre and classified."""

    polarity: Literal["dark", "bright"] = "dark"  # damage sites (voids, cracks) are dark in SE images
    # Intensity threshold in 0..1 of the panorama's dtype range, or "otsu" (found on a thumbnail).
    threshold: float | Literal["otsu"] = "otsu"
    min_area_um2: float = Field(0.5, ge=0)
    max_area_um2: float | None = Field(200.0, gt=0)
    crop_um: float = Field(10.0, gt=0)  # side of the crop classified around each site
    block_px: int = Field(2048, ge=64)  # rows read at a time (the panorama is never read whole)

    @model_validator(mode="after")
    def _area_range(self):
        if self.max_area_um2 is not None and self.max_area_um2 < self.min_area_um2:
            raise ValueError("max_area_um2 must be at least min_area_um2")
        if isinstance(self.threshold, float) and not 0 < self.threshold < 1:
            raise ValueError("threshold must lie within 0..1 (or be 'otsu')")
        return self


class ClassifyConfig(_EpochsOrTime):
    """Whole micrographs by class (microal classify): the class table is the config's `classes`,
    each image's class the catalog's `label`. Random crops of varying physical size, resampled to
    crop_size, each with its pixel density given to the network; a metric embedding trained with
    a triplet loss; a Gaussian mixture per class on it, whose log-likelihood below a threshold
    answers "none of these"."""

    crop_size: int = Field(200, ge=32)  # pixels of a crop as the network sees it
    # Physical side of a crop in µm, drawn log-uniformly per crop (default: from min_crop_fraction
    # of each image's short side to all of it). Each image clips the range to what it holds.
    crop_um: tuple[float, float] | None = None
    min_crop_fraction: float = Field(0.25, gt=0, le=1)
    # A crop is never upsampled more than this (a crop of crop_size / max_upsampling pixels at least).
    max_upsampling: float = Field(4.0, ge=1)
    augmentation: str = "strong"  # strong, extended, basic, none, or an albumentations YAML file
    embedding_dim: int = Field(2, ge=2)  # the descriptor (2-D as Larmuseau et al. 2021: it can be plotted)
    hidden: int = Field(64, ge=4)  # width of the head between pooled features and descriptor
    margin: float = Field(0.5, gt=0)  # triplet loss margin (distances in the descriptor space)
    # loss = triplet + class_loss_weight x cross-entropy of a linear softmax on the descriptor
    # (0: the triplet loss alone, as the paper).
    class_loss_weight: float = Field(1.0, ge=0)
    # epochs, budget: a time for the embedding's training ("6min"), re-measured every epoch.
    crops_per_epoch: int = Field(1024, ge=8)
    batch_size: int = Field(32, ge=4)  # class-balanced: each batch draws every class in turn
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    val_crops: int = Field(4, ge=1)  # per validation (and reference training) image, every epoch
    # Nearest-centroid validation takes its class centroids from at most this many training images
    # per class (a seeded draw, the same every epoch): a large class adds time, not accuracy, to
    # a centroid, and embedding every training image each epoch took ~40% of an epoch.
    reference_images_per_class: int = Field(32, ge=1)
    gmm_components: int = Field(2, ge=1)  # per class, at most the class's crops allow
    gmm_crops: int = Field(32, ge=1)  # crops per training image the mixtures are fitted on
    # "none of these" below the log-likelihood that this share of validation crops (of known
    # classes) fall under: 0.05 accepts 95% of them.
    none_quantile: float = Field(0.05, ge=0, lt=1)
    predict_crops: int = Field(1000, ge=1)  # crops per image at prediction (Larmuseau et al. use 1000)
    predict_batch_size: int = Field(64, ge=1)
    # Classes of the table kept out of training: their images count as "none of these" when
    # evaluated (an open-set experiment).
    leave_out: list[str] = Field(default_factory=list)
    # Image-level active learning (`microal classify al`): which unlabelled micrographs go to the
    # experts first: the highest entropy of the averaged distribution (undecided between classes),
    # the highest novelty (share of "none" crops: unlike anything trained), or at random.
    acquisition: Literal["entropy", "novelty", "random"] = "entropy"
    sites: SitesConfig = Field(default_factory=SitesConfig)

    @field_validator("crop_um")
    @classmethod
    def _ordered_range(cls, value):
        if value is not None and not 0 < value[0] <= value[1]:
            raise ValueError(f"needs 0 < min <= max, got {list(value)}")
        return value


class ActiveLearningConfig(_Strict):
    """How the next tiles for experts are chosen (microal al ...)."""

    acquisition: str = "bald"  # entropy, bald, variance, margin, random, typiclust
    reduction: Literal["mean", "max", "topk_mean"] = "mean"  # pixel map -> tile score
    # Weigh each pixel's uncertainty by the balanced weight (1/sqrt of its share among the labels
    # so far) of the class the ensemble expects there: doubt about a rare phase counts more.
    class_balanced: bool = False
    top_fraction: float = Field(0.1, gt=0, le=1)  # for topk_mean
    batch_size: int = Field(8, ge=1)  # tiles per round
    # Instead of batch_size tiles: as many as fit this much expert time, each tile's time
    # estimated from its pre-annotation's boundary length and what labelled tiles cost (active/costs.py).
    budget_minutes: float | None = Field(None, gt=0)
    # Select at random while fewer than this many tiles are labelled, by al.acquisition from then
    # on: a model of a handful of tiles is unsure wherever it has seen nothing alike, and a batch
    # of such tiles teaches the next model outliers (active learning's cold start; Hacohen et
    # al., ICML 2022). Counts images in an image project (its acquisition: classify.acquisition).
    # Default: uncertainty from the first round.
    random_until: int | None = Field(None, ge=1)
    members: int = Field(3, ge=1)  # ensemble members (k-fold bagging)
    # k of the k-fold split (default: members). More folds than members: each member leaves out a
    # smaller fold and so trains on more of the labelled tiles ((k-1)/k of them); the first
    # `members` folds are trained. Two members of two folds see half the labels each.
    # 1: no folds, a deep ensemble (Lakshminarayanan et al. 2017): every member trains on all the
    # labelled tiles and members differ by seed only, so none loses labels when they are few.
    folds: int | None = Field(None, ge=1)
    # Each round's members start from the previous round's (fine-tuning on the grown labelled
    # set) instead of from scratch: training accumulates over rounds, so a round can stay short.
    warm_start: bool = False
    per_image_cap: int | None = Field(None, ge=1)  # at most this many tiles of one micrograph per round
    diversity: Literal["kcenter", "none"] = "kcenter"
    candidates_factor: int = Field(5, ge=1)  # k-center picks among the top batch_size x factor
    stratify_by_domain: bool = False
    score_batch_size: int = Field(64, ge=1)
    scoring_actors: int | None = Field(None, ge=1)  # default: one per CPU (or GPU)

    @field_validator("acquisition")
    @classmethod
    def _known_acquisition(cls, value):
        from microal.active.acquisition import ACQUISITIONS, EMBEDDING_ACQUISITIONS

        valid = set(ACQUISITIONS) | EMBEDDING_ACQUISITIONS
        if value not in valid:
            raise ValueError(f"unknown acquisition {value!r}; valid: {sorted(valid)}")
        return value

    @model_validator(mode="after")
    def _enough_folds(self):
        if self.folds is not None and 1 < self.folds < self.members:
            raise ValueError(
                f"al.folds ({self.folds}) must be at least al.members ({self.members}): one fold left out per member"
            )
        return self


class LabelStudioConfig(_Strict):
    """Where experts label (microal al push / pull / run). The API token is never part of a
    config: it comes from LABEL_STUDIO_TOKEN or --token-file."""

    url: str = "http://127.0.0.1:8080"
    project_title: str | None = None  # default: "microal <al project name>"
    # The server's LOCAL_FILES_DOCUMENT_ROOT; tiles for experts are written below it
    # (default: the work folder, which `microal labelstudio serve` uses as its root).
    files_root: str | None = None
    annotators_per_tile: int = Field(1, ge=1)
    min_new_annotations: int = Field(8, ge=1)  # retrain when this many tiles got new labels
    poll_seconds: float = Field(30.0, gt=0)
    webhook_port: int | None = Field(None, ge=1, le=65535)  # listen on 127.0.0.1:port; else poll


# Settings the training plan (microal.planning) can choose: write `auto` as their value, or list
# them under the top-level `auto:` key (`auto: all`: every one the config does not set).
PLANNABLE = (
    "tiling.target_um_per_px",
    "tiling.tile_size",
    "tiling.margin",
    "model.encoder_weights",
    "model.options",
    "model.tta",
    "training.epochs",
    "training.batch_size",
    "training.lr",
    "training.encoder_lr_factor",
    "training.warmup",
    "training.class_weights",
    "training.augmentation",
    "training.sampling",
    "training.samples_per_epoch",
    "training.val_windows",
)


def _collect_auto(data: dict[str, Any]) -> dict[str, Any]:
    """Move plannable settings written as `auto` into the top-level `auto` list (and expand `auto: all`)."""
    data = copy.deepcopy(data)
    requested = data.get("auto") or []
    if requested == "all":
        requested = [key for key in PLANNABLE if _lookup(data, key) is None]
    elif isinstance(requested, str):
        requested = [requested]
    planned = list(requested) if isinstance(requested, list) else requested
    for key in PLANNABLE:
        section, leaf = key.split(".")
        node = data.get(section)
        if isinstance(node, dict) and isinstance(node.get(leaf), str) and node[leaf] == "auto":
            del node[leaf]
            if isinstance(planned, list) and key not in planned:
                planned.append(key)
    data["auto"] = planned
    return data


def _lookup(data: dict[str, Any], dotted: str):
    section, leaf = dotted.split(".")
    node = data.get(section)
    return node.get(leaf) if isinstance(node, dict) else None


class ProjectConfig(_Strict):
    classes: list[ClassSpec] = Field(min_length=2)
    # The settings the training plan decides (see PLANNABLE); empty once a plan has been applied.
    auto: list[str] = Field(default_factory=list)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    uda: UdaConfig = Field(default_factory=UdaConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    al: ActiveLearningConfig = Field(default_factory=ActiveLearningConfig)
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)
    labelstudio: LabelStudioConfig = Field(default_factory=LabelStudioConfig)

    @field_validator("classes", mode="before")
    @classmethod
    def _names_to_specs(cls, value):
        # Allow the short form `classes: [ferrite, cementite]`.
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("auto")
    @classmethod
    def _plannable(cls, value):
        unknown = [key for key in value if key not in PLANNABLE]
        if unknown:
            raise ValueError(f"{unknown} cannot be planned; plannable settings: {list(PLANNABLE)}")
        return value

    @model_validator(mode="after")
    def _class_references(self):
        names = self.class_names
        if len(set(names)) != len(names):
            raise ValueError(f"classes: duplicate class names in {names}")
        weights = self.training.class_weights
        if isinstance(weights, list) and len(weights) != len(names):
            raise ValueError(f"training.class_weights: {len(weights)} weights for {len(names)} classes")
        left_out = [name for name in self.classify.leave_out if name not in names]
        if left_out:
            raise ValueError(f"classify.leave_out: {left_out} not in the class table {names}")
        if len(set(names) - set(self.classify.leave_out)) < 2:
            raise ValueError("classify.leave_out: at least two classes must be left to train on")
        for ref in [c.label for c in self.ingest.mask_colors] + [self.ingest.unmatched_color_class]:
            if ref is not None and ref not in names:
                raise ValueError(f"ingest: class {ref!r} is not in the class table {names}")
        return self

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def format_validation_error(source: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{source}: {key}: {message}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "config") -> ProjectConfig:
    """Validate a config dictionary; errors name the source and the dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return ProjectConfig.model_validate(_collect_auto(data))
    except ValidationError as error:
        raise ConfigError(format_validation_error(source, error)) from None


def apply_overrides(config: ProjectConfig | dict, params: dict[str, Any], source: str = "overrides") -> ProjectConfig:
    """The project config with each dotted key (`training.lr`) set to a value, validated again:
    a search's sampled point, a benchmark's settings."""
    data = copy.deepcopy(config if isinstance(config, dict) else config.model_dump(mode="json"))
    for key, value in params.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {key}: {part} is not a section")
        node[leaf] = value.item() if hasattr(value, "item") else value
        if isinstance(data.get("auto"), list) and value != "auto" and key in data["auto"]:
            data["auto"] = [k for k in data["auto"] if k != key]  # a value given now is no longer planned
    return parse_config(data, source=source)


def load_config(path: str | Path) -> ProjectConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    return parse_config(data or {}, source=str(path))


def config_to_dict(config: BaseModel) -> dict[str, Any]:
    """A plain dict (JSON/YAML-safe) that parse_config accepts back unchanged."""
    return config.model_dump(mode="json")


def save_config(config: ProjectConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
