import numpy as np
import pytest
import tifffile
from PIL import Image

from microal.config import ClassSpec, IngestConfig
from microal.data.imageio import read_image, read_mask
from microal.errors import InputError

CLASSES = [ClassSpec(name="matrix"), ClassSpec(name="secondary"), ClassSpec(name="tertiary")]
rng = np.random.default_rng(0)


def test_tiff_8_and_16_bit_scale_to_unit(tmp_path):
    image8 = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", image8)
    np.testing.assert_allclose(read_image(tmp_path / "a.tif"), image8 / 255.0, rtol=1e-6)
    image16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "b.tif", image16)
    np.testing.assert_allclose(read_image(tmp_path / "b.tif"), image16 / 65535.0, rtol=1e-6)


def test_tiff_rgb_with_equal_channels_and_first_page(tmp_path):
    gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        tif.write(np.dstack([gray] * 3), photometric="rgb")
        tif.write(np.zeros((8, 8), np.uint8))  # a thumbnail page, as NASA masks have
    np.testing.assert_array_equal(read_image(tmp_path / "pages.tif"), gray / np.float32(255))


def test_png_and_jpeg(tmp_path):
    gray = rng.integers(0, 256, (12, 14), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png").shape == (12, 14)
    Image.fromarray(np.dstack([gray] * 3)).save(tmp_path / "a.jpg", quality=95)
    jpeg = read_image(tmp_path / "a.jpg")
    assert jpeg.shape == (12, 14) and abs(float(jpeg.mean()) - gray.mean() / 255) < 0.05


def test_colour_image_needs_explicit_conversion(tmp_path):
    colour = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "c.png")
    with pytest.raises(InputError, match="c.png: colour image with differing channels"):
        read_image(tmp_path / "c.png")
    assert read_image(tmp_path / "c.png", IngestConfig(color_images="luminance")).shape == (8, 8)


def test_crop_removes_info_bar(tmp_path):
    image = np.zeros((50, 40), np.uint8)
    image[-10:] = 255  # an instrument info bar
    tifffile.imwrite(tmp_path / "bar.tif", image)
    cropped = read_image(tmp_path / "bar.tif", IngestConfig(crop={"bottom": 10}))
    assert cropped.shape == (40, 40) and cropped.max() == 0


def test_index_masks_npy_and_png(tmp_path):
    mask = rng.integers(0, 3, (10, 10)).astype(np.int8)
    np.save(tmp_path / "m.npy", mask)
    Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.npy", CLASSES), mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", CLASSES), mask)


def test_colour_coded_mask_with_catch_all_class_and_16_bit(tmp_path):
    rgba = np.zeros((6, 6, 4), np.uint16)
    rgba[..., :3] = 20000  # a grey copy of the image: matrix
    rgba[0, :, :3] = (0, 0, 65535)  # secondary
    rgba[1, :, :3] = (65535, 0, 0)  # tertiary
    tifffile.imwrite(tmp_path / "m.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    ingest = IngestConfig(
        mask_encoding="color",
        mask_colors=[{"color": (0, 0, 255), "label": "secondary"}, {"color": (255, 0, 0), "label": "tertiary"}],
        unmatched_color_class="matrix",
    )
    mask = read_mask(tmp_path / "m.tif", CLASSES, ingest)
    assert mask[0].tolist() == [1] * 6 and mask[1].tolist() == [2] * 6 and (mask[2:] == 0).all()
