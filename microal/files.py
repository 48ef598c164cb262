"""Writing results so that a failure never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# Columns that hold names, never numbers: read as text, or a model version "9136e8843964"
# becomes the float inf and an image id "0012" the integer 12.
ID_COLUMNS = ("model_version", "tile_id", "image_id", "image_name", "sample", "domain", "trial_id")


def read_table(path: str | Path):
    """A CSV table microal wrote, its id columns as text."""
    import pandas as pd

    return pd.read_csv(path, dtype={column: str for column in ID_COLUMNS})
