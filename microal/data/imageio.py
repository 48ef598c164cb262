"""Reading micrographs and masks from disk, with errors that name the file.

Images come back as 2-D float32 arrays in [0, 1] (8- and 16-bit scaled by their
type's maximum), masks as 2-D uint8 class-index arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from microal.config import ClassSpec, Crop, IngestConfig, MaskColor
from microal.errors import InputError

IMAGE_EXTENSIONS = {".tif", ".tiff", ".png", ".jpg", ".jpeg"}
MASK_EXTENSIONS = {".png", ".npy", ".tif", ".tiff"}


def read_raw(path: Path) -> np.ndarray:
    """Pixels as stored (first page of a multi-page TIFF), or InputError."""
    if not path.exists():
        raise InputError(path, "file does not exist")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix in {".tif", ".tiff"}:
            return tifffile.imread(path, key=0)
        with Image.open(path) as img:
            img.load()
            if img.mode == "P":
                return np.asarray(img)  # palette index = class index for masks
            if img.mode in {"I;16", "I;16B", "I;16L", "I"}:
                return np.asarray(img).astype(np.uint16 if img.mode != "I" else np.int32)
            return np.asarray(img)
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, tifffile.TiffFileError) as error:
        raise InputError(path, f"cannot read: corrupt, truncated or not an image ({error})") from None


def _crop(array: np.ndarray, crop: Crop, path: Path) -> np.ndarray:
    h, w = array.shape[:2]
    if crop.top + crop.bottom >= h or crop.left + crop.right >= w:
        raise InputError(path, f"crop {crop.model_dump()} removes the whole {h}x{w} image")
    return array[crop.top : h - crop.bottom, crop.left : w - crop.right]


def _to_gray(array: np.ndarray, path: Path, color_images: str) -> np.ndarray:
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar TIFF (C, H, W)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(path, f"unsupported image shape {array.shape}; expected H x W or H x W x 3/4")
    rgb = array[..., :3] if array.shape[2] >= 3 else array[..., :1]
    if rgb.shape[2] == 1 or (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        return rgb[..., 0]
    if color_images == "luminance":
        weights = np.array([0.299, 0.587, 0.114])
        return (rgb.astype(np.float64) @ weights).astype(array.dtype)
    raise InputError(
        path, "colour image with differing channels; set ingest.color_images: luminance to convert it to grey"
    )


def scale_to_unit(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(array.astype(np.float32), 0.0, 1.0)
    raise InputError(path, f"unsupported pixel type {array.dtype}; expected 8- or 16-bit")


def read_image(path: str | Path, ingest: IngestConfig | None = None, crop: Crop | None = None) -> np.ndarray:
    """A micrograph as a 2-D float32 array in [0, 1], cut by `crop` (default: the config's) first,
    so that an info band's colours do not count as a colour micrograph."""
    ingest = ingest or IngestConfig()
    path = Path(path)
    raw = read_raw(path)
    if raw.size == 0:
        raise InputError(path, "image has no pixels")
    cropped = _crop(raw, ingest.crop if crop is None else crop, path)
    return scale_to_unit(_to_gray(cropped, path, ingest.color_images), path)


def catalog_crop(row, ingest: IngestConfig) -> Crop:
    """The crop ingest decided for a catalog row's image (older catalogs: the config's)."""
    if "crop_top" not in row or row.crop_top is None or row.crop_top != row.crop_top:  # absent or NaN
        return ingest.crop
    return Crop(top=int(row.crop_top), bottom=int(row.crop_bottom), left=int(row.crop_left), right=int(row.crop_right))


def catalog_mask_crop(row, ingest: IngestConfig) -> Crop:
    """The crop for a catalog row's mask: the image's when the mask had the uncropped size."""
    if "mask_cropped" not in row or row.mask_cropped is None or row.mask_cropped != row.mask_cropped:
        return ingest.crop
    return catalog_crop(row, ingest) if bool(row.mask_cropped) else Crop()


def read_catalog_image(row, ingest: IngestConfig) -> np.ndarray:
    """A catalog row's micrograph, cut as ingest decided."""
    return read_image(row.image_path, ingest, crop=catalog_crop(row, ingest))


def read_catalog_mask(row, classes: list[ClassSpec], ingest: IngestConfig) -> np.ndarray:
    """A catalog row's expert mask, cut as ingest decided."""
    return read_mask(row.mask_path, classes, ingest, crop=catalog_mask_crop(row, ingest))


def detect_info_band(path: str | Path, max_fraction: float = 0.35) -> int:
    """Height of an instrument's info band at the bottom of an image (0: none found).

    A band row differs from the micrograph: it has colour where the micrograph is grey, or most
    of its pixels share one value (a flat background behind text), or its mean lies far outside
    the spread of the upper half's row means. The band is the run of such rows from the bottom
    (single micrograph-like rows inside it, e.g. through text, are bridged), at most
    `max_fraction` of the height and at least 3 rows.
    """
    path = Path(path)
    raw = read_raw(path)
    if raw.ndim == 3 and raw.shape[0] in (3, 4) and raw.shape[2] not in (3, 4):
        raw = np.moveaxis(raw, 0, -1)
    rgb = raw[..., :3].astype(np.float64) if raw.ndim == 3 else raw.astype(np.float64)[..., None]
    gray = rgb.mean(-1)
    h = gray.shape[0]
    colour_pixels = np.ptp(rgb, axis=-1) > 0.04 * max(float(rgb.max()), 1.0)
    coloured = colour_pixels.mean(1) > 0.02
    if colour_pixels[: h // 2].mean() > 0.02:
        coloured[:] = False  # a colour micrograph: colour says nothing about the band
    modal_share = np.array([np.unique(r, return_counts=True)[1].max() / r.size for r in gray])
    typical_share = np.median(modal_share[: h // 2])
    flat = modal_share > max(0.5, 3 * typical_share)
    means = gray.mean(1)
    centre = np.median(means[: h // 2])
    spread = 1.4826 * np.median(np.abs(means[: h // 2] - centre)) + 1e-3 * max(float(gray.max()), 1.0)
    outlying = np.abs(means - centre) > 6 * spread
    band_like = coloured | flat | outlying
    height, gap = 0, 0
    for row in range(h - 1, max(-1, h - 1 - int(max_fraction * h)), -1):
        if band_like[row]:
            height, gap = h - row, 0
        else:
            gap += 1
            if gap > 2:
                break
    return height if height >= 3 else 0


def _decode_color_mask(raw: np.ndarray, path: Path, classes: list[ClassSpec], ingest: IngestConfig) -> np.ndarray:
    if raw.ndim != 3 or raw.shape[2] < 3:
        raise InputError(path, f"colour-coded mask expected (H x W x 3/4), got shape {raw.shape}")
    rgb = raw[..., :3]
    if rgb.dtype == np.uint16:
        rgb = (rgb >> 8).astype(np.uint8)  # 65535 -> 255, the same colours as 8-bit masks
    class_names = [c.name for c in classes]
    mask = np.full(rgb.shape[:2], 255, dtype=np.uint8)
    # Without explicit mask_colors, the class table's display colours are the code.
    colors = ingest.mask_colors or [MaskColor(color=c.color, label=c.name) for c in classes if c.color is not None]
    for entry in colors:
        hit = np.all(rgb == np.array(entry.color, dtype=rgb.dtype), axis=-1)
        mask[hit] = class_names.index(entry.label)
    unmatched = mask == 255
    if unmatched.any():
        if ingest.unmatched_color_class is None:
            examples = {tuple(int(c) for c in px) for px in rgb[unmatched][:1000]}
            raise InputError(
                path,
                f"mask values outside the class table: {unmatched.sum()} pixels have colours not in "
                f"ingest.mask_colors, e.g. {sorted(examples)[:5]}",
            )
        mask[unmatched] = class_names.index(ingest.unmatched_color_class)
    return mask


def read_mask(
    path: str | Path, classes: list[ClassSpec], ingest: IngestConfig | None = None, crop: Crop | None = None
) -> np.ndarray:
    """A mask as a 2-D uint8 array of class indices, cut by `crop` (default: the config's) first;
    values outside the class table are an error."""
    ingest = ingest or IngestConfig()
    class_names = [c.name for c in classes]
    path = Path(path)
    raw = _crop(read_raw(path), ingest.crop if crop is None else crop, path)
    if ingest.mask_encoding == "color":
        mask = _decode_color_mask(raw, path, classes, ingest)
    else:
        if raw.ndim == 3 and raw.shape[2] in (3, 4):
            rgb = raw[..., :3]
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise InputError(
                    path, "mask has colour channels; set ingest.mask_encoding: color and ingest.mask_colors"
                )
            raw = rgb[..., 0]
        if raw.ndim != 2:
            raise InputError(path, f"mask must be a 2-D array of class indices, got shape {raw.shape}")
        if not np.issubdtype(raw.dtype, np.integer):
            if not np.all(np.equal(np.mod(raw, 1), 0)):
                raise InputError(path, f"mask has non-integer values ({raw.dtype})")
        values = np.unique(raw)
        bad = values[(values < 0) | (values >= len(class_names))]
        if bad.size:
            raise InputError(
                path,
                f"mask values outside the class table: {bad.tolist()[:10]} "
                f"(valid: 0..{len(class_names) - 1} for {class_names})",
            )
        mask = raw.astype(np.uint8)
    return mask
