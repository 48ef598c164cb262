"""Where everything lives in a work folder, named in one place."""

from pathlib import Path

from microal.workspace import Workspace


def test_every_step_has_its_folder_inside_the_work_folder(tmp_path):
    ws = Workspace.at(tmp_path / "w")
    paths = [
        ws.catalog,
        ws.tiles,
        ws.ray_storage,
        ws.run("a"),
        ws.predictions("a"),
        ws.evaluation("a"),
        ws.tune("a"),
        ws.al("a"),
    ]
    assert all(Path(p).is_relative_to(tmp_path / "w") for p in paths)
    assert len(set(paths)) == len(paths)  # no two steps share a place
    assert ws.al("a").parent == ws.al_root and ws.tune("a").name == "a"
