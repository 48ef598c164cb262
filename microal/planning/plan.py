"""The training plan: each setting the config leaves to `auto`, derived from the data's
fingerprint by a fixed rule, with the reason printed beside it (nnU-Net's idea, for 2-D
micrographs on anything from a laptop CPU to a GPU).

The rules, in the order they depend on each other:

- **scale**: resample to the median pixel size when the images' pixel sizes differ by more
  than 25 %; otherwise (or when a pixel size is unknown) tiles are cut at each image's own grid.
- **window** (tile + 2 x margin, a multiple of 32): at least 256 px (what a ResNet U-Net needs
  around a pixel), at least four widths of the widest typical structure (the area-weighted
  median width of the non-matrix classes' regions) across, at most 512 px, and never larger than
  the smaller image side.
- **margin**: context on each side of a tile, half the widest typical structure, at least 16 px
  and at most an eighth of the window (the margin is computed but not trained on).
- **decoder**: on a CPU (training.use_gpu false) a U-Net's two full-resolution decoder stages get
  16 and 8 channels instead of 32 and 16: they cost most of the time there.
- **batch**: about 8 windows of 256 px worth of pixels per step, at least 4 windows (batch-norm
  statistics from fewer are noisy), at most 16.
- **windows per epoch**: as many tile centres as the training images hold (each training pixel
  about once per epoch), at least 4 batches; windows at random positions.
- **validation**: a seeded subset of half an epoch's windows, so checking costs a small share of
  the budget (the chosen model is evaluated in full afterwards).
- **class weights**: balanced (1/sqrt of the pixel share) when a class has under 5 % of the
  training pixels; the loss is always cross-entropy + Dice, which keeps rare phases in the loss.
- **augmentation**: the extended pipeline (warping, blur, contrast, noise) below 200 training
  images, the basic symmetries above.
- **test-time augmentation**: full-size predictions average the views the augmentation taught
  the model to treat alike (the 8 flips and rotations of the built-in pipelines), as nnU-Net
  mirrors at inference; a prediction costs that many network passes, a small share next to training.
- **encoder weights**: the best pretrained weights already in the cache (MicroNet, then
  ImageNet then MicroNet, then ImageNet), else none; a pretrained encoder learns at a tenth of
  the decoder's rate.
- **schedule**: AdamW, a 5 % linear warm-up and cosine decay, ending with the budget.
- **epochs**: with a time budget, as many as fit (a timing probe on the worker decides).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from microal.config import ENCODER_STRIDE, ProjectConfig, apply_overrides, config_to_dict
from microal.data.augment import trained_symmetries
from microal.errors import ConfigError
from microal.files import write_text_atomic
from microal.planning.fingerprint import Fingerprint

PIXEL_SIZE_SPREAD = 1.25
MIN_WINDOW, MAX_WINDOW = 256, 512
MIN_BATCH, MAX_BATCH = 4, 16
OBJECTS_PER_WINDOW = 4
STEP_PIXELS = 8 * 256 * 256
RARE_SHARE = 0.05
MANY_IMAGES = 200
WARMUP = 0.05
SLIM_DECODER = (256, 128, 64, 16, 8)
EPOCH_CAP = 10_000  # with a time budget the probe decides; this only bounds it
PLAN_FILE = "plan.yaml"


@dataclass
class Choice:
    key: str
    value: object
    reason: str
    planned: bool  # False: the config sets it and the plan keeps it


@dataclass
class Plan:
    choices: list[Choice] = field(default_factory=list)
    fingerprint: Fingerprint | None = None

    def overrides(self) -> dict[str, object]:
        return {c.key: c.value for c in self.choices if c.planned}

    def value(self, key: str):
        return next(c.value for c in self.choices if c.key == key)

    def table(self) -> str:
        width = max(len(c.key) for c in self.choices)
        lines = []
        for c in self.choices:
            mark = "" if c.planned else "(set in the config) "
            lines.append(f"  {c.key:<{width}}  {_show(c.value):<12} {mark}{c.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "choices": [
                {"key": c.key, "value": c.value, "planned": c.planned, "reason": c.reason} for c in self.choices
            ],
            "fingerprint": self.fingerprint.to_dict() if self.fingerprint else None,
        }


def _show(value) -> str:
    return "none" if value is None else str(value)


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def _cached_pretrained(encoder: str) -> str | None:
    from microal.models import weights

    for source in ("micronet", "image-micronet", "imagenet"):
        try:
            if weights.cached_file(encoder, source) is not None:
                return source
        except ConfigError:  # no such source for this encoder
            continue
    return None


def make_plan(config: ProjectConfig, print_: Fingerprint) -> Plan:
    """The plan for the settings in config.auto; the others are listed as the config sets them."""
    auto = set(config.auto)
    plan = Plan(fingerprint=print_)
    current = config_to_dict(config)

    def decide(key: str, value, reason: str) -> object:
        if key in auto:
            plan.choices.append(Choice(key, value, reason, True))
            return value
        section, leaf = key.split(".")
        kept = current[section][leaf]
        plan.choices.append(Choice(key, kept, f"the plan would choose {_show(value)}: {reason}", False))
        return kept

    # Scale.
    sizes = [s for s in print_.um_per_px if s is not None]
    unknown = len(print_.um_per_px) - len(sizes)
    if unknown or not sizes:
        target, why = None, f"pixel size unknown for {unknown} of {len(print_.um_per_px)} images: each image's own grid"
    elif max(sizes) / min(sizes) <= PIXEL_SIZE_SPREAD:
        target, why = None, f"pixel sizes agree ({min(sizes):.3g}-{max(sizes):.3g} µm/px): each image's own grid"
    else:
        target = float(np.median(sizes))
        why = f"pixel sizes differ ({min(sizes):.3g}-{max(sizes):.3g} µm/px): resample to their median"
    target = decide("tiling.target_um_per_px", target, why)
    if target is not None and sizes:
        factor = float(np.median(sizes)) / target
    else:
        factor = config.tiling.scale

    # Object sizes and image sizes at the tiling scale.
    objects = [c for c in print_.classes if c.width_px is not None]
    largest = max(objects, key=lambda c: c.width_px, default=None)
    object_px = largest.width_px * factor if largest else 0.0
    side = min(min(print_.heights), min(print_.widths)) * factor if print_.heights else MAX_WINDOW
    about = f"{largest.name}: {object_px:.0f} px" if largest else "no structure class"

    fits = max(2 * ENCODER_STRIDE, int(side // ENCODER_STRIDE) * ENCODER_STRIDE)
    window = _round_up(max(MIN_WINDOW, OBJECTS_PER_WINDOW * object_px), ENCODER_STRIDE)
    window = min(window, MAX_WINDOW, fits)
    # The margin is computed but never trained on: at most an eighth of the window on each side.
    most = max(16, min(64, window // 8 // 16 * 16))
    margin = int(min(most, max(16, _round_up(object_px / 2, 16))))
    margin = decide("tiling.margin", margin, f"half the widest typical structure ({about}), 16-{most} px")
    window = max(window, 2 * margin + ENCODER_STRIDE)
    tile = decide(
        "tiling.tile_size",
        window - 2 * margin,
        f"window {window} px: >= {MIN_WINDOW}, >= {OBJECTS_PER_WINDOW} structure widths, <= {MAX_WINDOW} "
        f"and <= the smallest image side ({side:.0f} px)",
    )
    window = tile + 2 * margin

    batch = int(min(MAX_BATCH, max(MIN_BATCH, round(STEP_PIXELS / window**2))))
    batch = decide(
        "training.batch_size", batch, f"about {STEP_PIXELS // 65536} windows of 256 px per step, >= {MIN_BATCH}"
    )

    train_pixels = print_.train_pixels * factor**2
    per_epoch = _round_up(max(4 * batch, train_pixels / tile**2), batch)
    decide("training.sampling", "random", "windows at random positions: new crops every epoch")
    per_epoch = decide(
        "training.samples_per_epoch",
        per_epoch,
        f"the training images hold about {train_pixels / tile**2:.0f} tile centres: each pixel about once per epoch",
    )
    val_windows = max(16, per_epoch // 2)
    decide("training.val_windows", val_windows, "a seeded subset of half an epoch's windows: validation stays cheap")

    rare = min(print_.classes, key=lambda c: c.pixel_share)
    if rare.pixel_share < RARE_SHARE:
        weights, why = "balanced", f"{rare.name} is {100 * rare.pixel_share:.1f}% of the training pixels"
    else:
        weights, why = "none", f"every class has >= {100 * RARE_SHARE:.0f}% of the training pixels"
    decide("training.class_weights", weights, why + " (loss: cross-entropy + Dice)")

    if print_.train_images < MANY_IMAGES:
        aug, why = "extended", f"{print_.train_images} training images: warping, blur, contrast, noise"
    else:
        aug, why = "basic", f"{print_.train_images} training images: the symmetries suffice"
    aug = decide("training.augmentation", aug, why)

    views = trained_symmetries(aug)
    why = {
        "dihedral": "training sees every flip and 90° rotation: full-size predictions average those 8 views",
        "flips": "training sees both mirror images: full-size predictions average the 4 flipped views",
        "none": "training augments with no flips: one view",
    }[views]
    decide("model.tta", views, why + " (not for active-learning scores)")

    if config.model.arch.lower() == "unet" and not config.training.use_gpu:
        options, why = {"decoder_channels": list(SLIM_DECODER)}, "on a CPU the full-resolution decoder stages cost most"
    else:
        options, why = {}, "the architecture's own decoder"
    decide("model.options", options, why)

    cached = _cached_pretrained(config.model.encoder)
    why = f"{cached} weights of {config.model.encoder} are in the cache" if cached else "no pretrained weights cached"
    encoder_weights = decide("model.encoder_weights", cached or "none", why + " (microal weights list)")
    pretrained = encoder_weights != "none"
    decide("training.lr", 1e-3 if pretrained else 2e-3, "AdamW, decoder rate")
    decide(
        "training.encoder_lr_factor",
        0.1 if pretrained else 1.0,
        "a pretrained encoder is disturbed less" if pretrained else "a random encoder learns at the decoder's rate",
    )
    decide("training.warmup", WARMUP, "linear warm-up over 5% of the epochs, then cosine decay")

    budget = config.training.budget
    if "training.epochs" in auto and budget is None:
        raise ConfigError("training.epochs: auto needs training.budget, a time such as 20min")
    decide(
        "training.epochs",
        EPOCH_CAP if budget else config.training.epochs,
        f"as many as fit in {budget} (a timing probe on the worker decides)" if budget else "no time budget",
    )
    return plan


def apply_plan(config: ProjectConfig, plan: Plan) -> ProjectConfig:
    return apply_overrides(config, {**plan.overrides(), "auto": []}, source="training plan")


def write_plan(plan: Plan, config: ProjectConfig, folder: Path) -> Path:
    """plan.yaml: each choice with its reason, the fingerprint, and the config it gives."""
    path = Path(folder) / PLAN_FILE
    data = {**plan.to_dict(), "config": config_to_dict(config)}
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def resolve(
    config: ProjectConfig, images, folder: Path | None = None, progress: bool = True, echo: bool = True
) -> ProjectConfig:
    """The config with its `auto` settings planned from the images' fingerprint (unchanged when
    nothing is auto); the plan is printed and written to folder/plan.yaml."""
    if not config.auto:
        return config
    from microal.planning.fingerprint import fingerprint

    plan = make_plan(config, fingerprint(images, config, progress=progress))
    resolved = apply_plan(config, plan)
    if echo:
        print(f"training plan ({len(plan.overrides())} settings planned):\n{plan.table()}", flush=True)
    if folder is not None:
        path = write_plan(plan, resolved, folder)
        if echo:
            print(f"plan written to {path}", flush=True)
    return resolved
