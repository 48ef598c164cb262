"""HTML reports, rendered in headless Chromium: every figure loads, the tables are there, and a
missing step is named rather than silently left out."""

import shutil

import pandas as pd
import torch
from conftest import rendered_report

from microal.inference.evaluate import evaluate_predictions
from microal.inference.predict import predict_catalog
from microal.models.factory import build_model
from microal.models.model_file import save_model_file
from microal.plots import learning_curve
from microal.report.project import project_report
from microal.report.run import collection_fractions, run_report
from microal.workspace import Workspace


def _run(tiled, tmp_path, evaluate=True) -> Workspace:
    """A run folder as `microal train` leaves it (model file, history, curve, splits), predicted
    with a two-member ensemble and evaluated."""
    _, catalog, config = tiled
    ws = Workspace.at(tmp_path / "work")
    ws.root.mkdir(parents=True)
    catalog.to_parquet(ws.catalog, index=False)
    run = ws.run("r")
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_miou": 0.3 + 0.1 * e} for e in (1, 2, 3)]
    files = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        files.append(run / ("best_model.pt" if seed == 0 else "member1.pt"))
        net = build_model(config.model, config.num_classes)
        save_model_file(files[-1], net, config, epoch=3, metrics={"val_miou": 0.6}, history=history)
    learning_curve(pd.DataFrame(history), config.class_names, run / "learning_curve.png")
    splits = ["test" if d == "B" or i % 3 == 2 else "train" for i, d in enumerate(catalog.domain)]
    pd.DataFrame({"image_id": catalog.image_id, "domain": catalog.domain, "split": splits}).to_csv(
        run / "splits.csv", index=False
    )
    predict_catalog(files, catalog, ws.predictions("r"), progress=False, interval_draws=200)
    if evaluate:
        evaluate_predictions(
            ws.predictions("r"), catalog, config, ws.evaluation("r"), source_domain="A", progress=False
        )
    return ws


def test_the_run_report_shows_every_part_in_chromium(tiled, tmp_path, browser):
    ws = _run(tiled, tmp_path)
    path = run_report(ws, "r")
    assert path == ws.report("r")
    report = rendered_report(browser, path)
    # learning curve, IoU by domain, phase fractions, >= 1 worst-image overlay, uncertainty maps
    assert len(report["images"]) >= 5
    assert all(done and width > 100 and height > 100 for done, width, height in report["images"])
    assert report["external"] == 0 and report["missing"] == []
    for section in ("Training", "Segmentation quality by domain and split", "Phase fractions", "Worst images"):
        assert section in report["headings"]
    headers = report["headers"]
    assert any("rdt" in h and "miou" in h for h in headers)  # per domain and split, with RDT
    assert ["domain", "images", "class", "fraction", "low_95", "high_95"] in headers


def test_a_report_names_the_step_that_is_missing(tiled, tmp_path, browser):
    ws = _run(tiled, tmp_path, evaluate=False)
    shutil.rmtree(ws.predictions("r"))
    report = rendered_report(browser, run_report(ws, "r"))
    assert any("microal evaluate --name r" in note for note in report["missing"])
    assert any("microal predict --name r" in note for note in report["missing"])
    assert len(report["images"]) == 1  # the learning curve is still shown


def test_collection_fractions_interval_covers_the_mean_and_narrows_with_agreeing_images():
    agreeing = pd.DataFrame({"domain": "A", "fraction_a": [0.30, 0.31, 0.29, 0.30], "fraction_b": 0.0})
    spread = pd.DataFrame({"domain": "A", "fraction_a": [0.1, 0.5, 0.2, 0.4], "fraction_b": 0.0})
    narrow = collection_fractions(agreeing, ["a", "b"]).set_index("class").loc["a"]
    wide = collection_fractions(spread, ["a", "b"]).set_index("class").loc["a"]
    assert narrow.low_95 <= narrow.fraction <= narrow.high_95
    assert wide.high_95 - wide.low_95 > 5 * (narrow.high_95 - narrow.low_95)


def test_a_folder_that_is_no_project_is_a_clear_error(tmp_path):
    import pytest

    from microal.errors import InputError

    with pytest.raises(InputError, match="neither an active-learning project"):
        project_report(tmp_path, tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()
