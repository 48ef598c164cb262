"""A training run's checkpoints in storage, for runs on pooled workers (backend/ray.py): what Ray
Train's run folder holds for its own runs, kept by microal.

    <storage_path>/<name>/checkpoint_000003/   the files the loop wrote, then report.json

`report.json` (the epoch's metrics) is written last, so a folder without it is a checkpoint a
lost worker left half-copied, never restored from. Storage is a folder (local or a shared mount)
or any URI pyarrow reads (s3://, gs://), as for Ray Train. Checkpoints are pruned as Ray Train
prunes them: the best `keep` by the score, and always the latest (what a restart resumes from).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import torch

REPORT_FILE = "report.json"
PREFIX = "checkpoint_"


@dataclass(frozen=True)
class StoredCheckpoint:
    index: int
    path: str  # in the store's file system
    metrics: dict


class RunStore:
    """The checkpoints of one run: `<storage_path>/<name>/checkpoint_<index>`."""

    def __init__(self, storage_path: str, name: str, score: tuple[str, str], keep: int):
        self.fs, root = pafs.FileSystem.from_uri(_absolute(storage_path))
        self.root = f"{root.rstrip('/')}/{name}"
        self.score = score
        self.keep = max(1, keep)

    def _folders(self) -> list[pafs.FileInfo]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        return [i for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(PREFIX)]

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Complete checkpoints, oldest first."""
        found = []
        for info in self._folders():
            report = f"{info.path}/{REPORT_FILE}"
            if self.fs.get_file_info(report).type != pafs.FileType.File:
                continue  # still being written, or left half-written by a lost worker
            with self.fs.open_input_stream(report) as handle:
                metrics = {k: math.nan if v is None else v for k, v in json.loads(handle.read()).items()}
            found.append(StoredCheckpoint(int(info.base_name[len(PREFIX) :]), info.path, metrics))
        return sorted(found, key=lambda c: c.index)

    def latest(self) -> StoredCheckpoint | None:
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None

    def best(self) -> StoredCheckpoint | None:
        """The checkpoint with the best score; the latest where none measured it."""
        ranked = self._ranked(self.checkpoints())
        return ranked[0] if ranked else self.latest()

    def _ranked(self, checkpoints: list[StoredCheckpoint]) -> list[StoredCheckpoint]:
        attribute, order = self.score
        measured = [c for c in checkpoints if _finite(c.metrics.get(attribute))]
        return sorted(measured, key=lambda c: float(c.metrics[attribute]), reverse=order == "max")

    def add(self, directory: Path, metrics: dict) -> StoredCheckpoint:
        """Copy a checkpoint folder in as the next index (report.json last), then prune."""
        indices = [int(i.base_name[len(PREFIX) :]) for i in self._folders()]
        index = max(indices, default=0) + 1
        path = f"{self.root}/{PREFIX}{index:06d}"
        self.fs.create_dir(path)
        pafs.copy_files(str(directory), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
        with self.fs.open_output_stream(f"{path}/{REPORT_FILE}") as handle:
            handle.write(json.dumps(_jsonable(metrics)).encode())
        self._prune()
        return StoredCheckpoint(index, path, metrics)

    def _prune(self) -> None:
        checkpoints = self.checkpoints()
        kept = {c.index for c in self._ranked(checkpoints)[: self.keep]}
        if checkpoints:
            kept.add(checkpoints[-1].index)
        complete = {c.index for c in checkpoints}
        for info in self._folders():
            index = int(info.base_name[len(PREFIX) :])
            if index not in complete and index < max(complete, default=0):
                self.fs.delete_dir(info.path)  # left half-written by an earlier attempt
            elif index in complete and index not in kept:
                self.fs.delete_dir(info.path)

    @contextmanager
    def local_copy(self, checkpoint: StoredCheckpoint) -> Iterator[Path]:
        """The checkpoint as a local folder (the folder itself on a local file system)."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            yield Path(checkpoint.path)
            return
        with tempfile.TemporaryDirectory() as tmp:
            pafs.copy_files(
                checkpoint.path, tmp, source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem()
            )
            yield Path(tmp)

    def export(self, checkpoint: StoredCheckpoint, names: tuple[str, ...], dest: Path, prefix: str) -> None:
        with self.local_copy(checkpoint) as directory:
            for name in names:
                shutil.copyfile(directory / name, dest / f"{prefix}_{name}")


class StoredRunSession:
    """The WorkerSession (training/loop.py) of a run on one pooled worker: rank 0 of 1, reports
    into a RunStore, restores from its latest complete checkpoint."""

    def __init__(self, store: RunStore, cpus: float, device: torch.device):
        self.store = store
        self.cpus = max(1, int(cpus))
        self.world_rank, self.world_size = 0, 1
        self.device = device
        self.last_metrics: dict = {}

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    @contextmanager
    def restored_checkpoint(self) -> Iterator[Path | None]:
        latest = self.store.latest()
        if latest is None:
            yield None
            return
        with self.store.local_copy(latest) as directory:
            yield directory

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        self.last_metrics = dict(metrics)
        if checkpoint_dir is not None:
            self.store.add(checkpoint_dir, metrics)


def _absolute(storage_path: str) -> str:
    return storage_path if "://" in storage_path else str(Path(storage_path).resolve())


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _jsonable(metrics: dict) -> dict:
    """Metrics as JSON: numbers as floats, NaN as null (JSON has no NaN)."""
    out = {}
    for key, value in metrics.items():
        if hasattr(value, "item"):  # a numpy or torch scalar
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out
