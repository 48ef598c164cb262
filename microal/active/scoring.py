"""Scoring tiles with an ensemble: member probabilities -> acquisition scores, embeddings,
ensemble masks and held-out pixel counts. Plain PyTorch; the Ray backend runs it in actors: a
`ScorerFactory` builds one TileScorer per actor, and an operation (a TileScorer method, bound to
its settings with functools.partial) is applied to each batch of tile ids.

An ensemble is a list of microal model files (k-fold members, or the best trials of a search);
its prediction is the mean of the members' probabilities.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from microal.active.acquisition import entropy, tile_scores
from microal.active.costs import boundary_pixels
from microal.data.datasets import WindowSource, standardise
from microal.data.tiles import load_tiles
from microal.data.tiling import IGNORE_INDEX, crop_centre
from microal.models.compute import autocast
from microal.models.metrics import PixelCounts
from microal.models.model_file import load_model


def model_version(member_files: list[str | Path]) -> str:
    """A short id of an ensemble: the hash of its members' bytes (same files, same version)."""
    digest = hashlib.sha256()
    for path in member_files:
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()[:12]


@dataclass
class ScoreBatch:
    tile_ids: list[str]
    scores: dict[str, np.ndarray]  # "acquisition/reduction" -> [tiles]
    embeddings: np.ndarray  # [tiles, D]: pooled deepest encoder features of the first member
    # Phase boundary pixels of the ensemble's prediction in each tile centre: what an expert
    # correcting the pre-annotation paints along (active/costs.py estimates seconds from it).
    boundary_px: np.ndarray | None = None


class TileScorer:
    """Holds the ensemble members and reads tile windows from the tile set itself.

    Windows go through the members `forward_batch` at a time (in the members' precision); a
    thread cuts the next batch while the device runs this one, and uncertainty maps are reduced
    to scores on the device: only scores, embeddings and masks come back."""

    def __init__(
        self,
        member_files: list[str],
        tiles_root: str,
        device: str = "cpu",
        threads: int | None = None,
        forward_batch: int = 32,
    ):
        if threads:
            torch.set_num_threads(threads)
        self.members = [load_model(path, device=device) for path in member_files]
        self.device = torch.device(device)
        self.forward_batch = forward_batch
        self.tileset = load_tiles(tiles_root)
        self.tiles = self.tileset.tiles.set_index("tile_id", drop=False)
        self.margin = self.tileset.tiling.margin
        self._sources: dict[str, WindowSource] = {}

    def _source(self, image_id: str) -> WindowSource:
        if image_id not in self._sources:
            self._sources[image_id] = WindowSource(self.tileset, [image_id])
        return self._sources[image_id]

    def _windows(self, tile_ids: list[str]) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Standardised windows [tiles, 1, W, W], their true centre masks [tiles, T, T] (255 where
        unknown) and which centre pixels lie inside the image [tiles, T, T]."""
        images, masks, valid = [], [], []
        for tile_id in tile_ids:
            tile = self.tiles.loc[tile_id]
            source = self._source(tile.image_id)
            image, mask = source.cut(tile.image_id, int(tile.y), int(tile.x))
            images.append(standardise(np.array(image), *source.stats(tile.image_id))[None])
            valid.append(self.tileset.grid(tile.image_id).centre_inside(int(tile.y), int(tile.x)))
            masks.append(np.full(image.shape, IGNORE_INDEX, np.uint8) if mask is None else np.array(mask))
        windows = torch.from_numpy(np.stack(images))
        if self.device.type == "cuda":
            windows = windows.pin_memory()  # so the copy to the GPU can overlap
        return windows, crop_centre(np.stack(masks), self.margin), np.stack(valid)

    def _batches(self, tile_ids: list[str]) -> Iterator[tuple[list[str], torch.Tensor, np.ndarray, np.ndarray]]:
        """(ids, windows, masks, valid) of forward_batch tiles at a time; the next batch is cut by
        a thread while the caller runs this one (numpy and torch release the GIL)."""
        chunks = [tile_ids[i : i + self.forward_batch] for i in range(0, len(tile_ids), self.forward_batch)]
        with ThreadPoolExecutor(max_workers=1) as cutter:
            pending = cutter.submit(self._windows, chunks[0]) if chunks else None
            for index, chunk in enumerate(chunks):
                windows, masks, valid = pending.result()
                if index + 1 < len(chunks):
                    pending = cutter.submit(self._windows, chunks[index + 1])
                yield chunk, windows, masks, valid

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor, with_embeddings: bool = False):
        """[members, tiles, classes, T, T] on tile centres, on the scorer's device (and [tiles, D]
        embeddings, as numpy)."""
        batch = batch.to(self.device, non_blocking=True)
        probs, embeddings = [], None
        for index, member in enumerate(self.members):
            if with_embeddings and index == 0:  # the first member's encoder features are the embedding
                net = member.net
                with autocast(self.device, member.precision):
                    features = net.encoder(batch)
                    logits = net.segmentation_head(net.decoder(features)).float()
                embeddings = features[-1].float().mean(dim=(2, 3)).cpu().numpy()
            else:
                logits = member.forward(batch)
            probs.append(torch.softmax(crop_centre(logits, self.margin), dim=1))
        return torch.stack(probs), embeddings

    def score(
        self,
        tile_ids: list[str],
        acquisitions: list[str],
        reduction: str = "mean",
        top_fraction: float = 0.1,
        seed: int = 0,
        class_weights: tuple[float, ...] | None = None,
    ) -> ScoreBatch:
        """Scores of each acquisition for these tiles (with `class_weights`: class-balanced,
        acquisition.class_weight_map), their embeddings and predicted phase boundary lengths."""
        rng = np.random.default_rng([seed, int(hashlib.sha256("".join(tile_ids).encode()).hexdigest()[:8], 16)])
        scores: dict[str, list[np.ndarray]] = {f"{name}/{reduction}": [] for name in acquisitions}
        embeddings, boundaries = [], []
        for _, windows, _, valid in self._batches(list(tile_ids)):
            probs, features = self.probabilities(windows, with_embeddings=True)
            embeddings.append(features)
            for name in acquisitions:
                scores[f"{name}/{reduction}"].append(
                    tile_scores(probs, name, reduction, top_fraction, rng, valid, class_weights)
                )
            predicted = probs.mean(dim=0).argmax(dim=1).to(torch.uint8).cpu().numpy()
            predicted[~np.asarray(valid, dtype=bool)] = IGNORE_INDEX
            boundaries.append(np.array([boundary_pixels(mask) for mask in predicted], dtype=float))
        return ScoreBatch(
            list(tile_ids),
            {key: np.concatenate(parts) for key, parts in scores.items()},
            np.concatenate(embeddings) if embeddings else np.zeros((0, 0)),
            np.concatenate(boundaries) if boundaries else np.zeros(0),
        )

    def ensemble_masks(self, tile_ids: list[str]) -> np.ndarray:
        """The ensemble's label per pixel of each tile centre: [tiles, T, T] (pre-annotations)."""
        masks = []
        for _, windows, _, _ in self._batches(list(tile_ids)):
            probs, _ = self.probabilities(windows)
            masks.append(probs.mean(dim=0).argmax(dim=1).to(torch.uint8).cpu().numpy())
        return np.concatenate(masks)

    def previews(self, tile_ids: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What an expert is shown of each tile: its centre (standardised), the pre-annotation and
        the uncertainty map (entropy of the mean prediction over log C, 0-1); each [tiles, T, T]."""
        images, masks, maps = [], [], []
        for _, windows, _, _ in self._batches(list(tile_ids)):
            probs, _ = self.probabilities(windows)
            images.append(crop_centre(windows[:, 0].numpy(), self.margin))
            masks.append(probs.mean(dim=0).argmax(dim=1).to(torch.uint8).cpu().numpy())
            maps.append((entropy(probs) / math.log(probs.shape[2])).cpu().numpy())
        return np.concatenate(images), np.concatenate(masks), np.concatenate(maps)

    def pixel_counts(self, tile_ids: list[str]) -> np.ndarray:
        """Pixel counts [3, classes] against the tile set's masks, of the ensemble and of every
        member: [1 + members, 3, classes]."""
        total = None
        for _, windows, masks, _ in self._batches(list(tile_ids)):
            probs, _ = self.probabilities(windows)
            num_classes = probs.shape[2]
            labels = torch.cat([probs.mean(dim=0, keepdim=True), probs]).argmax(dim=2).cpu().numpy()
            counts = np.stack([PixelCounts.from_masks(p, masks, num_classes).as_array() for p in labels])
            total = counts if total is None else total + counts
        return total


@dataclass(frozen=True)
class ScorerFactory:
    """Builds a TileScorer where it runs (in a scoring actor): only file names travel."""

    member_files: tuple[str, ...]
    tiles_root: str
    device: str = "cpu"
    threads: int | None = None
    forward_batch: int = 32

    def __call__(self) -> TileScorer:
        return TileScorer(
            list(self.member_files),
            self.tiles_root,
            device=self.device,
            threads=self.threads,
            forward_batch=self.forward_batch,
        )


def score_table(batches: list[ScoreBatch], tiles: pd.DataFrame, version: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Long score table (tile id, acquisition, reduction, score, model version) and embeddings."""
    rows = []
    for batch in batches:
        for key, values in batch.scores.items():
            acquisition, reduction = key.split("/")
            rows.append(
                pd.DataFrame(
                    {
                        "tile_id": batch.tile_ids,
                        "acquisition": acquisition,
                        "reduction": reduction,
                        "score": values.astype(float),
                        "model_version": version,
                    }
                )
            )
    table = pd.concat(rows, ignore_index=True)
    info = tiles.set_index("tile_id").loc[table.tile_id, ["image_id", "domain"]].reset_index(drop=True)
    table = pd.concat([table, info], axis=1)
    if batches and all(b.boundary_px is not None for b in batches):
        boundary = pd.Series(
            np.concatenate([b.boundary_px for b in batches]), index=[t for b in batches for t in b.tile_ids]
        )
        table["predicted_boundary_px"] = table.tile_id.map(boundary).to_numpy()
    order = [t for b in batches for t in b.tile_ids]
    embeddings = np.concatenate([b.embeddings for b in batches]) if batches else np.zeros((0, 0))
    return table, pd.DataFrame(embeddings, index=order)
