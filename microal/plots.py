"""Pictures people would rather look at than read: learning curves and mask overlays."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed on a server

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from microal.config import ClassSpec  # noqa: E402
from microal.files import atomic_path  # noqa: E402
from microal.tiling import IGNORE_INDEX  # noqa: E402


def class_colors(classes: list[ClassSpec]) -> np.ndarray:
    """RGB 0..1 per class: the class table's colours, tab10 where none is given."""
    palette = plt.get_cmap("tab10").colors
    return np.array(
        [np.array(c.color) / 255.0 if c.color is not None else palette[i % len(palette)] for i, c in enumerate(classes)]
    )


def colorize(mask: np.ndarray, classes: list[ClassSpec]) -> np.ndarray:
    colors = class_colors(classes)
    out = np.zeros(mask.shape + (3,))
    valid = mask != IGNORE_INDEX
    out[valid] = colors[mask[valid].astype(int)]
    return out


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def learning_curve(history: pd.DataFrame, class_names: list[str], path: Path, title: str = "") -> None:
    """Loss and validation mIoU / per-class IoU against epoch."""
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(history.epoch, history.train_loss, "o-", label="train")
    if "val_loss" in history:
        ax_loss.plot(history.epoch, history.val_loss, "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss (CE + Dice)", title="loss")
    ax_loss.legend()
    if "val_miou" in history and history.val_miou.notna().any():
        ax_iou.plot(history.epoch, history.val_miou, "k-", lw=2.5, label="mIoU")
        for i, name in enumerate(class_names):
            key = f"val_iou_c{i}"
            if key in history:
                ax_iou.plot(history.epoch, history[key], "--", label=name)
        ax_iou.set(xlabel="epoch", ylabel="IoU", ylim=(0, 1), title="validation")
        ax_iou.legend(fontsize=8)
    else:
        ax_iou.text(0.5, 0.5, "no validation images", ha="center", va="center")
        ax_iou.axis("off")
    fig.suptitle(title)
    _save(fig, path)


def overlay(
    image: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None, classes: list[ClassSpec], path: Path, title: str
) -> None:
    """Image | prediction over image | truth over image | disagreement, with a legend."""
    panels = [("micrograph", None), ("prediction", prediction)]
    if truth is not None:
        panels += [("expert mask", truth), ("errors (red)", None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2))
    for ax, (name, mask) in zip(axes, panels):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        if mask is not None:
            ax.imshow(colorize(mask, classes), alpha=0.45)
        elif name.startswith("errors"):
            wrong = (prediction != truth) & (truth != IGNORE_INDEX)
            ax.imshow(np.dstack([wrong, np.zeros_like(wrong), np.zeros_like(wrong), wrong * 0.7]).astype(float))
        ax.set_title(name)
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in class_colors(classes)]
    fig.legend(handles, [c.name for c in classes], loc="lower center", ncol=len(classes), fontsize=9)
    fig.suptitle(title)
    _save(fig, path)
