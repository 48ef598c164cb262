"""The classification loop without Ray (LocalSession): it learns, checkpoints, and resumes where
it stopped, ends on time under a budget; and the open set it leaves in the classifier file."""

import time

import numpy as np
import pytest
import torch

from microal.classify.classifier_file import CLASSIFIER_FILE, load_classifier, read_classifier_file
from microal.classify.train import (
    ClassifyJob,
    build_data,
    classify_worker,
    nearest_centroid_accuracy,
    reference_rows,
)
from microal.config import ClassifyConfig, apply_overrides, parse_config
from microal.data.catalog import ingest
from microal.training.local import LocalSession


@pytest.fixture(scope="module")
def catalog_and_config(tmp_path_factory):
    from microal.data.synth_classes import generate_classes

    out = tmp_path_factory.mktemp("cls-local")
    manifest, config = generate_classes(out, per_class=6, seed=4)
    config = parse_config(config)
    ingest(manifest, config, out / "catalog.parquet", progress=False)
    return out / "catalog.parquet", config


def test_nearest_centroid_accuracy_is_balanced_over_the_probe_classes():
    reference = np.array([[0.0, 0], [0, 0.2], [5, 5], [5, 5.2]])
    labels = np.array([0, 0, 1, 1])
    probe = np.array([[0.1, 0], [0.2, 0.1], [0.1, 0.2], [4.8, 5]])  # three of class 0, one of class 1
    assert nearest_centroid_accuracy(reference, labels, probe, np.array([0, 0, 0, 1])) == 1.0
    assert nearest_centroid_accuracy(reference, labels, probe, np.array([0, 0, 1, 1])) == 0.75


def test_validation_centroids_come_from_at_most_the_capped_images_of_each_class():
    labels = np.array([0] * 50 + [1] * 3 + [2] * 10)
    rows = reference_rows(labels, per_class=8, seed=5)
    assert np.all(np.diff(rows) > 0)
    assert np.bincount(labels[rows]).tolist() == [8, 3, 8]  # a small class keeps every image
    assert np.array_equal(rows, reference_rows(labels, per_class=8, seed=5))
    assert not np.array_equal(rows, reference_rows(labels, per_class=8, seed=6))


def test_a_stopped_run_resumes_from_its_checkpoint_and_ends_as_planned(catalog_and_config, tmp_path):
    catalog, config = catalog_and_config
    config = apply_overrides(config, {"classify.epochs": 3, "classify.crops_per_epoch": 48})
    data, splits = build_data(config, catalog)
    assert set(splits.split) >= {"train", "val"}
    first = LocalSession(cpus=2, checkpoint_root=tmp_path / "a")
    classify_worker(ClassifyJob(apply_overrides(config, {"classify.epochs": 2}), data), first)
    assert first.checkpointed_epochs == [1, 2] or first.checkpointed_epochs[-1] == 2
    blob = read_classifier_file(first.reports[-1][1] / CLASSIFIER_FILE)
    assert blob["classes"] == ["particles", "lamellae", "network"] and blob["open_set"] is None
    resumed = LocalSession(cpus=2, checkpoint_root=tmp_path / "b", resume_from=first.reports[-1][1])
    classify_worker(ClassifyJob(config, data), resumed)
    epochs = [int(m["epoch"]) for m, _ in resumed.reports]
    assert epochs == [3]  # only the missing epoch ran
    final = read_classifier_file(resumed.reports[-1][1] / CLASSIFIER_FILE)
    assert [int(h["epoch"]) for h in final["history"]] == [1, 2, 3]
    assert final["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # the cosine ended at the planned last epoch
    loaded = load_classifier(resumed.reports[-1][1] / CLASSIFIER_FILE)
    descriptors = loaded.describe(torch.zeros(2, 1, 64, 64), torch.zeros(2, 1))
    assert descriptors.shape == (2, config.classify.embedding_dim)


def test_a_time_budget_ends_the_run_on_time_with_its_schedule_finished(catalog_and_config, tmp_path):
    catalog, config = catalog_and_config
    config = apply_overrides(
        config, {"classify.epochs": 10_000, "classify.budget": "20s", "classify.crops_per_epoch": 48}
    )
    data, _ = build_data(config, catalog)
    job = ClassifyJob(config, data)
    session = LocalSession(cpus=2, checkpoint_root=tmp_path)
    classify_worker(job, session)
    finished = time.time()
    metrics = [m for m, _ in session.reports]
    assert len(metrics) >= 2
    assert finished - job.started_at <= 20  # the deadline leaves 10 s for the open set and export
    assert [int(m["epoch"]) for m in metrics] == list(range(1, len(metrics) + 1))
    assert metrics[-1]["epochs_planned"] == len(metrics)  # the last epoch was planned as the last
    assert metrics[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # the cosine ended with the run


def test_a_classification_budget_is_a_duration_or_a_number_of_epochs():
    from microal.errors import ConfigError

    assert ClassifyConfig(budget="30 epochs").epochs == 30 and ClassifyConfig(budget="30").budget is None
    assert ClassifyConfig(budget="6.5min").budget_seconds == pytest.approx(390.0)
    with pytest.raises((ConfigError, ValueError), match="not a duration"):
        ClassifyConfig(budget="soon")
