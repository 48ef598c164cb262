"""Image-level active learning with a real Label Studio server: the shared round on a pool of
whole micrographs, labelled by the oracle and by experts choosing a class, then retrained."""

import pandas as pd
import pytest
import yaml

from microal.active import rounds
from microal.active.images import CLASSIFIER_DIR, ROUND_CATALOG_FILE, init_image_project
from microal.active.labellers import OracleLabeller
from microal.active.pool import LABELLED, QUEUED, REJECTED
from microal.cli.main import main
from microal.config import apply_overrides, parse_config
from microal.errors import MicroalError
from microal.labelstudio.client import LabelStudioClient, choice_result
from microal.labelstudio.config import CLASS_NAME, FLAG_NONE, FLAGS_NAME, image_label_config
from microal.labelstudio.images import ImageLabelStudioLabeller
from microal.labelstudio.loop import connect, label_cost


@pytest.fixture(scope="module")
def micrographs(tmp_path_factory, labelstudio_server):
    """18 pool micrographs of 3 generated classes and 6 held out (one sample per class),
    ingested; a config that trains the classifier in seconds."""
    from microal.data.synth_classes import CLASS_NAMES, generate_classes

    out = tmp_path_factory.mktemp("image-al")
    manifest, raw = generate_classes(out / "data", per_class=8, seed=3)
    raw = {
        **raw,
        "split": {**raw["split"], "test": {"column": "sample", "values": [f"{c}-0" for c in CLASS_NAMES]}},
        "classify": {**raw["classify"], "epochs": 3, "crops_per_epoch": 96, "predict_crops": 16},
        "al": {"batch_size": 3},
        "labelstudio": {"url": labelstudio_server["server"].url, "files_root": str(labelstudio_server["files_root"])},
    }
    config = parse_config(raw)
    work = labelstudio_server["files_root"] / "image-al-work"  # Label Studio serves task images from there
    config_path = work / "config.yaml"
    work.mkdir()
    config_path.write_text(yaml.safe_dump(raw))
    assert main(["ingest", str(manifest), "-c", str(config_path), "-w", str(work)]) == 0
    return config, work / "catalog.parquet", config_path, work


def test_an_image_pool_leaves_the_held_out_samples_out_and_hides_labels_for_the_oracle(micrographs, tmp_path):
    config, catalog, _, _ = micrographs
    project = init_image_project(tmp_path / "p", config, catalog, start_per_class=2, seed=0)
    pool = project.pool.table
    assert len(pool) == 18 and len(project.heldout_images()) == 6
    assert not pool.tile_id.isin(project.heldout_images().image_id).any()
    labelled = pool[pool.state == LABELLED]
    assert len(labelled) == 6 and (labelled["round"] == 0).all()
    assert project.labels.read().groupby("label").size().to_dict() == {"lamellae": 2, "network": 2, "particles": 2}
    trained_on = pd.read_parquet(project.round_catalog(0))
    assert trained_on.label.notna().sum() == 6 + 6  # the labelled pool images and the held-out ones


def test_the_oracle_and_the_experts_run_the_same_image_round_then_retrain_on_what_experts_chose(
    micrographs, labelstudio_server, ray_local, tmp_path
):
    config, catalog, _, _ = micrographs
    server = labelstudio_server
    oracle_project = init_image_project(tmp_path / "oracle", config, catalog, start_per_class=2, seed=0)
    experts_project = init_image_project(
        server["files_root"] / "al" / "images", config, catalog, start_per_class=2, seed=0
    )
    oracle = rounds.run_round(oracle_project, OracleLabeller())
    assert set(oracle.report.columns) >= {"accuracy", "balanced_accuracy"} and oracle.report.images.iloc[0] == 6
    client = LabelStudioClient(server["server"].url, server["token"])
    target = connect(experts_project, client, server["files_root"], xml=image_label_config(config))
    labeller = ImageLabelStudioLabeller(target)
    experts = rounds.run_round(experts_project, labeller, members=oracle.ensemble)

    # The same pool, model and selection: the highest entropy first.
    pd.testing.assert_frame_equal(oracle.selection, experts.selection)
    chosen = oracle.selection.tile_id.tolist()
    assert len(chosen) == 3 and oracle.selection.entropy.is_monotonic_decreasing
    scores = pd.read_parquet(oracle_project.round_dir(0) / "scores.parquet")
    assert oracle.selection.entropy.min() >= scores[~scores.tile_id.isin(chosen)].entropy.max()
    revealed = oracle_project.labels.by_image()
    truth = oracle_project.images(chosen).label
    assert [revealed[i] for i in chosen] == truth.tolist()
    assert (oracle_project.costs.read().set_index("tile_id").loc[chosen].source == "simulated").all()

    # Experts see each micrograph with the classifier's decision ticked and the entropy as score.
    queued = experts_project.pool.table.set_index("tile_id").loc[chosen]
    assert (queued.state == QUEUED).all() and (queued["round"] == 1).all()
    for image_id, task_id in zip(chosen, queued.task_id.astype(int)):
        task = client.task(task_id)
        row = oracle.selection.set_index("tile_id").loc[image_id]
        assert task["data"]["image_name"] == row.image_name
        prediction = task["predictions"][0]
        expected = [FLAG_NONE] if row.decision == "none" else [row.decision]
        assert prediction["result"][0]["value"]["choices"] == expected
        assert prediction["score"] == pytest.approx(row.entropy, abs=1e-6)
        assert (labeller.target.files_dir / f"{image_id}.png").exists()

    # Two experts' answers come back as labels; the third image is "none of these classes".
    answers = {}
    for image_id, task_id in list(zip(chosen, queued.task_id.astype(int)))[:2]:
        answers[image_id] = truth[image_id]
        client.annotate(task_id, [choice_result(CLASS_NAME, [truth[image_id]])], lead_time=20.0)
    client.annotate(int(queued.task_id.iloc[2]), [choice_result(FLAGS_NAME, [FLAG_NONE])], lead_time=5.0)
    pulled = labeller.pull(experts_project)
    assert sorted(pulled.labelled) == sorted(answers) and pulled.rejected == [chosen[2]]
    labels = experts_project.labels.read().set_index("image_id")
    assert {i: labels.loc[i, "label"] for i in answers} == answers
    assert (labels.loc[list(answers), "source"] == "label studio").all()
    states = experts_project.pool.table.set_index("tile_id").state
    assert states[chosen[2]] == REJECTED
    assert label_cost(experts_project).set_index("round").loc[1, "hours"] == pytest.approx(45 / 3600)
    assert labeller.pull(experts_project).labelled == []  # nothing new: nothing done twice

    # The next round trains on the 6 labels it started with and the 2 the experts gave.
    retrained = rounds.run_round(experts_project, labeller, select=False)
    assert retrained.round == 1
    trained_on = pd.read_parquet(experts_project.round_dir(1) / ROUND_CATALOG_FILE)
    ingested = pd.read_parquet(experts_project.catalog_path)
    assert list(trained_on.columns) == list(ingested.columns)  # a catalog file like any other
    assert trained_on.labelled.tolist() == ingested.set_index("image_id").labelled.loc[trained_on.image_id].tolist()
    pool_labels = trained_on[~trained_on.image_id.isin(experts_project.heldout_images().image_id)]
    assert (
        sorted(pool_labels.image_id[pool_labels.label.notna()]) == sorted(experts_project.pool.ids(LABELLED))
        and len(experts_project.pool.ids(LABELLED)) == 8
    )
    splits = pd.read_csv(experts_project.round_dir(1) / CLASSIFIER_DIR / "splits.csv")
    assert splits.split.isin(["train", "val"]).sum() == 8
    assert (experts_project.round_dir(1) / CLASSIFIER_DIR / "best_classifier.pt").exists()


def test_an_image_round_under_al_random_until_selects_at_random_then_by_its_acquisition(
    micrographs, ray_local, tmp_path
):
    config, catalog, _, _ = micrographs
    cold = apply_overrides(config, {"al.random_until": 8}, source="test")
    project = init_image_project(tmp_path / "cold", cold, catalog, start_per_class=2, seed=0)
    first = rounds.run_round(project, OracleLabeller())  # 6 images labelled: under 8
    scores = pd.read_parquet(project.round_dir(0) / "scores.parquet")
    by_random = scores.sort_values(["random", "image_name"], ascending=[False, True]).head(3)
    assert first.selection.tile_id.tolist() == by_random.tile_id.tolist()
    assert (first.selection.acquisition == "random").all()
    second = rounds.run_round(project, OracleLabeller())  # 9 labelled: the acquisition's turn
    assert (second.selection.acquisition == config.classify.acquisition).all()
    assert second.selection[config.classify.acquisition].is_monotonic_decreasing


def test_classify_al_init_and_pull_from_the_command_line(micrographs, labelstudio_server, capsys, monkeypatch):
    _, _, config_path, work = micrographs
    monkeypatch.setenv("LABEL_STUDIO_TOKEN", labelstudio_server["token"])
    assert main(["classify", "al", "init", "-c", str(config_path), "-w", str(work), "--name", "cli"]) == 0
    out = capsys.readouterr().out
    assert "18 micrographs labelled (from the catalog), 0 unlabelled; 6 held out" in out
    assert main(["classify", "al", "pull", "-c", str(config_path), "-w", str(work), "--name", "cli"]) == 0
    assert "labelled 0, updated 0, rejected 0" in capsys.readouterr().out
    assert main(["al", "pull", "-c", str(config_path), "-w", str(work), "--name", "cli"]) != 0


def test_several_experts_give_the_majority_class_and_a_tie_or_no_class_rejects(micrographs, tmp_path):
    from microal.labelstudio.client import AnnotationRecord
    from microal.labelstudio.images import accept_choices

    config, catalog, _, _ = micrographs
    project = init_image_project(tmp_path / "votes", config, catalog, start_per_class=0)
    image_id = project.pool.ids("unlabelled")[0]

    def answers(*classes):
        return [
            AnnotationRecord(1, i, image_id, i, 10.0, False, "t", [choice_result(CLASS_NAME, [c])] if c else [])
            for i, c in enumerate(classes)
        ]

    verdict = accept_choices(project, image_id, answers("network", "lamellae", "network"))
    assert verdict.rejected is None and verdict.agreement == pytest.approx(2 / 3) and verdict.annotators == 3
    assert project.labels.by_image()[image_id] == "network"
    assert accept_choices(project, image_id, answers("network", "lamellae")).rejected.startswith("experts disagree")
    assert accept_choices(project, image_id, answers(None)).rejected == "no class chosen"
    with pytest.raises(MicroalError, match="not in the class table"):
        accept_choices(project, image_id, answers("martensite"))
