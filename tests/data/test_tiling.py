import numpy as np
import pytest
import torch

from microal.config import TilingConfig
from microal.data.tiling import (
    IGNORE_INDEX,
    TileGrid,
    class_pixel_counts,
    crop_centre,
    resample_image,
    resample_mask,
    scale_factor,
)

rng = np.random.default_rng(2)


@pytest.mark.parametrize("shape", [(100, 130), (64, 64), (37, 200), (5, 7)])
def test_stitching_tile_centres_reproduces_the_image_exactly(shape):
    image = rng.random(shape).astype(np.float32)
    grid = TileGrid(*shape, tile_size=32, margin=16)
    padded = grid.pad_image(image)
    assert padded.shape == grid.padded_shape
    centres = {(r, c): grid.centre(padded[grid.window_slice(y, x)]) for r, c, y, x in grid.positions()}
    np.testing.assert_array_equal(grid.stitch(centres), image)


def test_padding_is_a_mirror_and_masks_are_ignored_outside():
    image = np.arange(20, dtype=np.float32).reshape(4, 5)
    grid = TileGrid(4, 5, tile_size=4, margin=2)
    padded = grid.pad_image(image)
    np.testing.assert_array_equal(padded[2, 0:2], image[0, 2:0:-1])  # reflected left edge
    mask = grid.pad_mask(np.zeros((4, 5), np.uint8))
    assert (mask[:2] == IGNORE_INDEX).all() and (mask[2:6, 2:7] == 0).all()


def test_tiled_prediction_has_no_seams():
    """A network whose receptive field fits in the margin gives the same result tiled as whole."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 5, padding=2)
    ).eval()  # receptive field 9 px: 4 px of context on each side <= margin
    image = rng.random((90, 75)).astype(np.float32)
    grid = TileGrid(90, 75, tile_size=32, margin=8)
    padded = grid.pad_image(image)
    with torch.no_grad():
        whole = net(torch.from_numpy(padded)[None, None])[0].numpy()
        reference = whole[:, 8 : 8 + 90, 8 : 8 + 75]
        centres = {}
        for r, c, y, x in grid.positions():
            window = torch.from_numpy(np.ascontiguousarray(padded[grid.window_slice(y, x)]))[None, None]
            centres[(r, c)] = grid.centre(net(window)[0].numpy())
    np.testing.assert_allclose(grid.stitch(centres), reference, atol=1e-5)


def test_physical_scale():
    tiling = TilingConfig(target_um_per_px=0.2, tile_size=32, margin=16)
    assert scale_factor(0.1, tiling) == pytest.approx(0.5)
    assert scale_factor(None, tiling) is None
    assert scale_factor(None, TilingConfig(scale=0.5, tile_size=32, margin=16)) == 0.5
    image = rng.random((100, 60)).astype(np.float32)
    assert resample_image(image, 0.5).shape == (50, 30)
    mask = rng.integers(0, 4, (100, 60)).astype(np.uint8)
    small = resample_mask(mask, 0.5)
    assert small.shape == (50, 30) and set(np.unique(small)) <= set(np.unique(mask))


@pytest.mark.parametrize("shape", [(100, 130), (37, 200), (5, 7)])
def test_centre_slices_and_inside_mask_agree_with_padding(shape):
    grid = TileGrid(*shape, tile_size=32, margin=16)
    inside = grid.inside_mask()
    # The inside mask is exactly where the padded mask is not ignored.
    np.testing.assert_array_equal(inside, grid.pad_mask(np.zeros(shape, np.uint8)) != IGNORE_INDEX)
    marked = grid.pad_image(np.arange(shape[0] * shape[1], dtype=np.float32).reshape(shape))
    for _, _, y, x in grid.positions():
        window = marked[grid.window_slice(y, x)]
        # A window's centre is the tile's centre slices of the padded array ...
        np.testing.assert_array_equal(grid.centre(window), marked[grid.centre_slices(y, x)])
        # ... and the inside mask over it is what centre_inside gives without the whole array.
        np.testing.assert_array_equal(grid.centre_inside(y, x), inside[grid.centre_slices(y, x)])


def test_crop_centre_works_on_arrays_and_tensors():
    array = np.arange(2 * 8 * 8).reshape(2, 8, 8)
    np.testing.assert_array_equal(crop_centre(array, 2), array[:, 2:6, 2:6])
    np.testing.assert_array_equal(crop_centre(torch.from_numpy(array), 2).numpy(), array[:, 2:6, 2:6])
    assert crop_centre(array, 0) is array


def test_class_pixel_counts_leave_out_ignored_pixels_and_keep_absent_classes():
    mask = np.array([[0, 0, 2], [IGNORE_INDEX, 2, 2]], dtype=np.uint8)
    np.testing.assert_array_equal(class_pixel_counts(mask, 4), [2, 0, 3, 0])
    assert class_pixel_counts(np.full((3, 3), IGNORE_INDEX, np.uint8), 2).tolist() == [0, 0]
