"""The oracle: a labeller (active/rounds.py) that reveals the hidden true masks of the tiles it is
handed, at once, and records what an expert would have spent on each (active/costs.py).
Label Studio's labeller, the experts, is in labelstudio/loop.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from microal.active.costs import SimulatedCost
from microal.active.ensemble import Ensemble
from microal.active.rounds import ALProject

ORACLE = "oracle"


@dataclass
class OracleLabeller:
    cost: SimulatedCost = field(default_factory=SimulatedCost)
    name: str = ORACLE

    def reveal(self, project: ALProject, tile_ids: list[str], round_: int, note: str) -> None:
        """Labels for these tiles from their true masks, known from `round_`, with their cost."""
        tiles = project.tiles(tile_ids)
        labels = project.labels
        labels.reveal_from_truth(tiles)
        project.costs.record(
            [
                {
                    "tile_id": tile.tile_id,
                    "annotator": self.name,
                    "round": round_,
                    "seconds": self.cost.seconds(labels.centre(tile)),
                    "source": "simulated",
                }
                for _, tile in tiles.iterrows()
            ]
        )
        project.pool.mark_labelled(list(tile_ids), round_, note=note)

    def hand_over(self, project: ALProject, selection: pd.DataFrame, ensemble: Ensemble) -> list[str]:
        tile_ids = selection.tile_id.tolist()
        acquisition = str(selection.acquisition.iloc[0]) if "acquisition" in selection and len(selection) else ""
        self.reveal(project, tile_ids, project.current_round + 1, note=f"{self.name} ({acquisition})")
        return tile_ids
