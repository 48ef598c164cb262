"""microal.files: atomic writes and reading back the tables microal wrote."""

import pandas as pd

from microal.active.folders import SimulationFolders
from microal.active.simulate import _append_curve
from microal.files import read_table


def test_ids_that_look_like_numbers_stay_text(tmp_path):
    # A hex model version of digits and one "e" parses as a float (here inf); image names of digits as integers.
    table = pd.DataFrame({"model_version": ["9136e8843964"], "image_id": ["0012"], "miou": [0.5]})
    table.to_csv(tmp_path / "t.csv", index=False)
    assert pd.read_csv(tmp_path / "t.csv").model_version.iloc[0] == float("inf")  # what plain pandas does
    back = read_table(tmp_path / "t.csv")
    assert back.model_version.iloc[0] == "9136e8843964" and back.image_id.iloc[0] == "0012"
    assert back.miou.iloc[0] == 0.5


def test_the_simulation_curve_keeps_its_model_versions(tmp_path):
    folders = SimulationFolders(tmp_path)
    for strategy in ("entropy", "random"):
        curve = _append_curve(folders, {"strategy": strategy, "round": 0, "model_version": "9136e8843964"})
    assert curve.model_version.tolist() == ["9136e8843964", "9136e8843964"]
