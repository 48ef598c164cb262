"""Scoring tiles with an ensemble: member probabilities -> acquisition scores, embeddings,
ensemble masks and held-out pixel counts. Plain PyTorch; the Ray backend runs it in actors.

An ensemble is a list of microal model files (k-fold members, or the best trials of a search);
its prediction is the mean of the members' probabilities.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from microal.acquisition import tile_scores
from microal.data import WindowSource, standardise
from microal.metrics import PixelCounts
from microal.predict import load_model
from microal.tileset import load_tiles
from microal.tiling import IGNORE_INDEX


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


class TileScorer:
    """Holds the ensemble members and reads tile windows from the tile set itself."""

    def __init__(self, member_files: list[str], tiles_root: str, device: str = "cpu", threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.members = [load_model(path, device=device) for path in member_files]
        self.device = device
        self.tileset = load_tiles(tiles_root)
        self.tiles = self.tileset.tiles.set_index("tile_id", drop=False)
        self.margin = self.tileset.tiling.margin
        self._sources: dict[str, WindowSource] = {}

    def _source(self, image_id: str, mask_root: str | None) -> WindowSource:
        key = f"{image_id}|{mask_root}"
        if key not in self._sources:
            self._sources[key] = WindowSource(self.tileset, [image_id], mask_root=mask_root)
        return self._sources[key]

    def _windows(self, tile_ids: list[str], mask_root: str | None = None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        images, masks, valid = [], [], []
        for tile_id in tile_ids:
            tile = self.tiles.loc[tile_id]
            source = self._source(tile.image_id, mask_root)
            image, mask = source.cut(tile.image_id, int(tile.y), int(tile.x))
            images.append(standardise(np.array(image), *source.stats(tile.image_id))[None])
            grid = self.tileset.grid(tile.image_id)
            inside = np.zeros(image.shape, dtype=bool)
            (top, _), (left, _) = grid.pad_widths()
            inside[max(top - int(tile.y), 0) : top + grid.height - int(tile.y), max(left - int(tile.x), 0) : left + grid.width - int(tile.x)] = True
            valid.append(inside[self.margin : self.margin + grid.tile_size, self.margin : self.margin + grid.tile_size])
            masks.append(np.full(image.shape, IGNORE_INDEX, np.uint8) if mask is None else np.array(mask))
        masks = np.stack(masks)[:, self.margin : -self.margin or None, self.margin : -self.margin or None]
        return torch.from_numpy(np.stack(images)), masks, np.stack(valid)

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor, with_embeddings: bool = False):
        """[members, tiles, classes, T, T] on tile centres (and [tiles, D] embeddings)."""
        batch = batch.to(self.device)
        probs, embeddings = [], None
        for index, member in enumerate(self.members):
            net = member.net
            if with_embeddings and index == 0:
                features = net.encoder(batch)
                embeddings = features[-1].mean(dim=(2, 3)).cpu().numpy()
                logits = net.segmentation_head(net.decoder(features))
            else:
                logits = net(batch)
            centre = logits[..., self.margin : logits.shape[-2] - self.margin, self.margin : logits.shape[-1] - self.margin]
            probs.append(torch.softmax(centre, dim=1).cpu().numpy())
        return np.stack(probs), embeddings

    def score(
        self, tile_ids: list[str], acquisitions: list[str], reduction: str = "mean", top_fraction: float = 0.1,
        seed: int = 0,
    ) -> ScoreBatch:
        images, _, valid = self._windows(tile_ids)
        probs, embeddings = self.probabilities(images, with_embeddings=True)
        rng = np.random.default_rng([seed, int(hashlib.sha256("".join(tile_ids).encode()).hexdigest()[:8], 16)])
        scores = {
            f"{name}/{reduction}": tile_scores(probs, name, reduction, top_fraction, rng=rng, valid=valid)
            for name in acquisitions
        }
        return ScoreBatch(list(tile_ids), scores, embeddings)

    def ensemble_masks(self, tile_ids: list[str]) -> np.ndarray:
        """The ensemble's label per pixel of each tile centre: [tiles, T, T] (pre-annotations)."""
        images, _, _ = self._windows(tile_ids)
        probs, _ = self.probabilities(images)
        return probs.mean(axis=0).argmax(axis=1).astype(np.uint8)

    def pixel_counts(self, tile_ids: list[str], mask_root: str | None = None) -> np.ndarray:
        """Pixel counts [3, classes] of the ensemble and of every member: [1 + members, 3, classes]."""
        images, masks, _ = self._windows(tile_ids, mask_root)
        probs, _ = self.probabilities(images)
        num_classes = probs.shape[2]
        results = [PixelCounts.from_masks(probs.mean(axis=0).argmax(axis=1), masks, num_classes).as_array()]
        results += [PixelCounts.from_masks(p.argmax(axis=1), masks, num_classes).as_array() for p in probs]
        return np.stack(results)


def score_table(batches: list[ScoreBatch], tiles: pd.DataFrame, version: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Long score table (tile id, acquisition, reduction, score, model version) and embeddings."""
    rows = []
    for batch in batches:
        for key, values in batch.scores.items():
            acquisition, reduction = key.split("/")
            rows.append(pd.DataFrame({"tile_id": batch.tile_ids, "acquisition": acquisition, "reduction": reduction,
                                      "score": values.astype(float), "model_version": version}))
    table = pd.concat(rows, ignore_index=True)
    info = tiles.set_index("tile_id").loc[table.tile_id, ["image_id", "domain"]].reset_index(drop=True)
    table = pd.concat([table, info], axis=1)
    order = [t for b in batches for t in b.tile_ids]
    embeddings = np.concatenate([b.embeddings for b in batches]) if batches else np.zeros((0, 0))
    return table, pd.DataFrame(embeddings, index=order)
