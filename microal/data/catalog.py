"""The catalog: one row per micrograph, with its mask, pixel size and metadata.

Ids are content hashes of the image file, so re-ingesting the same files gives the
same catalog and leaves the file on disk untouched. Every image and mask is read
and checked before anything is written: a bad file stops the whole ingest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from microal.config import CROP_FIELDS, Crop, IngestConfig, ProjectConfig
from microal.data.imageio import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    detect_info_band,
    read_image,
    read_mask,
    read_raw,
)
from microal.errors import InputError
from microal.files import atomic_path

CATALOG_COLUMNS = [
    "image_id",
    "image_name",
    "image_path",
    "mask_path",
    "labelled",
    "height",
    "width",
    "um_per_px",
    "magnification",
    "detector",
    "etching",
    "sample",
    "domain",
    "crop_top",  # the pixels cut off each edge of the stored image before anything else
    "crop_bottom",
    "crop_left",
    "crop_right",
    "mask_cropped",  # whether the mask was cut too (it had the uncropped image's size)
    "label",  # the image's class (microal classify), or empty
]
ID_LENGTH = 16


@dataclass
class _Entry:
    image: Path
    mask: Path | None
    fields: dict[str, object] = field(default_factory=dict)  # microal fields from a manifest
    extra: dict[str, object] = field(default_factory=dict)  # free metadata columns


def content_id(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise InputError(path, f"cannot read ({error.strerror})") from None
    return digest.hexdigest()[:ID_LENGTH]


def parse_magnification(value: object) -> float | None:
    """'1178X', '982x', 5000 -> float; blank -> None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip().rstrip("xX").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _find_mask(folder: Path, image: Path, ingest: IngestConfig) -> Path | None:
    mask_folder = folder / ingest.mask_dir if ingest.mask_dir else image.parent
    for ext in sorted(MASK_EXTENSIONS):
        candidate = mask_folder / f"{image.stem}{ingest.mask_suffix}{ext}"
        if candidate.exists() and candidate != image:
            return candidate
    return None


def _entries_from_folder(folder: Path, ingest: IngestConfig) -> list[_Entry]:
    pattern = "**/*" if ingest.recursive else "*"
    mask_folder = (folder / ingest.mask_dir).resolve() if ingest.mask_dir else None
    images = []
    for path in sorted(folder.glob(pattern)):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        if mask_folder is not None and mask_folder in path.resolve().parents:
            continue
        if ingest.mask_suffix and path.stem.endswith(ingest.mask_suffix):
            continue  # a mask sitting beside its image
        images.append(path)
    return [_Entry(image=p, mask=_find_mask(folder, p, ingest)) for p in images]


def _entries_from_manifest(manifest: Path, ingest: IngestConfig) -> list[_Entry]:
    try:
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(manifest, f"cannot read CSV manifest ({error})") from None
    # Per-image crop columns and a `label` column are taken under their own names unless the config maps them.
    own = [f for f in (*CROP_FIELDS, "label") if f in table.columns]
    mapping = {"image": "image", "mask": "mask", **{f: f for f in own}}
    mapping.update(ingest.columns)
    if mapping["image"] not in table.columns:
        raise InputError(manifest, f"manifest has no image column {mapping['image']!r}; columns: {list(table.columns)}")
    for fieldname, column in mapping.items():
        if column not in table.columns and fieldname != "mask":
            raise InputError(manifest, f"ingest.columns.{fieldname}: manifest has no column {column!r}")
    used = set(mapping.values())
    base = manifest.parent
    entries = []
    for _, row in table.iterrows():
        image = base / row[mapping["image"]]
        mask_text = row.get(mapping["mask"], "") if mapping["mask"] in table.columns else ""
        fields = {f: row[c] for f, c in mapping.items() if f not in ("image", "mask") and c in table.columns}
        extra = {c: row[c] for c in table.columns if c not in used}
        entries.append(_Entry(image=image, mask=base / mask_text if mask_text else None, fields=fields, extra=extra))
    return entries


def _pixel_size(entry: _Entry, ingest: IngestConfig) -> tuple[float | None, float | None]:
    magnification = parse_magnification(entry.fields.get("magnification"))
    given = entry.fields.get("um_per_px")
    if given not in (None, ""):
        try:
            value = float(given)  # type: ignore[arg-type]
        except ValueError:
            raise InputError(entry.image, f"pixel size {given!r} is not a number") from None
        if not value > 0:
            raise InputError(entry.image, f"pixel size must be > 0, got {value}")
        return value, magnification
    if magnification and ingest.calibration_um_per_px_at_1x:
        return ingest.calibration_um_per_px_at_1x / magnification, magnification
    return ingest.um_per_px, magnification


def _image_crop(entry: _Entry, ingest: IngestConfig) -> Crop:
    """The config's crop, edges given per image by the manifest replacing it, and a detected
    info band (ingest.detect_info_band) cut when it is taller than the bottom crop."""
    edges = ingest.crop.model_dump()
    for field_name in CROP_FIELDS:
        text = str(entry.fields.get(field_name) or "").strip()
        if not text:
            continue
        try:
            value = int(float(text))
        except ValueError:
            raise InputError(entry.image, f"{field_name} {text!r} is not a whole number of pixels") from None
        if value < 0 or value != float(text):
            raise InputError(entry.image, f"{field_name} must be a whole number >= 0, got {text!r}")
        edges[field_name.removeprefix("crop_")] = value
    if ingest.detect_info_band:
        edges["bottom"] = max(edges["bottom"], detect_info_band(entry.image))
    return Crop(**edges)


def _mask_crop(entry: _Entry, crop: Crop, raw_shape: tuple[int, int], shape: tuple[int, int], ingest) -> Crop:
    """Cut the mask like its image when it has the uncropped image's size (or crop_masks says so);
    a mask drawn on the cropped image is taken as it is."""
    if crop == Crop() or ingest.crop_masks is False:
        return Crop()
    if ingest.crop_masks:
        return crop
    mask_shape = read_raw(entry.mask).shape[:2]
    if mask_shape == raw_shape:
        return crop
    if mask_shape == shape:
        return Crop()
    raise InputError(
        entry.mask,
        f"mask size {mask_shape[1]}x{mask_shape[0]} is neither its image's {raw_shape[1]}x{raw_shape[0]} "
        f"nor the cropped {shape[1]}x{shape[0]} ({entry.image.name})",
    )


def _row(entry: _Entry, config: ProjectConfig) -> dict[str, object]:
    ingest = config.ingest
    crop = _image_crop(entry, ingest)
    image = read_image(entry.image, ingest, crop=crop)
    shape = image.shape
    raw_shape = (shape[0] + crop.top + crop.bottom, shape[1] + crop.left + crop.right)
    mask_crop = Crop()
    if entry.mask is not None:
        mask_crop = _mask_crop(entry, crop, raw_shape, shape, ingest)
        mask = read_mask(entry.mask, config.classes, ingest, crop=mask_crop)
        if mask.shape != image.shape:
            raise InputError(
                entry.mask,
                f"mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                f"{entry.image.name} ({image.shape[1]}x{image.shape[0]})",
            )
    um_per_px, magnification = _pixel_size(entry, ingest)
    row: dict[str, object] = {
        "image_id": content_id(entry.image),
        "image_name": entry.image.name,
        "image_path": str(entry.image.resolve()),
        "mask_path": str(entry.mask.resolve()) if entry.mask is not None else None,
        "labelled": entry.mask is not None,
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "um_per_px": um_per_px,
        "magnification": magnification,
        "detector": entry.fields.get("detector") or ingest.detector,
        "etching": entry.fields.get("etching") or ingest.etching,
        "sample": entry.fields.get("sample") or entry.image.stem,
        "domain": entry.fields.get("domain") or ingest.domain,
        **{f"crop_{edge}": value for edge, value in crop.model_dump().items()},
        "mask_cropped": mask_crop != Crop(),
        "label": str(entry.fields.get("label") or "").strip() or None,
    }
    for column, value in entry.extra.items():
        row[column if column not in row else f"meta_{column}"] = value
    return row


def build_catalog(path: str | Path, config: ProjectConfig, progress: bool = True) -> pd.DataFrame:
    """Read and check every image and mask under `path` (a folder or a CSV manifest)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "path does not exist")
    if path.is_dir():
        entries = _entries_from_folder(path, config.ingest)
        if not entries:
            raise InputError(path, f"no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    elif path.suffix.lower() == ".csv":
        entries = _entries_from_manifest(path, config.ingest)
        if not entries:
            raise InputError(path, "manifest lists no images")
    else:
        raise InputError(path, "expected a folder of images or a CSV manifest")

    rows, seen = [], {}
    for entry in tqdm(entries, desc="ingest", unit="image", disable=not progress):
        row = _row(entry, config)
        if row["image_id"] in seen:
            raise InputError(entry.image, f"duplicate id {row['image_id']}: same content as {seen[row['image_id']]}")
        seen[row["image_id"]] = entry.image
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in ("um_per_px", "magnification"):
        table[column] = pd.to_numeric(table[column]).astype(float)
    table = table[CATALOG_COLUMNS + [c for c in table.columns if c not in CATALOG_COLUMNS]]
    return table.sort_values("image_path", kind="stable").reset_index(drop=True)


def write_catalog(table: pd.DataFrame, out: str | Path) -> bool:
    """Write atomically; return False (and leave the file alone) when nothing changed."""
    out = Path(out)
    if out.exists():
        try:
            if read_catalog(out).equals(table):
                return False
        except InputError:
            pass  # an unreadable old catalog is simply replaced
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    return True


def read_catalog(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "catalog not found; run `microal ingest` first")
    try:
        return pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise InputError(path, f"cannot read catalog ({error})") from None


def ingest(
    path: str | Path, config: ProjectConfig, out: str | Path, progress: bool = True
) -> tuple[pd.DataFrame, bool]:
    table = build_catalog(path, config, progress=progress)
    return table, write_catalog(table, out)
