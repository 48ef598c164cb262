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


def test_a_simulation_shares_round_zero_between_strategies(tmp_path):
    folders = SimulationFolders(tmp_path)
    assert folders.ensemble("bald", 1, 0) == folders.ensemble("random", 1, 0) != folders.ensemble("bald", 0, 0)
    assert folders.ensemble("bald", 1, 2).parent == folders.run("bald", 1) != folders.run("random", 1)
    assert folders.scores("bald", 1, 2).parent == folders.run("bald", 1)
    assert folders.full_pool(40, 0) != folders.full_pool(20, 0)
