"""A training session without Ray: one process, one device. Benchmarks use it to measure the
loops themselves (and run where only PyTorch is installed, e.g. a GPU box); tests use it to check
a loop's epochs, checkpoints and resume quickly. `microal train` always runs through Ray Train."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


class LocalSession:
    """A WorkerSession (training/loop.py) of rank 0 in a world of one. Reports are kept in
    `reports` as (metrics, saved checkpoint folder or None); checkpoints are copied to
    `checkpoint_root/checkpoint_<epoch>`; `resume_from` is the checkpoint folder to start from."""

    def __init__(
        self,
        cpus: int = 1,
        device: str | torch.device = "cpu",
        checkpoint_root: str | Path | None = None,
        resume_from: str | Path | None = None,
    ):
        self.cpus = cpus
        self.world_rank, self.world_size = 0, 1
        self.device = torch.device(device)
        self.checkpoint_root = Path(checkpoint_root) if checkpoint_root else None
        self.resume_from = Path(resume_from) if resume_from else None
        self.reports: list[tuple[dict, Path | None]] = []

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    @contextmanager
    def restored_checkpoint(self) -> Iterator[Path | None]:
        yield self.resume_from

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        saved = None
        if checkpoint_dir is not None and self.checkpoint_root is not None:
            saved = self.checkpoint_root / f"checkpoint_{int(metrics['epoch']):04d}"
            shutil.copytree(checkpoint_dir, saved)
        self.reports.append((dict(metrics), saved))

    @property
    def checkpointed_epochs(self) -> list[int]:
        return [int(m["epoch"]) for m, saved in self.reports if saved is not None]
