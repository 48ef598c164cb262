"""Folder and file names of active-learning projects and oracle simulations, in one place.

A project (``microal al init`` ... ``al run``), ``<workdir>/al/<name>/``::

    pool.parquet              every tile's state (microal.active.pool)
    labels/                   the label store (microal.data.labels)
    costs.parquet             expert seconds per tile and annotator (microal.active.costs)
    annotations.parquet       every annotation pulled from Label Studio
    ls_files/                 tile images Label Studio serves to experts
    rounds/round-<r>/         members.json (the ensemble), report.csv (ensemble vs members),
                              scores.parquet + embeddings.parquet (scoring), selection.csv,
                              timings.json (seconds per step: pull, train, epochs, score, ...)

A simulation (``microal al simulate``), ``<workdir>/al/<name>/``::

    curve.csv, curve.png, curve_seconds.png, summary.csv
    <strategy>-s<seed>/       a project as above, labelled by the oracle (round 0's ensemble is
                              trained once per seed, by the first strategy, and shared)
    full-pool-<E>ep-s<seed>/  the whole-pool reference, trained for E epochs
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

POOL_FILE = "pool.parquet"
LABELS_DIR = "labels"
REPORT_FILE = "report.csv"
SCORES_FILE = "scores.parquet"
EMBEDDINGS_FILE = "embeddings.parquet"
SELECTION_FILE = "selection.csv"
TIMINGS_FILE = "timings.json"
ROUND_PREFIX = "round-"


@dataclass(frozen=True)
class ProjectFolders:
    root: Path

    @property
    def pool(self) -> Path:
        return self.root / POOL_FILE

    @property
    def labels(self) -> Path:
        return self.root / LABELS_DIR

    @property
    def costs(self) -> Path:
        return self.root / "costs.parquet"

    @property
    def annotations(self) -> Path:
        return self.root / "annotations.parquet"

    @property
    def ls_files(self) -> Path:
        return self.root / "ls_files"

    @property
    def rounds(self) -> Path:
        return self.root / "rounds"

    def round(self, round_: int) -> Path:
        return self.rounds / f"{ROUND_PREFIX}{round_}"

    def rounds_with(self, file_name: str) -> list[int]:
        """The rounds whose folder holds `file_name` (e.g. the ensemble's members file), in order."""
        if not self.rounds.exists():
            return []
        return sorted(int(p.parent.name[len(ROUND_PREFIX) :]) for p in self.rounds.glob(f"{ROUND_PREFIX}*/{file_name}"))


@dataclass(frozen=True)
class SimulationFolders:
    root: Path

    @property
    def curve(self) -> Path:
        return self.root / "curve.csv"

    @property
    def curve_plot(self) -> Path:
        return self.root / "curve.png"

    @property
    def summary(self) -> Path:
        return self.root / "summary.csv"

    @property
    def curve_seconds_plot(self) -> Path:
        return self.root / "curve_seconds.png"

    def run(self, strategy: str, seed: int) -> Path:
        """One strategy's project for one seed: its pool, label store, costs and rounds."""
        return self.root / f"{strategy}-s{seed}"

    def full_pool(self, epochs: int, seed: int) -> Path:
        return self.root / f"full-pool-{epochs}ep-s{seed}"
