"""Active-learning projects and simulations: folder and file names in one place."""

from microal.active.folders import ProjectFolders, SimulationFolders


def test_trained_rounds_are_the_round_folders_holding_the_file(tmp_path):
    folders = ProjectFolders(tmp_path)
    assert folders.rounds_with("members.json") == []  # no rounds folder yet
    for round_ in (0, 2, 10):
        folders.round(round_).mkdir(parents=True)
        (folders.round(round_) / "members.json").write_text("{}")
    folders.round(11).mkdir()  # a round still training: no members yet
    assert folders.rounds_with("members.json") == [0, 2, 10]  # numeric order, not text order


def test_each_strategy_and_seed_of_a_simulation_is_a_project(tmp_path):
    folders = SimulationFolders(tmp_path)
    run = ProjectFolders(folders.run("bald", 1))
    assert run.round(2).parent.parent == folders.run("bald", 1) != folders.run("random", 1) != folders.run("bald", 0)
    assert run.costs.parent == run.pool.parent == folders.run("bald", 1)
    assert folders.full_pool(40, 0) != folders.full_pool(20, 0)
    assert folders.curve_plot != folders.curve_seconds_plot
