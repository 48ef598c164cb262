"""Full-size prediction and evaluation, with a model file made by the test itself."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from microal.errors import InputError, MicroalError
from microal.inference.evaluate import evaluate_predictions
from microal.inference.predict import predict_catalog, predict_probabilities, window_probabilities
from microal.models.factory import build_model
from microal.models.model_file import load_model, save_model_file


@pytest.fixture
def model_file(tiled, tmp_path):
    _, _, config = tiled
    torch.manual_seed(0)
    net = build_model(config.model, config.num_classes)
    path = tmp_path / "model.pt"
    save_model_file(path, net, config, epoch=1, metrics={"val_miou": 0.5}, history=[])
    return path


def test_predictions_are_full_size_with_phase_fractions(tiled, model_file, tmp_path):
    ws, catalog, config = tiled
    table = predict_catalog(model_file, catalog, tmp_path / "pred", progress=False)
    assert len(table) == len(catalog)
    for _, row in table.merge(catalog, on=["image_id", "image_name", "domain"]).iterrows():
        mask = np.asarray(Image.open(tmp_path / "pred" / row.mask_file))
        assert mask.shape == (row.height, row.width)
        assert mask.max() < config.num_classes
        fractions = [row[f"fraction_{n}"] for n in config.class_names]
        assert sum(fractions) == pytest.approx(1.0)
        assert fractions == pytest.approx(np.bincount(mask.ravel(), minlength=3) / mask.size)


def test_probabilities_are_distributions_at_image_size(tiled, model_file):
    _, _, _ = tiled
    model = load_model(model_file)
    probs = predict_probabilities(model, np.random.default_rng(0).random((70, 90)).astype(np.float32), 0.1)
    assert probs.shape == (3, 70, 90)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)


def test_test_time_views_are_mapped_back_so_predictions_turn_with_the_image(model_file):
    """An untrained network does not commute with turns and mirrors; averaged over a group of
    views it does, exactly, but only if each view's output is mapped back the right way."""
    model = load_model(model_file)
    batch = torch.from_numpy(np.random.default_rng(1).random((2, 1, 64, 64)).astype(np.float32))

    def turned(x):
        return torch.rot90(x, 1, dims=(-2, -1))

    def mirrored(x):
        return x.flip(-2)

    for tta, transforms, broken in [
        ("none", [], [turned, mirrored]),
        ("flips", [mirrored], [turned]),
        ("dihedral", [turned, mirrored], []),
    ]:
        probs = window_probabilities(model, batch, tta)
        np.testing.assert_allclose(probs.sum(1).numpy(), 1.0, atol=1e-4)
        for transform in transforms:
            np.testing.assert_allclose(
                window_probabilities(model, transform(batch), tta).numpy(), transform(probs).numpy(), atol=1e-4
            )
        for transform in broken:
            assert (window_probabilities(model, transform(batch), tta) - transform(probs)).abs().max() > 1e-3


def test_a_prediction_records_its_test_time_augmentation(tiled, model_file, tmp_path):
    _, catalog, _ = tiled
    predict_catalog(model_file, catalog.head(1), tmp_path / "pred", progress=False, tta="flips")
    assert json.loads((tmp_path / "pred" / "prediction_info.json").read_text())["tta"] == ["flips"]
    with pytest.raises(MicroalError, match="unknown test-time augmentation 'spin'"):
        predict_catalog(model_file, catalog.head(1), tmp_path / "other", progress=False, tta="spin")


def test_model_file_errors(tmp_path):
    with pytest.raises(InputError, match="nope.pt: model file does not exist"):
        load_model(tmp_path / "nope.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="other.pt: not a microal model file"):
        load_model(tmp_path / "other.pt")


def test_evaluation_scores_a_perfect_and_a_wrong_prediction(tiled, tmp_path):
    """Predictions written as the expert masks (domain A) and as all-matrix (domain B)."""
    ws, catalog, config = tiled
    from microal.data.imageio import read_mask
    from microal.inference.predict import PREDICTIONS_TABLE, write_mask_png

    pred_dir = tmp_path / "pred"
    rows = []
    for _, row in catalog.iterrows():
        truth = read_mask(row.mask_path, config.classes)
        pred = truth if row.domain == "A" else np.zeros_like(truth)
        write_mask_png(pred, pred_dir / f"{row.image_id}.png")
        rows.append({"image_id": row.image_id, "mask_file": f"{row.image_id}.png"})
    pd.DataFrame(rows).to_csv(pred_dir / PREDICTIONS_TABLE, index=False)

    result = evaluate_predictions(pred_dir, catalog, config, tmp_path / "eval", source_domain="A", progress=False)
    per_domain = result.per_domain.set_index("domain")
    assert per_domain.loc["A", "miou"] == pytest.approx(1.0)
    assert per_domain.loc["A", "mean_abs_fraction_error"] == pytest.approx(0.0)
    assert per_domain.loc["B", "iou_laths"] == pytest.approx(0.0)
    assert per_domain.loc["B", "rdt"] == pytest.approx(per_domain.loc["B", "miou"] - 1.0)
    b_images = result.per_image[result.per_image.domain == "B"]
    assert (b_images.fraction_error_matrix > 0).all()  # all-matrix overestimates the matrix
    assert len(list((tmp_path / "eval" / "overlays").glob("*.png"))) == len(catalog)
    assert (tmp_path / "eval" / "per_domain.csv").exists()


def test_an_image_id_of_digits_and_one_e_is_evaluated_as_text(tiled, model_file, tmp_path):
    """Content ids are hex: one of digits and a single "e" reads back from a CSV as a float (here
    inf), so predictions of that image alone could not be matched with the catalog's text ids."""
    _, catalog, config = tiled
    one = catalog[catalog.labelled.astype(bool)].head(1).assign(image_id="9136e8843964")
    predict_catalog(model_file, one, tmp_path / "pred", progress=False)
    result = evaluate_predictions(tmp_path / "pred", one, config, tmp_path / "eval", overlays=False, progress=False)
    assert result.per_image.image_id.tolist() == ["9136e8843964"]


def test_an_ensemble_predicts_the_mean_with_uncertainty_maps_and_fraction_intervals(tiled, model_file, tmp_path):
    ws, catalog, config = tiled
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    save_model_file(other, build_model(config.model, config.num_classes), config, epoch=1, metrics={}, history=[])
    one = catalog.iloc[:2]
    table = predict_catalog([model_file, other], one, tmp_path / "ens", progress=False)
    members = [load_model(model_file), load_model(other)]
    for (_, row), (_, image_row) in zip(table.iterrows(), one.iterrows()):
        from microal.data.imageio import read_catalog_image

        image = read_catalog_image(image_row, config.ingest)
        mean = np.mean([predict_probabilities(m, image, image_row.um_per_px) for m in members], axis=0)
        mask = np.asarray(Image.open(tmp_path / "ens" / row.mask_file))
        np.testing.assert_array_equal(mask, mean.argmax(0))
        uncertainty = np.asarray(Image.open(tmp_path / "ens" / row.uncertainty_file))
        assert uncertainty.shape == mask.shape and 0 < row.mean_uncertainty <= 1
        for name in config.class_names:
            assert row[f"fraction_{name}_low"] <= row[f"fraction_{name}"] <= row[f"fraction_{name}_high"]
        assert any(row[f"fraction_{n}_high"] - row[f"fraction_{n}_low"] > 0 for n in config.class_names)
    info = json.loads((tmp_path / "ens" / "prediction_info.json").read_text())
    assert len(info["members"]) == 2


def test_fraction_intervals_grow_with_spatial_spread_and_member_disagreement():
    from microal.inference.predict import fraction_interval

    rng = np.random.default_rng(0)
    uniform = np.zeros((64, 64), dtype=np.uint8)
    low, high = fraction_interval([uniform], 2, 16, 500, rng)
    assert low[0] == high[0] == 1.0  # one phase everywhere: nothing to be unsure about
    patchy = (rng.random((4, 4)) < 0.5).repeat(16, 0).repeat(16, 1).astype(np.uint8)  # half the blocks phase 1
    low, high = fraction_interval([patchy], 2, 16, 2000, rng)
    true = patchy.mean()
    assert low[1] < true < high[1] and high[1] - low[1] > 0.2
    one_model = high[1] - low[1]
    disagreeing = np.where(patchy == 1, 1, (rng.random((64, 64)) < 0.6)).astype(np.uint8)  # more phase 1
    low, high = fraction_interval([patchy, disagreeing], 2, 16, 2000, rng)
    assert high[1] - low[1] > one_model


def test_images_are_selected_by_split_name_or_missing_mask(tiled, model_file, tmp_path):
    from microal.errors import MicroalError
    from microal.inference.predict import select_images

    _, catalog, _ = tiled
    pd.DataFrame({"image_id": catalog.image_id, "split": ["train"] * (len(catalog) - 2) + ["test"] * 2}).to_csv(
        tmp_path / "splits.csv", index=False
    )
    assert select_images(catalog, model_file, split="test").image_id.tolist() == catalog.image_id.tolist()[-2:]
    assert select_images(catalog, model_file, split="unlabelled").empty  # every synthetic image has a mask
    name = catalog.image_name.iloc[0]
    assert select_images(catalog, model_file, images=[name.rsplit(".", 1)[0]]).image_name.tolist() == [name]
    with pytest.raises(MicroalError, match="not in the catalog: \\['nope.tif'\\]"):
        select_images(catalog, model_file, images=["nope.tif"])
    with pytest.raises(InputError, match="splits.csv: --split val"):
        select_images(catalog, tmp_path / "elsewhere" / "model.pt", split="val")
