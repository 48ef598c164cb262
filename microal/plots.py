"""Pictures people would rather look at than read: learning curves and mask overlays."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed on a server

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from microal.config import ClassSpec  # noqa: E402
from microal.data.tiling import IGNORE_INDEX  # noqa: E402
from microal.files import atomic_path  # noqa: E402


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


def _measured(ax, history: pd.DataFrame, column: str, *style, **options) -> None:
    """One metric against epoch, over the epochs that measured it (validation may skip epochs)."""
    rows = history[history[column].notna()]
    ax.plot(rows.epoch, rows[column], *style, **options)


def learning_curve(history: pd.DataFrame, class_names: list[str], path: Path, title: str = "") -> None:
    """Loss and validation mIoU / per-class IoU against epoch."""
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(11, 4))
    for column in [c for c in history if c.startswith("train_") and c.endswith("loss")] + ["val_loss"]:
        if column in history and history[column].notna().any():
            _measured(ax_loss, history, column, "o-", ms=3, label=column.replace("_", " "))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend(fontsize=8)
    if "val_miou" in history and history.val_miou.notna().any():
        _measured(ax_iou, history, "val_miou", "k-", lw=2.5, label="mIoU")
        for i, name in enumerate(class_names):
            key = f"val_iou_c{i}"
            if key in history:
                _measured(ax_iou, history, key, "--", label=name)
        if "target_miou" in history:
            _measured(ax_iou, history, "target_miou", "m-", lw=2.5, label="target mIoU")
        if "target_entropy" in history:
            _measured(ax_iou, history, "target_entropy", "c:", lw=2, label="target entropy (label-free)")
        ax_iou.set(xlabel="epoch", ylabel="IoU", ylim=(0, 1), title="validation")
        ax_iou.legend(fontsize=8)
    elif "val_accuracy" in history:
        _measured(ax_iou, history, "val_accuracy", "k-", lw=2.5)
        ax_iou.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1), title="validation (image-level labels)")
    else:
        ax_iou.text(0.5, 0.5, "no validation images", ha="center", va="center")
        ax_iou.axis("off")
    fig.suptitle(title)
    _save(fig, path)


def overlay(
    image: np.ndarray,
    prediction: np.ndarray,
    truth: np.ndarray | None,
    classes: list[ClassSpec],
    path: Path,
    title: str,
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
        ax.set_title(name, y=1.0)  # where it would go anyway: no axis to avoid, no search (a third of the time)
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in class_colors(classes)]
    fig.legend(handles, [c.name for c in classes], loc="lower center", ncol=len(classes), fontsize=9)
    fig.suptitle(title)
    _save(fig, path)


def side_by_side(
    rows: list[tuple[str, np.ndarray, np.ndarray | None, dict[str, np.ndarray]]], classes: list[ClassSpec], path: Path
) -> None:
    """One row per image: micrograph | expert mask | each run's prediction (overlaid), for comparing runs."""
    runs = list(rows[0][3])
    columns = 2 + len(runs)
    fig, axes = plt.subplots(len(rows), columns, figsize=(3.2 * columns, 3.3 * len(rows)), squeeze=False)
    for ax_row, (title, image, truth, predictions) in zip(axes, rows):
        panels = [("micrograph", None), ("expert mask", truth)] + [(run, predictions[run]) for run in runs]
        for ax, (name, mask) in zip(ax_row, panels):
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            if mask is not None:
                ax.imshow(colorize(mask, classes), alpha=0.45)
            ax.set_title(f"{name}\n{title}" if name == "micrograph" else name, fontsize=9, y=1.0)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in class_colors(classes)]
    fig.legend(handles, [c.name for c in classes], loc="lower center", ncol=len(classes), fontsize=9)
    _save(fig, path)


def search_curves(histories: dict[str, pd.DataFrame | None], metric: str, path: Path, title: str = "") -> None:
    """The search metric against epoch for every trial; trials stopped early end early (marked x)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))

    def length(h):
        return int(h["epoch"].max()) if "epoch" in h and len(h) else len(h)

    longest = max((length(h) for h in histories.values() if h is not None), default=0)
    for trial, history in sorted(histories.items()):
        if history is None or metric not in history or history.empty:
            continue
        epochs = history["epoch"].to_numpy() if "epoch" in history else np.arange(1, len(history) + 1)
        (line,) = ax.plot(epochs, history[metric], "-", lw=1.5, label=trial)
        if length(history) < longest:
            ax.plot(epochs[-1], history[metric].iloc[-1], "x", color=line.get_color(), ms=9, mew=2)
    ax.set(xlabel="epoch", ylabel=metric, title=title or f"{metric} per trial (x: stopped early)")
    if len(histories) <= 12:
        ax.legend(fontsize=7, ncol=2)
    _save(fig, path)


def learning_curves_al(
    curve: pd.DataFrame, path: Path, full_pool_miou: float | None = None, x: str = "labelled_tiles"
) -> None:
    """Held-out mIoU per round against labelled tiles (or `x="expert_seconds"`, drawn in
    minutes): mean over seeds with min-max spread, per strategy."""
    fig, ax = plt.subplots(figsize=(8, 5))
    scale = 60 if x == "expert_seconds" else 1
    for strategy, part in sorted(curve.groupby("strategy"), key=lambda kv: kv[0] != "random"):
        stats = part.groupby("round").agg(
            x=(x, "mean"), mean=("miou", "mean"), low=("miou", "min"), high=("miou", "max")
        )
        style = {"color": "0.4", "ls": "--"} if strategy == "random" else {"ls": "-"}
        (line,) = ax.plot(stats.x / scale, stats["mean"], marker="o", ms=4, label=strategy, **style)
        ax.fill_between(stats.x / scale, stats.low, stats.high, color=line.get_color(), alpha=0.15)
    if full_pool_miou is not None and np.isfinite(full_pool_miou):
        ax.axhline(full_pool_miou, color="k", lw=1, label="whole pool labelled")
        ax.axhline(0.95 * full_pool_miou, color="k", lw=1, ls=":", label="95% of that")
    seeds = curve.seed.nunique()
    ax.set(
        xlabel="expert minutes (mean over seeds)" if x == "expert_seconds" else "labelled tiles",
        ylabel="held-out mIoU",
        title=f"active learning vs random ({seeds} seed{'s' if seeds > 1 else ''}; band = min-max)",
    )
    ax.legend(fontsize=8)
    _save(fig, path)


def batch_for_expert(
    images: np.ndarray,
    masks: np.ndarray,
    uncertainty: np.ndarray,
    classes: list[ClassSpec],
    titles: list[str],
    path: Path,
) -> None:
    """The tiles an expert is asked to label next, one column each: the tile, the model's
    pre-annotation over it, and its uncertainty map (what made the tile worth an expert's time)."""
    columns = len(images)
    fig, axes = plt.subplots(3, columns, figsize=(2.1 * columns, 6.6), squeeze=False)
    for column, (image, mask, heat, title) in enumerate(zip(images, masks, uncertainty, titles)):
        axes[0, column].imshow(image, cmap="gray")
        axes[0, column].set_title(title, fontsize=7)
        axes[1, column].imshow(image, cmap="gray")
        axes[1, column].imshow(colorize(mask, classes), alpha=0.45)
        shown = axes[2, column].imshow(heat, cmap="inferno", vmin=0, vmax=1)
    for row, label in enumerate(("tile", "pre-annotation", "uncertainty")):
        axes[row, 0].set_ylabel(label)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    colors = class_colors(classes)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i]) for i in range(len(classes))]
    fig.legend(handles, [c.name for c in classes], loc="lower center", ncol=len(classes), fontsize=8)
    fig.subplots_adjust(right=0.92)
    fig.colorbar(shown, cax=fig.add_axes((0.935, 0.12, 0.01, 0.22)), label="entropy / log C")
    fig.suptitle("The batch an expert would label next, ranked by the model's uncertainty")
    _save(fig, path)


def embedding_plane(
    descriptors: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    open_set,
    path: Path,
    val_descriptors: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
) -> None:
    """The classifier's descriptor plane (the first two dimensions): training crops by class,
    validation crops hollow, and the 'none of these' boundary (the log-likelihood threshold)."""
    fig, ax = plt.subplots(figsize=(7, 6))
    colors = plt.get_cmap("tab10")
    for index, name in enumerate(classes):
        own = descriptors[labels == index]
        ax.scatter(own[:, 0], own[:, 1], s=6, alpha=0.5, color=colors(index % 10), label=f"{name} (train)")
        if val_descriptors is not None:
            val = val_descriptors[val_labels == index]
            ax.scatter(val[:, 0], val[:, 1], s=18, facecolors="none", edgecolors=colors(index % 10))
    if descriptors.shape[1] == 2 and np.isfinite(open_set.threshold):
        low, high = descriptors.min(axis=0), descriptors.max(axis=0)
        pad = 0.15 * (high - low + 1e-6)
        xs, ys = np.meshgrid(
            np.linspace(low[0] - pad[0], high[0] + pad[0], 200), np.linspace(low[1] - pad[1], high[1] + pad[1], 200)
        )
        best = open_set.log_likelihoods(np.stack([xs.ravel(), ys.ravel()], axis=1)).max(axis=1).reshape(xs.shape)
        ax.contour(xs, ys, best, levels=[open_set.threshold], colors="k", linestyles="--", linewidths=1)
        ax.plot([], [], "k--", lw=1, label="'none of these' outside")
    ax.set(xlabel="descriptor 1", ylabel="descriptor 2", title="crops in the descriptor plane (hollow: validation)")
    ax.legend(fontsize=7, markerscale=2)
    _save(fig, path)


def confusion_figure(confusion: pd.DataFrame, path: Path) -> None:
    """A confusion matrix (rows: true class, columns: decision), counts in the cells, each row
    shaded by its share so rare classes read as clearly as common ones."""
    counts = confusion.to_numpy()
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * counts.shape[1] + 2.5, 0.7 * counts.shape[0] + 2))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks(range(counts.shape[1]), confusion.columns, rotation=30, ha="right")
    ax.set_yticks(range(counts.shape[0]), confusion.index)
    ax.set(xlabel="decision", ylabel="true class", title="confusion (shade: share of the row)")
    _save(fig, path)


def saliency_figure(image: np.ndarray, overlays: list[tuple[str, np.ndarray]], path: Path, title: str = "") -> None:
    """The micrograph, then each map (0..1) as a heat overlay on it, side by side."""
    panels = len(overlays) + 1
    aspect = image.shape[1] / image.shape[0]
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * aspect * panels, 3.6))
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("micrograph", fontsize=9)
    for ax, (name, values) in zip(axes[1:], overlays, strict=True):
        ax.imshow(image, cmap="gray")
        shown = ax.imshow(values, cmap="inferno", alpha=0.5, vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
    fig.colorbar(shown, ax=axes[-1], fraction=0.046, pad=0.02)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def sites_overview(thumbnail: np.ndarray, step: int, sites: pd.DataFrame, classes: list[str], path: Path) -> None:
    """A thumbnail of the panorama with each site marked in its class's colour."""
    aspect = thumbnail.shape[1] / thumbnail.shape[0]
    fig, ax = plt.subplots(figsize=(min(16, 6 * aspect + 2), 6))
    ax.imshow(thumbnail, cmap="gray")
    colors = plt.get_cmap("tab10")
    for index, name in enumerate(classes):
        own = sites[sites["class"] == name]
        ax.scatter(
            own.x / step,
            own.y / step,
            s=14,
            facecolors="none",
            edgecolors=[colors(index % 10)],
            label=f"{name} ({len(own)})",
        )
    ax.set_title(f"{len(sites)} sites")
    ax.legend(fontsize=7, loc="upper right")
    ax.axis("off")
    _save(fig, path)
