"""Where each step reads and writes inside a project's work folder: the one place that names
its folders (inside an active-learning folder: microal.active.folders)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> Workspace:
        return cls(Path(root).resolve())

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.parquet"

    @property
    def tiles(self) -> Path:
        return self.root / "tiles"

    @property
    def ray_storage(self) -> Path:
        return self.root / "ray_results"

    def run(self, name: str) -> Path:
        return self.root / "runs" / name

    def predictions(self, name: str) -> Path:
        return self.root / "predictions" / name

    def evaluation(self, name: str) -> Path:
        return self.root / "evaluation" / name

    def saliency(self, name: str) -> Path:
        """Saliency figures (evidence maps, Grad-CAM) of a run's model on chosen images."""
        return self.root / "saliency" / name

    def sites(self, name: str) -> Path:
        """Sites found and classified in panoramas by a classification run."""
        return self.root / "sites" / name

    def tune(self, name: str) -> Path:
        """A search's results (results.csv, best_config.yaml, trials.png)."""
        return self.root / "tune" / name

    def report(self, name: str) -> Path:
        """A run's or project's HTML report."""
        return self.root / "reports" / f"{name}.html"

    @property
    def al_root(self) -> Path:
        return self.root / "al"

    def al(self, name: str) -> Path:
        """An active-learning project or simulation (its layout: microal.active.folders)."""
        return self.al_root / name
