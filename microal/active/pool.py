"""The active-learning pool on disk: every tile's state.

State per tile: ``unlabelled``, ``queued`` (sent to an expert in round r), ``labelled``
(label known since round r), ``rejected`` (flagged unusable by an expert). Every change is
written at once and atomically, so a loop stopped half-way resumes from the file, and
"train on everything labelled so far" is a filter.

The labels themselves live in a label store (``microal.data.labels``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from microal.errors import InputError, MicroalError
from microal.files import atomic_path

UNLABELLED, QUEUED, LABELLED, REJECTED = "unlabelled", "queued", "labelled", "rejected"
STATES = (UNLABELLED, QUEUED, LABELLED, REJECTED)
POOL_COLUMNS = ["tile_id", "image_id", "domain", "row", "col", "state", "round", "task_id", "updated", "note"]
# How many experts labelled a tile and how far their masks agreed (labelled tiles from Label Studio);
# pools written before these columns existed get them empty on load.
CONSENSUS_COLUMNS = {"annotators": "Int64", "agreement": "float64"}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _with_consensus_columns(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    for column, dtype in CONSENSUS_COLUMNS.items():
        table[column] = table[column].astype(dtype) if column in table else pd.Series(index=table.index, dtype=dtype)
    return table


@dataclass
class Pool:
    path: Path
    table: pd.DataFrame

    @classmethod
    def create(cls, path: str | Path, tiles: pd.DataFrame) -> Pool:
        """A new pool of the given tiles, all unlabelled; refuses to overwrite an existing one."""
        path = Path(path)
        if path.exists():
            raise MicroalError(f"{path}: a pool already exists here; load it to resume")
        table = pd.DataFrame(
            {
                "tile_id": tiles.tile_id.to_numpy(),
                "image_id": tiles.image_id.to_numpy(),
                "domain": tiles.domain.astype(str).to_numpy(),
                "row": tiles["row"].to_numpy(),
                "col": tiles["col"].to_numpy(),
                "state": UNLABELLED,
                "round": -1,
                "task_id": pd.array([pd.NA] * len(tiles), dtype="Int64"),
                "updated": _now(),
                "note": "",
            }
        )
        pool = cls(path, _with_consensus_columns(table[POOL_COLUMNS]))
        pool.save()
        return pool

    @classmethod
    def load(cls, path: str | Path) -> Pool:
        path = Path(path)
        if not path.exists():
            raise InputError(path, "no pool here")
        table = pd.read_parquet(path)
        missing = set(POOL_COLUMNS) - set(table.columns)
        if missing:
            raise InputError(path, f"not a pool file (missing columns {sorted(missing)})")
        return cls(path, _with_consensus_columns(table))

    def save(self) -> None:
        with atomic_path(self.path) as tmp:
            self.table.to_parquet(tmp, index=False)

    def _set(self, tile_ids, state: str, round_: int, note: str = "", task_ids=None) -> None:
        tile_ids = list(tile_ids)
        index = self.table.index[self.table.tile_id.isin(tile_ids)]
        if len(index) != len(set(tile_ids)):
            unknown = sorted(set(tile_ids) - set(self.table.tile_id))
            raise MicroalError(f"{self.path}: tiles not in the pool: {unknown[:5]}")
        self.table.loc[index, ["state", "round", "updated", "note"]] = [state, round_, _now(), note]
        if task_ids is not None:
            mapping = dict(zip(tile_ids, task_ids))
            self.table.loc[index, "task_id"] = self.table.loc[index, "tile_id"].map(mapping).astype("Int64")
        self.save()

    def mark_queued(self, tile_ids, round_: int, task_ids=None) -> None:
        busy = self.table[self.table.tile_id.isin(list(tile_ids)) & (self.table.state != UNLABELLED)]
        if not busy.empty:
            raise MicroalError(
                f"tiles already {sorted(set(busy.state))}: {busy.tile_id.tolist()[:5]}; never queued twice"
            )
        self._set(tile_ids, QUEUED, round_, task_ids=task_ids)

    def mark_labelled(
        self, tile_ids, round_: int, note: str = "", annotators: int | None = None, agreement: float | None = None
    ) -> None:
        """Labels known since `round_`; with `annotators` (and their `agreement`) when experts' masks
        were consolidated."""
        index = self.table.index[self.table.tile_id.isin(list(tile_ids))]
        self.table.loc[index, "annotators"] = pd.NA if annotators is None else annotators
        self.table.loc[index, "agreement"] = float("nan") if agreement is None else agreement
        self._set(tile_ids, LABELLED, round_, note)

    def mark_rejected(self, tile_ids, round_: int, note: str) -> None:
        self._set(tile_ids, REJECTED, round_, note)

    def ids(self, state: str) -> list[str]:
        return self.table.tile_id[self.table.state == state].tolist()

    def counts(self) -> dict[str, int]:
        return {state: int((self.table.state == state).sum()) for state in STATES}
