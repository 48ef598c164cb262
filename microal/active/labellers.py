"""The oracle: a labeller (active/rounds.py) that reveals the hidden true labels of the items it is
handed (tile masks, or image classes), at once, and records what an expert would have spent on
each (active/costs.py).
Label Studio's labeller, the experts, is in labelstudio/loop.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from microal.active.costs import SimulatedCost
from microal.active.rounds import RoundProject

ORACLE = "oracle"


@dataclass
class OracleLabeller:
    cost: SimulatedCost = field(default_factory=SimulatedCost)
    name: str = ORACLE

    def reveal(self, project: RoundProject, tile_ids: list[str], round_: int, note: str) -> None:
        """Labels for these pool items from their truth, known from `round_`, with their cost."""
        tile_ids = list(tile_ids)
        seconds = project.reveal_truth(tile_ids, self.cost)
        project.costs.record(
            [
                {"tile_id": tile_id, "annotator": self.name, "round": round_, "seconds": s, "source": "simulated"}
                for tile_id, s in zip(tile_ids, seconds, strict=True)
            ]
        )
        project.pool.mark_labelled(tile_ids, round_, note=note)

    def hand_over(self, project: RoundProject, selection: pd.DataFrame, model) -> list[str]:
        tile_ids = selection.tile_id.tolist()
        acquisition = str(selection.acquisition.iloc[0]) if "acquisition" in selection and len(selection) else ""
        self.reveal(project, tile_ids, project.current_round + 1, note=f"{self.name} ({acquisition})")
        return tile_ids
