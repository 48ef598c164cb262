"""Crops at many length scales: physical sizes within range, clipped to the image, density exact."""

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from microal.config import ClassifyConfig, IngestConfig
from microal.data.crops import BalancedCrops, FixedCrops, ImageStore, crop_range, cut_crop, log_density
from microal.errors import InputError


def test_the_configured_micrometre_range_is_converted_and_clipped_per_image():
    settings = ClassifyConfig(crop_size=100, crop_um=(2.0, 20.0), max_upsampling=4)
    fine = crop_range(400, 600, 0.05, settings)  # 2-20 µm = 40-400 px; the image holds 400
    assert (fine.min_px, fine.max_px) == pytest.approx((40.0, 400.0))
    coarse = crop_range(400, 600, 1.0, settings)  # 2-20 px: never below 100/4 = 25 px
    assert (coarse.min_px, coarse.max_px) == pytest.approx((25.0, 25.0))
    default = crop_range(400, 600, 0.05, ClassifyConfig(min_crop_fraction=0.25))
    assert (default.min_px, default.max_px) == pytest.approx((100.0, 400.0))
    rng = np.random.default_rng(0)
    sides = [fine.draw(rng) for _ in range(500)]
    assert 40 <= min(sides) and max(sides) <= 400
    assert np.median(np.log(sides)) == pytest.approx(np.log(math.sqrt(40 * 400)), abs=0.2)  # log-uniform


def test_a_crop_is_resampled_to_the_crop_size_and_its_density_is_pixels_per_micrometre():
    image = np.arange(100 * 120, dtype=np.float32).reshape(100, 120)
    crop = cut_crop(image, side=50, centre_y=0, centre_x=119, crop_size=25)  # pushed inside the image
    assert crop.shape == (25, 25)
    assert crop[0, -1] == pytest.approx(image[:50, 70:].reshape(25, 2, 25, 2).mean(axis=(1, 3))[0, -1])
    # 50 stored pixels of 0.2 µm = 10 µm shown on 25 pixels: 2.5 px/µm
    assert log_density(50, 0.2, 25) == pytest.approx(math.log10(2.5))


def _store(tmp_path, um_per_px=(0.1, 0.1, 0.2), labels=("a", "b", "a")):
    rows = []
    for i, (size, label) in enumerate(zip(um_per_px, labels)):
        path = tmp_path / f"im{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (90, 110), dtype=np.uint8)).save(path)
        rows.append(
            {
                "image_id": f"{i:016x}",
                "image_name": path.name,
                "image_path": str(path),
                "um_per_px": size,
                "label": label,
                "crop_top": 0,
                "crop_bottom": 0,
                "crop_left": 0,
                "crop_right": 0,
            }
        )
    return ImageStore(pd.DataFrame(rows), IngestConfig())


def test_balanced_crops_cycle_through_the_classes_and_repeat_for_the_same_key(tmp_path):
    store = _store(tmp_path)
    settings = ClassifyConfig(crop_size=32, crops_per_epoch=8)
    data = BalancedCrops(store, [0, 1, 0], settings, augment=None, seed=3)
    labels = [int(data[(0, i)][2]) for i in range(8)]
    assert labels == [0, 1] * 4
    first, again, other_epoch = data[(0, 5)], data[(0, 5)], data[(1, 5)]
    assert first[0].shape == (1, 32, 32)
    assert np.array_equal(first[0], again[0]) and not np.array_equal(first[0], other_epoch[0])
    # the density given is the crop's own: at most 32 px over the whole 90-px side of a 0.1 µm image
    assert float(first[1]) >= math.log10(32 / (90 * 0.2)) - 1e-6


def test_fixed_crops_are_the_same_for_an_image_in_any_company(tmp_path):
    store = _store(tmp_path)
    settings = ClassifyConfig(crop_size=32)
    alone = ImageStore(store.rows.iloc[[2]], IngestConfig())
    together, single = FixedCrops(store, 3, settings, seed=1), FixedCrops(alone, 3, settings, seed=1)
    assert len(together) == 9 and int(together[7][2]) == 2
    assert np.array_equal(together[7][0], single[1][0])


def test_a_subset_store_shares_its_images_and_crops_them_as_the_whole_store_does(tmp_path):
    store = _store(tmp_path)
    part = store.subset([2, 0])
    assert list(part.rows.image_id) == [store.rows.image_id[2], store.rows.image_id[0]]
    assert part.arrays[0] is store.arrays[2] and part.stats[1] == store.stats[0]
    settings = ClassifyConfig(crop_size=32)
    assert np.array_equal(FixedCrops(part, 3, settings, seed=1)[1][0], FixedCrops(store, 3, settings, seed=1)[7][0])


def test_an_image_without_a_pixel_size_is_named(tmp_path):
    with pytest.raises(InputError, match=r"im1\.png.*no pixel size"):
        _store(tmp_path, um_per_px=(0.1, float("nan"), 0.2))
