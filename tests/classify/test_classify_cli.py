"""The classification track end to end on generated micrographs: ingest with labels, train the
embedding on Ray, the open set, predict and evaluate; and what bad input says."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from microal.cli.main import main


@pytest.fixture(scope="module")
def labelled_set(tmp_path_factory):
    from microal.data.synth_classes import generate_classes

    out = tmp_path_factory.mktemp("cls")
    manifest, config = generate_classes(out, per_class=8, seed=2)
    return manifest, config


def _write(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained(labelled_set, tmp_path_factory, ray_local):
    manifest, config = labelled_set
    config = {**config, "classify": {**config["classify"], "epochs": 4, "crops_per_epoch": 144}}
    work = tmp_path_factory.mktemp("clswork")
    path = _write(config, work / "config.yaml")
    assert main(["ingest", str(manifest), "-c", str(path), "-w", str(work)]) == 0
    assert main(["classify", "train", "-c", str(path), "-w", str(work), "--name", "c"]) == 0
    return work, path


def test_training_writes_a_classifier_with_its_open_set_and_a_descriptor_plane(trained, capsys):
    from microal.classify.classifier_file import load_classifier

    work, _ = trained
    run = work / "runs" / "c"
    classifier = load_classifier(run / "best_classifier.pt")
    assert classifier.classes == ["particles", "lamellae", "network"]
    assert classifier.open_set is not None and classifier.open_set.threshold_from == "validation"
    history = pd.read_csv(run / "history.csv")
    assert list(history.epoch) == [1, 2, 3, 4] and history.val_accuracy.notna().all()
    assert (run / "embedding.png").stat().st_size > 10_000 and (run / "learning_curve.png").exists()
    splits = pd.read_csv(run / "splits.csv")
    for _, group in splits.groupby("sample"):  # a specimen on one side only
        assert group.split.nunique() == 1


def test_evaluate_tells_the_generated_classes_apart(trained, capsys):
    work, _ = trained
    assert main(["classify", "evaluate", "-w", str(work), "--name", "c", "--split", "train", "--crops", "8"]) == 0
    out = capsys.readouterr().out
    assert "balanced accuracy" in out and "predicted" in out
    metrics = pd.read_csv(work / "evaluation" / "c" / "metrics.csv").iloc[0]
    assert metrics.images == 18
    assert metrics.balanced_accuracy > 0.6  # chance is 1/3
    assert (work / "evaluation" / "c" / "confusion.png").exists()


def test_predict_writes_a_distribution_per_image_and_a_decision(trained, capsys):
    work, _ = trained
    assert main(["classify", "predict", "-w", str(work), "--name", "c", "--images", "network001", "--crops", "4"]) == 0
    table = pd.read_csv(work / "predictions" / "c" / "classes.csv")
    assert list(table.image_name) == ["network001.png"]
    shares = table[["p_particles", "p_lamellae", "p_network", "p_none"]].iloc[0]
    assert shares.sum() == pytest.approx(1.0) and table.decision[0] in {"particles", "lamellae", "network", "none"}
    assert main(["classify", "predict", "-w", str(work), "--name", "c", "--images", "nosuch"]) == 2
    assert "not in the catalog: ['nosuch']" in capsys.readouterr().err
    rank = ["classify", "rank", "-w", str(work), "--name", "c", "--split", "val", "--by", "novelty", "--k", "2"]
    assert main([*rank, "--crops", "4"]) == 0
    ranked = pd.read_csv(work / "predictions" / "c" / "next_by_novelty.csv")
    assert list(ranked["rank"]) == [1, 2] and ranked.novelty.is_monotonic_decreasing


def test_a_left_out_class_counts_as_none_and_gets_an_open_set_auroc(trained, labelled_set, capsys):
    from microal.classify.classifier_file import load_classifier
    from microal.classify.evaluate import classification_metrics
    from microal.classify.predict import predict_images
    from microal.data.catalog import read_catalog

    work, _ = trained
    catalog = read_catalog(work / "catalog.parquet")
    classifier = load_classifier(work / "runs" / "c" / "best_classifier.pt")
    images = catalog.groupby("label").head(2)
    table = predict_images(classifier, images, crops=4, progress=False)
    truth = images.label.replace({"lamellae": "martensite"}).reset_index(drop=True)  # a class it never saw
    result = classification_metrics(table, truth, classifier.classes)
    metrics = result["metrics"]
    assert metrics["images"] == 6 and 0 <= metrics["open_set_auroc"] <= 1
    assert result["confusion"].loc["none"].sum() == 2  # the unseen class's images are counted as "none"


def test_a_label_outside_the_class_table_is_named_with_its_image(labelled_set, tmp_path, capsys):
    manifest, config = labelled_set
    table = pd.read_csv(manifest)
    table.loc[3, "label"] = "martensite"
    bad = manifest.parent / "bad.csv"
    table.to_csv(bad, index=False)
    path = _write(config, tmp_path / "config.yaml")
    assert main(["ingest", str(bad), "-c", str(path), "-w", str(tmp_path)]) == 0
    assert main(["classify", "train", "-c", str(path), "-w", str(tmp_path), "--name", "x"]) == 2
    err = capsys.readouterr().err
    assert "particles003.png" in err and "'martensite' is not in the class table" in err


def test_saliency_draws_the_evidence_and_grad_cam_of_an_image(trained, capsys):
    from microal.classify.classifier_file import load_classifier
    from microal.classify.saliency import evidence_map
    from microal.data.catalog import read_catalog
    from microal.data.imageio import read_catalog_image

    work, _ = trained
    assert (
        main(["classify", "saliency", "-w", str(work), "--name", "c", "--images", "lamellae002", "--crops", "24"]) == 0
    )
    figure = work / "saliency" / "c" / "lamellae002.png"
    assert figure.stat().st_size > 10_000 and str(figure) in capsys.readouterr().out
    classifier = load_classifier(work / "runs" / "c" / "best_classifier.pt")
    row = read_catalog(work / "catalog.parquet").iloc[0]
    image = read_catalog_image(row, classifier.config.ingest)
    evidence = evidence_map(classifier, image, float(row.um_per_px), crops=40)
    assert evidence.shape == (4, *image.shape)
    covered = evidence.sum(axis=0) > 0
    assert covered.mean() > 0.9 and np.allclose(evidence.sum(axis=0)[covered], 1.0)  # a distribution per pixel


def test_sites_in_a_panorama_are_found_classified_and_counted_per_square_millimetre(trained, tmp_path, capsys):
    from microal.data.synth_panorama import generate_panorama

    work, _ = trained
    pano = tmp_path / "pano.tif"
    planted = generate_panorama(pano, shape=(1024, 768), um_per_px=0.1, sites=10)
    assert (
        main(["classify", "sites", "-w", str(work), "--name", "c", "--panorama", str(pano), "--um-per-px", "0.1"]) == 0
    )
    out = work / "sites" / "c" / "pano"
    sites = pd.read_csv(out / "sites.csv")
    assert len(sites) == len(planted)  # Otsu threshold, default area limits: the region and the speck are out
    assert set(sites["class"]) <= {"particles", "lamellae", "network", "none"}
    assert sites.probability.between(0, 1).all() and np.allclose(sites.x_um, sites.x * 0.1)
    densities = pd.read_csv(out / "densities.csv")
    assert densities.sites.sum() == len(planted)
    assert np.allclose(densities.per_mm2, densities.sites / (1024 * 768 * 0.01 / 1e6))
    assert (out / "overview.png").stat().st_size > 10_000
    assert "sites:" in capsys.readouterr().out
