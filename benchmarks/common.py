"""What the benchmark scripts share: where the data and outputs are, and a clean output folder."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
UHCS_TEST = ["uhcs0295.tif", "uhcs1289.tif", "uhcs0006.tif", "uhcs1648.tif"]  # the test4A hold-out


def parser(doc: str, name: str, dataset: str | None = None) -> argparse.ArgumentParser:
    """--out (default bench-out/<name>) and, for a shared data set, --data."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "bench-out" / name), help="output folder (emptied first)")
    if dataset:
        p.add_argument("--data", default=str(SHARED / dataset), help=f"the {dataset} data set")
    return p


def require_data(path: str | Path) -> Path:
    """The data folder, or exit with a clear message (code 2) where ../shared is absent."""
    path = Path(path)
    if not (path / "manifest.csv").exists():
        print(f"data not found at {path} (expected ../shared/datasets beside the repository)")
        sys.exit(2)
    return path


def fresh(path: str | Path) -> Path:
    path = Path(path).resolve()
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def project(example: str | Path, overrides: dict, manifest: Path, out: Path):
    """An example config (a name in examples/, or a path) with dotted overrides
    (`{"tiling.scale": 0.5}`), its data ingested and tiled under `out`. Returns (config, catalog)."""
    from microal.config import apply_overrides, load_config
    from microal.data.catalog import ingest
    from microal.data.tiles import build_tiles

    config = apply_overrides(load_config(REPO / "examples" / example), overrides, source="benchmark settings")
    catalog, _ = ingest(manifest, config, out / "catalog.parquet", progress=False)
    build_tiles(catalog, config, out / "tiles", progress=False)
    return config, catalog
